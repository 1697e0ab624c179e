"""What the recurrent layers and cells share: their quantizers, conversion from and to
their ``torch.nn`` twin, and ``state_dict`` handling."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor, nn

from aquatic.functional.recurrent import CellQuantizers, CellWeights
from aquatic.nn.base import QuantizedModule, copy_forward_hooks
from aquatic.qconfig import QConfig
from aquatic.quantizers.shared import link_shared_scales

__all__ = ["RecurrentTwin", "SIGNAL_FIELDS"]

#: Internal signal of a cell -> the QConfig field that quantizes it.
SIGNAL_FIELDS = {
    "gates": "activation",
    "gate_outputs": "activation",
    "cell": "state",
    "hidden": "activation",
}


class RecurrentTwin(QuantizedModule):
    """Base class of the aquatic recurrent layers and cells (RNN, LSTM, GRU and cells).

    Quantizers, in ``self.quantizers``, by name:

    - each weight (``weight_ih_l0``, ``weight_hh_l0_reverse``, ``weight_hr_l1`` ...; a
      cell's ``weight_ih``, ``weight_hh``) under its own name, from ``QConfig.weight``;
    - each bias (``bias_ih_l0`` ...) under its own name, from ``QConfig.bias``;
    - each internal signal of each layer and direction, ``<signal><suffix>`` with the
      suffix of the layer's parameters (``gates_l0``, ``hidden_l1_reverse``; a cell's
      have no suffix): ``gates`` (gate pre-activations), ``gate_outputs`` (gates after
      sigmoid/tanh), ``hidden`` (hidden state, which is the output) from
      ``QConfig.activation``, and an LSTM's ``cell`` (cell state) from ``QConfig.state``.
      See :mod:`aquatic.functional.recurrent` for where each applies. The two
      directions of a bidirectional layer share one ``hidden`` quantizer (the same
      module under both names, ``hidden_l0`` and ``hidden_l0_reverse``): the layer's
      output concatenates them, and so lies on one grid, which the next layer and the
      integer model read.

    A subclass sets ``_float_module`` (the torch twin), ``_signals`` (the signals its
    cell has) and implements :meth:`_twin_kwargs`.
    """

    _float_module: type = nn.Module
    _signals: Tuple[str, ...] = ()
    # The output is the hidden state, quantized at every step by its own quantizers.
    _quantizes_output = False

    # -- construction -------------------------------------------------------------------

    def _param_names(self) -> List[str]:
        """The names of the weights and biases, in torch's order."""
        if isinstance(self, nn.RNNBase):
            return list(self._flat_weights_names)
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return [name for name in names if getattr(self, name, None) is not None]

    def _suffixes(self) -> List[str]:
        """The parameter-name suffix of each layer and direction, in torch's order."""
        if not isinstance(self, nn.RNNBase):
            return [""]
        directions = ("", "_reverse") if self.bidirectional else ("",)
        return [f"_l{layer}{d}" for layer in range(self.num_layers) for d in directions]

    def _init_recurrent_quantizers(self, qconfig: Optional[QConfig]) -> None:
        self._quantized_params = {
            name: "bias" if name.startswith("bias") else "weight" for name in self._param_names()
        }
        self._init_quantizers(qconfig)
        for name, quantizer in self.quantizers.items():
            if getattr(quantizer, "follows_input_scale", False):
                raise ValueError(
                    f"{type(self).__name__}: QConfig.bias is {type(quantizer).__name__}, whose "
                    f"scale follows the input and weight scales, which {name} (a sum of two "
                    "products) does not have; use a bias quantizer with a scale of its own, "
                    "e.g. UniformQuantizer.with_args(bits=16)"
                )
        # The internal signals are not parameters: quantize_params and to_int skip them.
        signals = []
        if qconfig is not None:
            for suffix in self._suffixes():
                for signal in self._signals:
                    factory = getattr(qconfig, SIGNAL_FIELDS[signal])
                    if factory is None:
                        continue
                    if signal == "hidden" and suffix.endswith("_reverse"):
                        # Both directions write one output, their concatenation: one
                        # grid, as TensorFlow Lite's bidirectional sequence LSTM writes
                        # its merged output into one tensor with one scale.
                        forward = self.quantizers[signal + suffix[: -len("_reverse")]]
                        self.quantizers[signal + suffix] = forward
                    else:
                        self.quantizers[signal + suffix] = factory()
                    signals.append(signal + suffix)
            link_shared_scales(self.quantizers.values())
        self._quantized_states = tuple(signals)

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_float(cls, module: nn.Module, qconfig: Optional[QConfig] = None) -> "RecurrentTwin":
        """An aquatic layer that shares ``module``'s parameters (and their device, dtype,
        ``requires_grad``), hooks and training mode, quantized as ``qconfig`` says.

        Args:
            module: an instance of the twin class itself (not of a subclass, whose
                forward may differ).
            qconfig: what to quantize; ``None`` for nothing.

        Raises:
            TypeError: if ``module`` is not exactly the twin class.
        """
        cls._check_float_twin(module)
        first = "weight_ih_l0" if isinstance(module, nn.RNNBase) else "weight_ih"
        dtype = getattr(module, first).dtype
        # Built on the meta device: the parameters are replaced by the module's own.
        new = cls(**cls._twin_kwargs(module), device="meta", dtype=dtype, qconfig=qconfig)
        _share(module, new, new._param_names())
        new.quantizers.to(getattr(module, new._param_names()[0]).device)
        new.train(module.training)
        return new

    def to_float(self, baked: bool = True) -> nn.Module:
        """The torch twin of this layer.

        Args:
            baked: ``True``: the twin holds copies of the quantized parameter values, from
                :meth:`quantize_params` (with fake quantization disabled,
                :func:`aquatic.disable_fake_quant`, the float values). ``False``: it holds
                this layer's own float parameters (shared, not copied) and its hooks, so
                that the layer can be rebuilt around them with another QConfig.

        The quantizers of the internal signals have no place in the twin and are dropped.
        """
        names = self._param_names()
        dtype = getattr(self, names[0]).dtype
        module = self._float_module(**self._twin_kwargs(self), device="meta", dtype=dtype)
        if not baked:
            _share(self, module, names)
            module.train(self.training)
            return module
        values = self.quantize_params()
        for name in names:
            param = getattr(self, name)
            value = values.get(name, param).detach().clone()
            setattr(module, name, nn.Parameter(value, requires_grad=param.requires_grad))
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()
        module.train(self.training)
        return module

    # -- forward ----------------------------------------------------------------------

    def cell_weights(self, suffix: str = "") -> CellWeights:
        """The weights and biases of one layer and direction as ``forward`` uses them."""
        quantizers = self._modules["quantizers"]._modules
        values = []
        for field in CellWeights._fields:
            name = field + suffix
            value = getattr(self, name, None) if name in self._quantized_params else None
            quantizer = quantizers.get(name)
            values.append(value if value is None or quantizer is None else quantizer(value))
        return CellWeights(*values)

    def cell_quantizers(self, suffix: str = "") -> CellQuantizers:
        """The quantizers of one layer and direction's internal signals."""
        quantizers = self._modules["quantizers"]._modules
        return CellQuantizers(*(quantizers.get(f + suffix) for f in CellQuantizers._fields))

    def _initial(self, state: Tensor, signal: str, suffix: str, given: bool) -> Tensor:
        """An initial state as the cell reads it: on the grid of its signal's quantizer.

        The zeros of a state not ``given`` lie on every grid, and pass by: an observer
        that saw them first would start from an empty range.
        """
        quantizer = self._modules["quantizers"]._modules.get(signal + suffix)
        return state if quantizer is None or not given else quantizer(state)

    # -- state_dict -------------------------------------------------------------------

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        self._keep_quantizer_state(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


def _share(source: nn.Module, target: nn.Module, names: List[str]) -> None:
    """Give ``target`` the parameters ``names`` and the forward hooks of ``source``."""
    for name in names:
        setattr(target, name, getattr(source, name))
    if isinstance(target, nn.RNNBase):
        target._init_flat_weights()
    copy_forward_hooks(source, target)
