"""The machinery every aquatic layer shares: building and applying quantizers."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.functional import fake_quant_outputs
from aquatic.qconfig import QConfig
from aquatic.quantizers.shared import link_shared_scales

__all__ = ["QuantizedModule", "check_qconfig", "copy_forward_hooks", "eval_mode"]


def check_qconfig(qconfig: Optional[QConfig]) -> Optional[QConfig]:
    """Return ``qconfig`` if it is a :class:`~aquatic.QConfig` or ``None``, else raise."""
    if qconfig is not None and not isinstance(qconfig, QConfig):
        raise TypeError(
            f"qconfig must be an aquatic.QConfig or None, got {type(qconfig).__name__}; "
            "build one with aquatic.QConfig(weight=..., activation=...)"
        )
    return qconfig


# Forward hooks (and their flags) that a twin built from a module carries over.
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def copy_forward_hooks(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the forward (pre-)hooks of ``source``, as ``from_float`` and
    ``to_float`` do so that converting a layer keeps what was registered on it."""
    for hooks in _HOOK_DICTS:
        getattr(target, hooks).update(getattr(source, hooks, {}))


@contextmanager
def eval_mode(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Run the block with ``modules`` in eval mode; each gets its own mode back after it.

    Used to read quantized values as ``forward`` uses them at inference: observers only
    fill a range never observed. Restoring is ``module.train(mode)``, as ``train`` sets
    a module and everything in it.
    """
    modules = list(modules)
    modes = [module.training for module in modules]
    for module in modules:
        module.train(False)
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


def _global_hooks() -> bool:
    """Whether any module-wide forward hook is registered
    (``torch.nn.modules.module.register_module_forward_hook`` and its pre-hook)."""
    module = nn.modules.module  # two lookups, no generator: this runs on every forward
    return bool(
        getattr(module, "_global_forward_hooks", None)
        or getattr(module, "_global_forward_pre_hooks", None)
    )


class QuantizedModule(nn.Module):
    """Base class of the layers whose parameters and output are quantized by a QConfig.

    A subclass lists in ``_quantized_params`` which of its parameters each QConfig
    field governs (``{"weight": "weight", "tau_mem": "tau", ...}``) and calls
    :meth:`_init_quantizers` at the end of ``__init__``. Then:

    - ``self.quantizers`` is an ``nn.ModuleDict`` from parameter name (and
      ``"activation"``) to its own quantizer, built by calling the QConfig's factories;
    - :meth:`quantized` returns a parameter as ``forward`` should use it;
    - :meth:`quantize_output` applies the activation quantizer;
    - :meth:`quantize_params` returns every quantized parameter.

    Stateful layers (spiking neurons) also list in ``_quantized_states`` the state
    variables that ``QConfig.state`` quantizes; each gets its own quantizer under its
    name in ``self.quantizers``, applied by the layer after every time step.
    """

    #: parameter name -> QConfig field that quantizes it
    _quantized_params: Mapping[str, str] = {}
    #: whether QConfig.activation applies to this layer's output
    _quantizes_output: bool = True
    #: state variables (e.g. ``"v_mem"``) that QConfig.state quantizes, one quantizer each
    _quantized_states: Tuple[str, ...] = ()

    def _init_quantizers(self, qconfig: Optional[QConfig]) -> None:
        self.qconfig = check_qconfig(qconfig)
        self.quantizers = nn.ModuleDict()
        if qconfig is None:
            return
        for name, field in self._quantized_params.items():
            factory = getattr(qconfig, field)
            if factory is not None and getattr(self, name, None) is not None:
                self.quantizers[name] = factory()
        if qconfig.state is not None:
            for name in self._quantized_states:
                self.quantizers[name] = qconfig.state()
        if self._quantizes_output and qconfig.activation is not None:
            self.quantizers["activation"] = qconfig.activation()
        link_shared_scales(self.quantizers.values())

    def quantized(self, name: str) -> Optional[Tensor]:
        """Parameter ``name`` passed through its quantizer, if it has one."""
        value = getattr(self, name)
        if value is None or name not in self.quantizers:
            return value
        return self.quantizers[name](value)

    def quantize_output(self, output: Tensor) -> Tensor:
        """The layer's output passed through the activation quantizer, if any."""
        # Straight to the dicts: this runs on every forward of every layer.
        quantizer = self._modules["quantizers"]._modules.get("activation")
        return output if quantizer is None else quantizer(output)

    def quantize_own_output(self, output: Tensor) -> Tensor:
        """:meth:`quantize_output` of an output that this layer's forward has just made,
        which nothing else holds and whose operation's backward does not read it (a
        product's, a convolution's): the compiled loops may write the fake-quantized
        values over it (:data:`~aquatic.functional.fake_quant_outputs.OWNED`), the same
        values and gradients. Not where the quantizer has hooks, which would see their
        input change.

        Example:
            >>> import aquatic
            >>> from aquatic.nn import Linear
            >>> layer = Linear(4, 3, qconfig=aquatic.qconfig.int8)
            >>> out = torch.rand(2, 4) @ layer.weight.detach().T
            >>> torch.equal(layer.quantize_own_output(out.clone()), layer.quantize_output(out))
            True
        """
        quantizer = self._modules["quantizers"]._modules.get("activation")
        if quantizer is None:
            return output
        if quantizer._forward_hooks or quantizer._forward_pre_hooks or _global_hooks():
            return quantizer(output)
        owned = fake_quant_outputs.OWNED
        owned.tensor = output
        try:
            return quantizer(output)
        finally:
            owned.tensor = None

    @torch.no_grad()
    def quantize_params(self) -> Dict[str, Tensor]:
        """The quantized values of every quantized parameter, as ``forward`` uses them.

        Quantizers run in eval mode, so observers only fill a range never observed.
        """
        result = {}
        for name, quantizer in self.quantizers.items():
            if name == "activation" or name in self._quantized_states:
                continue
            with eval_mode([quantizer]):
                result[name] = quantizer(getattr(self, name))
        return result

    def to_int(self) -> Dict[str, Dict[str, Any]]:
        """Integer codes of every quantized parameter, with what maps them back to values.

        For each parameter name (``"weight"``, ``"bias"``, ``"tau_mem"``, ``"alpha_mem"``,
        ``"threshold"``, ...), ``{"codes": <integer tensor>, **quantizer.qparams()}``:
        the codes come from the quantizer's ``to_int`` (the same word for the same
        thing: a quantizer's ``to_int(x)`` gives the codes of ``x``, a layer's the codes
        of its own parameters), with ``scale``, ``zero_point``, ``quant_min``,
        ``quant_max``, ``ch_axis`` for uniform quantizers (value
        ``(codes - zero_point) * scale``), or ``dash`` for bit-shift decays
        (:math:`\\alpha = 1 - 2^{-dash}`). A decay computed from a quantized time
        constant (``alpha_mem`` of a layer built with ``tau_mem``) is listed under its
        ``alpha`` name. Quantizers run in eval mode, so observers only fill a range
        never observed.

        Raises:
            ValueError: a quantizer has no range yet (never saw data).

        Example:
            >>> import aquatic
            >>> from aquatic.quantizers import UniformQuantizer
            >>> qconfig = QConfig(weight=UniformQuantizer.with_args(scale=0.5))
            >>> layer = aquatic.nn.Linear(2, 1, bias=False, qconfig=qconfig)
            >>> with torch.no_grad():
            ...     _ = layer.weight.copy_(torch.tensor([[1.2, -0.4]]))
            >>> ints = layer.to_int()["weight"]
            >>> ints["codes"], ints["scale"]
            (tensor([[ 2, -1]], dtype=torch.int8), tensor(0.5000))
        """
        states = set(self._quantized_states)
        values = None
        result: Dict[str, Dict[str, Any]] = {}
        for name, quantizer in self.quantizers.items():
            if name == "activation" or name in states:
                continue
            value = getattr(self, name, None)
            if value is None:  # a decay computed from a time constant
                if values is None:
                    values = self.quantize_params()
                value = values[name]
            try:
                # A forward pass first, as the layer's own in eval mode: observers fill a
                # range never observed, and quantizers that record their scale record it.
                with torch.no_grad(), eval_mode([quantizer]):
                    quantizer(value.detach())
                    codes = quantizer.to_int(value.detach())
                    params = quantizer.qparams()
            except RuntimeError as error:
                raise ValueError(
                    f"{type(self).__name__}.to_int: the {name!r} quantizer has no range yet "
                    f"({error}); run a forward pass (in training mode) first"
                ) from None
            result[name] = {"codes": codes, **params}
        return result

    @classmethod
    def _check_float_twin(cls, module: nn.Module) -> None:
        """Raise a ``TypeError`` unless ``module`` is exactly the torch twin class (a
        subclass may compute something else)."""
        float_module = getattr(cls, "_float_module", None)
        if type(module) is not float_module:
            raise TypeError(
                f"{cls.__name__}.from_float expects a torch.nn.{float_module.__name__}, "
                f"got {type(module).__name__}"
            )

    def _keep_quantizer_state(self, state_dict: Dict[str, Any], prefix: str) -> None:
        """Let a checkpoint of the torch twin (no quantizer state at all) load: the
        quantizers keep their own state. ``state_dict`` is the loader's own copy."""
        quantizer_prefix = prefix + "quantizers."
        if not any(key.startswith(quantizer_prefix) for key in state_dict):
            state_dict.update(self.quantizers.state_dict(prefix=quantizer_prefix, keep_vars=True))

    def _quant_repr(self) -> str:
        if not self.quantizers:
            return ""
        return ", quantized=(" + ", ".join(self.quantizers.keys()) + ")"
