"""What the pooling and normalisation twins share: a time axis after the batch, output
quantization, and conversion from and to their ``torch.nn`` twin."""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import Tensor, nn

from aquatic.functional.time_steps import has_time_axis, per_step
from aquatic.nn.base import QuantizedModule, copy_forward_hooks
from aquatic.qconfig import QConfig

__all__ = ["StatelessTwin"]


class StatelessTwin(QuantizedModule):
    """Base class of the aquatic pooling and normalisation layers.

    A subclass also subclasses its ``torch.nn`` twin (``_float_module``), names the
    dimensions of the twin's batched input (``_batched_dims``: 4 for ``AvgPool2d``) and
    implements :meth:`_twin_kwargs`. Then:

    - an input with one dimension more, ``(N, T, *)``, runs per time step (batch and
      time merged for the twin's forward, then split), so that these layers sit between
      spiking layers in one ``nn.Sequential``;
    - ``QConfig.activation`` quantizes the output (the layers have no quantized
      parameters); with ``qconfig=None`` the forward pass is the twin's own code.
    """

    _quantized_params: Dict[str, str] = {}
    _float_module: type = nn.Module
    _batched_dims: int = 4
    #: constructor arguments of the twin that this layer fixes (``norm_type`` of sum pooling)
    _float_extra: Dict[str, Any] = {}

    def __init__(self, *args: Any, qconfig: Optional[QConfig] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quantizers(qconfig)

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        raise NotImplementedError

    def forward(self, input: Tensor) -> Any:
        if has_time_axis(input, self._batched_dims):
            return per_step(self._step, input)
        return self._step(input)

    def _step(self, input: Tensor) -> Any:
        output = super().forward(input)
        if isinstance(output, tuple):  # MaxPool's (values, indices)
            return (self.quantize_output(output[0]),) + tuple(output[1:])
        return self.quantize_output(output)

    @classmethod
    def from_float(cls, module: nn.Module, qconfig: Optional[QConfig] = None) -> "StatelessTwin":
        """An aquatic layer like ``module`` (sharing its parameters and buffers, hooks and
        training mode), its output quantized as ``qconfig`` says.

        Raises:
            TypeError: if ``module`` is not exactly the twin class.
        """
        cls._check_float_twin(module)
        new = cls(**cls._twin_kwargs(module), qconfig=qconfig)
        _share(module, new)
        param = next(iter(module.parameters()), None)
        if param is not None:
            new.quantizers.to(param.device)
        copy_forward_hooks(module, new)
        new.train(module.training)
        return new

    def to_float(self, baked: bool = True) -> nn.Module:
        """The torch twin of this layer; the activation quantizer is dropped.

        Args:
            baked: ``True``: the twin holds copies of the parameters and buffers;
                ``False``: it shares them, and the hooks.
        """
        module = self._float_module(**self._float_extra, **self._twin_kwargs(self))
        if baked:
            for name, param in self._parameters.items():
                if param is not None:
                    copy = param.detach().clone()
                    module._parameters[name] = nn.Parameter(copy, param.requires_grad)
            for name, buffer in self._buffers.items():
                module._buffers[name] = None if buffer is None else buffer.clone()
        else:
            _share(self, module)
            copy_forward_hooks(self, module)
        module.train(self.training)
        return module

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        self._keep_quantizer_state(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


def _share(source: nn.Module, target: nn.Module) -> None:
    """``target`` holds ``source``'s own parameters and buffers (BatchNorm's statistics)."""
    for name, param in source._parameters.items():
        target._parameters[name] = param
    for name, buffer in source._buffers.items():
        target._buffers[name] = buffer
