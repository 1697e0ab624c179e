"""What the conventional layers share: conversion from and to their ``torch.nn`` twin,
the weight and bias as ``forward`` uses them, and ``state_dict`` handling."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from torch import Tensor, nn

from aquatic.nn.base import QuantizedModule, copy_forward_hooks
from aquatic.qconfig import QConfig

__all__ = ["TorchTwin"]


class TorchTwin(QuantizedModule):
    """Base class of the aquatic layers that subclass a ``torch.nn`` layer (their *twin*).

    A subclass sets ``_float_module`` (the twin class) and ``_weight_out_axis`` (the
    weight axis of output channels) and implements :meth:`_twin_kwargs`, the
    constructor arguments that rebuild a module like a given one.
    """

    _quantized_params = {"weight": "weight", "bias": "bias"}
    _float_module: type = nn.Module
    _weight_out_axis: int = 0

    # -- construction -------------------------------------------------------------------

    def _check_bias_quantizer(self) -> None:
        quantizer = self.quantizers["bias"] if "bias" in self.quantizers else None
        if (
            quantizer is not None
            and quantizer.follows_input_scale
            and "weight" not in self.quantizers
        ):
            raise ValueError(
                f"{type(self).__name__}: QConfig.bias is {type(quantizer).__name__}, whose "
                "scale is input scale times weight scale, but QConfig.weight is None; "
                "quantize the weight too, or use a bias quantizer with a scale of its own"
            )

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_float(cls, module: nn.Module, qconfig: Optional[QConfig] = None) -> "TorchTwin":
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
        # Built on the meta device: the parameters are replaced by the module's own.
        new = cls(
            **cls._twin_kwargs(module), device="meta", dtype=module.weight.dtype, qconfig=qconfig
        )
        new.weight = module.weight
        new.bias = module.bias
        new.quantizers.to(module.weight.device)
        copy_forward_hooks(module, new)
        new.train(module.training)
        return new

    def to_float(self, baked: bool = True) -> nn.Module:
        """The torch twin of this layer.

        Args:
            baked: ``True``: the twin holds copies of the quantized parameter values, from
                :meth:`quantize_params` (with fake quantization disabled,
                :func:`aquatic.disable_fake_quant`, the float values). ``False``: it holds
                this layer's own float parameters (shared, not copied) and its hooks, so
                that the layer can be rebuilt around them with another QConfig
                (``type(layer).from_float(layer.to_float(baked=False), qconfig)``).

        The activation quantizer has no place in the twin and is dropped.
        """
        module = self._float_module(
            **self._twin_kwargs(self), device="meta", dtype=self.weight.dtype
        )
        if not baked:
            module.weight = self.weight
            module.bias = self.bias
            copy_forward_hooks(self, module)
            module.train(self.training)
            return module
        values = self.quantize_params()
        for name in ("weight", "bias"):
            param = getattr(self, name)
            if param is None:
                continue
            value = values.get(name, param).detach().clone()
            setattr(module, name, nn.Parameter(value, requires_grad=param.requires_grad))
        module.train(self.training)
        return module

    # -- forward ----------------------------------------------------------------------

    def _weight_scale(self) -> Tensor:
        grid = self.quantizers["weight"].grid()
        scale, axis = grid.scale, grid.ch_axis
        if grid.per_channel:
            if axis % self.weight.dim() != self._weight_out_axis or scale.numel() != len(self.bias):
                raise ValueError(
                    f"{type(self).__name__}: the bias follows the weight scale, but the "
                    f"weight is quantized per channel along ch_axis={axis}, which gives "
                    f"{scale.numel()} scales for {len(self.bias)} output channels; use "
                    f"ch_axis={self._weight_out_axis} (and groups=1 for a transposed "
                    "convolution) or a per-tensor weight quantizer"
                )
        return scale

    def quantized_weight_and_bias(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Weight and bias as ``forward`` uses them for ``input``.

        A bias quantizer with ``follows_input_scale`` gets the input and the weight scale
        (see :class:`aquatic.quantizers.AccumulatorBiasQuantizer`).
        """
        # Dictionary lookups rather than attribute access (nn.Module.__getattr__ costs
        # about a microsecond each): this runs on every forward.
        quantizers = self._modules["quantizers"]._modules
        params = self._parameters  # a parametrized weight or bias is not in there
        weight = params["weight"] if "weight" in params else self.weight
        bias = params["bias"] if "bias" in params else self.bias
        quantizer = quantizers.get("weight")
        if quantizer is not None:
            weight = quantizer(weight)
        quantizer = quantizers.get("bias")
        if bias is not None and quantizer is not None:
            if quantizer.follows_input_scale:
                bias = quantizer.quantize_bias(bias, input, self._weight_scale())
            else:
                bias = quantizer(bias)
        return weight, bias

    # -- state_dict -------------------------------------------------------------------

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        self._keep_quantizer_state(state_dict, prefix)
        quantizer_prefix = prefix + "quantizers."
        for name, quantizer in self.quantizers.items():
            param = getattr(self, name, None)
            axis = getattr(quantizer, "ch_axis", None)
            if name == "activation" or param is None or axis is None:
                continue
            if not -param.dim() <= axis < param.dim():
                continue  # the quantizer reports a bad ch_axis on its first forward
            channels = param.shape[axis]
            for field in ("min_val", "max_val", "scale", "zero_point"):
                for key in (
                    f"{quantizer_prefix}{name}.{field}",
                    f"{quantizer_prefix}{name}.observer.{field}",
                ):
                    saved = state_dict.get(key)
                    if (
                        saved is not None
                        and saved.dim() == 1
                        and saved.numel() not in (0, channels)
                    ):
                        error_msgs.append(
                            f"size mismatch for {key}: the checkpoint has {saved.numel()} "
                            f"channels, but {prefix}{name} has {channels} along ch_axis={axis}"
                        )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
