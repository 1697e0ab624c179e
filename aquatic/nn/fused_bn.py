"""What the fused layer-and-batch-norm layers share (:class:`FusedBatchNorm`), and the
model-wide :func:`freeze_bn` / :func:`unfreeze_bn` switches. The method is described in
:mod:`aquatic.nn.conv_bn`."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn

from aquatic.nn.base import copy_forward_hooks
from aquatic.qconfig import QConfig

__all__ = ["FusedBatchNorm", "freeze_bn", "unfreeze_bn"]


def _check_steps(value: Optional[int]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"freeze_bn_after must be a number of training steps (an int >= 0) or None, "
            f"got {value!r}"
        )
    return value


def _mirror_loaded_frozen(module: nn.Module, incompatible_keys) -> None:
    """After ``load_state_dict``: the Python mirror follows the loaded ``bn_frozen``."""
    module._frozen = bool(module.bn_frozen)


class FusedBatchNorm:
    """What the fused layers share (a mixin before their aquatic layer class).

    Attributes:
        bn: the ``torch.nn.BatchNorm*d`` whose statistics and affine parameters fold in.
        bn_frozen: a bool buffer: ``True`` once :meth:`freeze_bn` ran (saved with the model).
        freeze_bn_after: freeze after this many training steps of the batch norm
            (``bn.num_batches_tracked``), or ``None``.
    """

    #: the batch norm class and the aquatic layer class the fusion is made of
    _bn_class: type = nn.BatchNorm2d
    _layer_class: type = nn.Module

    def _setup_bn(self, eps, momentum, freeze_bn_after, device, dtype) -> None:
        channels = self.out_features if isinstance(self, nn.Linear) else self.out_channels
        self.bn = self._bn_class(channels, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.freeze_bn_after = _check_steps(freeze_bn_after)
        self.register_buffer("bn_frozen", torch.tensor(False, device=device))
        # forward branches on this Python mirror of the buffer, never on the tensor: a
        # branch on a tensor's value cannot be traced by torch.compile(fullgraph=True).
        self._frozen = False
        self.register_load_state_dict_post_hook(_mirror_loaded_frozen)
        qconfig = self.qconfig
        if qconfig is not None and qconfig.bias is not None and "bias" not in self.quantizers:
            # The folded bias exists even where the layer has none of its own.
            self.quantizers["bias"] = qconfig.bias()

    # -- switches ---------------------------------------------------------------------

    def freeze_bn(self, frozen: bool = True) -> "FusedBatchNorm":
        """Use the running statistics from now on (``frozen=False``: batch statistics again)."""
        self.bn_frozen.fill_(bool(frozen))
        self._frozen = bool(frozen)
        return self

    def _maybe_freeze(self) -> None:
        after = self.freeze_bn_after
        if after is None or self._frozen:
            return
        if torch.compiler.is_compiling():
            raise ValueError(
                f"{type(self).__name__}(freeze_bn_after={after}) counts training steps "
                "in eager forward, which torch.compile cannot trace; under torch.compile "
                "build it with freeze_bn_after=None and call aquatic.nn.freeze_bn(model) "
                "at the step of your choice"
            )
        tracked = self.bn.num_batches_tracked
        if tracked is not None and int(tracked) >= after:
            self.freeze_bn(True)

    # -- folding ----------------------------------------------------------------------

    def _factor(self) -> Tensor:
        """:math:`\\gamma / \\sqrt{\\sigma^2_{running} + \\epsilon}`, one per output channel."""
        bn = self.bn
        factor = torch.rsqrt(bn.running_var + bn.eps)
        return factor if bn.weight is None else factor * bn.weight

    def folded_weight_and_bias(self):
        """The float weight and bias with the batch norm's running statistics folded in."""
        bn = self.bn
        factor = self._factor()
        weight = self.weight * factor.reshape(-1, *([1] * (self.weight.dim() - 1)))
        bias = -bn.running_mean if self.bias is None else self.bias - bn.running_mean
        bias = bias * factor
        if bn.bias is not None:
            bias = bias + bn.bias
        return weight, bias

    def _weight_scale(self) -> Tensor:
        grid = self.quantizers["weight"].grid()
        channels = self.bn.num_features
        if grid.per_channel and (
            grid.ch_axis % self.weight.dim() != 0 or grid.scale.numel() != channels
        ):
            raise ValueError(
                f"{type(self).__name__}: the bias follows the weight scale, but the weight "
                f"is quantized along ch_axis={grid.ch_axis}, not along the {channels} output "
                "channels; use ch_axis=0 or a per-tensor weight quantizer"
            )
        return grid.scale

    def quantized_weight_and_bias(self, input: Tensor):
        """The folded weight and bias, quantized, as the layer runs after :meth:`freeze_bn`
        and in eval mode."""
        weight, bias = self.folded_weight_and_bias()
        quantizers = self._modules["quantizers"]._modules
        if "weight" in quantizers:
            weight = quantizers["weight"](weight)
        quantizer = quantizers.get("bias")
        if quantizer is not None:
            if quantizer.follows_input_scale:
                bias = quantizer.quantize_bias(bias, input, self._weight_scale())
            else:
                bias = quantizer(bias)
        return weight, bias

    def _fused(self, input: Tensor, run: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]):
        if torch.onnx.is_in_onnx_export():
            raise TypeError(
                f"{type(self).__name__} folds its batch norm in forward, which an export that "
                "bakes parameters layer by layer would fold twice; export "
                "aquatic.fuse.fold_fused(model) instead (the same model, each fused layer "
                "replaced by its folded layer)"
            )
        if self.training:
            self._maybe_freeze()
        if not self.training or self._frozen:
            weight, bias = self.quantized_weight_and_bias(input)
            return self.quantize_output(run(input, weight, bias))
        # Batch statistics: the weight folded with the running statistics is quantized,
        # and the scaling undone on the output, so the batch norm sees the layer's output.
        factor = self._factor()
        weight = self.weight * factor.reshape(-1, *([1] * (self.weight.dim() - 1)))
        quantizer = self._modules["quantizers"]._modules.get("weight")
        if quantizer is not None:
            weight = quantizer(weight)
        output = run(input, weight, None)
        shape = (1, -1) + (1,) * (output.dim() - 2)
        output = output / factor.reshape(shape)
        if self.bias is not None:
            output = output + self.bias.reshape(shape)
        return self.quantize_output(self.bn(output))

    # -- conversion -------------------------------------------------------------------

    @classmethod
    def from_modules(
        cls, layer: nn.Module, bn: nn.Module, qconfig: Optional[QConfig] = None, **options: Any
    ):
        """A fused layer that shares ``layer``'s parameters and takes ``bn`` itself.

        Args:
            layer: a ``torch.nn`` layer of the fused class's kind (exactly that class).
            bn: the ``torch.nn.BatchNorm*d`` after it, with running statistics.
            qconfig: what to quantize.
            options: ``freeze_bn_after``.

        Raises:
            TypeError: the modules are of the wrong classes.
            ValueError: the batch norm keeps no running statistics or has another number
                of channels.
        """
        base = cls._layer_class
        cls._check_float_twin(layer)
        if type(bn) is not cls._bn_class:
            raise TypeError(
                f"{cls.__name__}.from_modules takes a torch.nn.{cls._bn_class.__name__} after "
                f"the {type(layer).__name__}, got {type(bn).__name__}"
            )
        channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if bn.running_var is None or bn.num_features != channels:
            raise ValueError(
                f"{cls.__name__}.from_modules: the batch norm needs running statistics "
                f"(track_running_stats=True) and {channels} features, got "
                f"track_running_stats={bn.track_running_stats}, num_features={bn.num_features}"
            )
        new = cls(
            **base._twin_kwargs(layer),
            eps=bn.eps,
            momentum=bn.momentum,
            device="meta",
            dtype=layer.weight.dtype,
            qconfig=qconfig,
            **options,
        )
        new.weight, new.bias, new.bn = layer.weight, layer.bias, bn
        new.bn_frozen = torch.tensor(False, device=layer.weight.device)
        new._frozen = False
        new.quantizers.to(layer.weight.device)
        copy_forward_hooks(layer, new)
        new.train(layer.training)
        return new

    @torch.no_grad()
    def folded(self) -> nn.Module:
        """The aquatic layer (``Conv2d``, ``Linear``...) that computes what this one
        computes in eval mode: folded weight and bias (copies), this layer's quantizers
        (shared). :func:`aquatic.convert` converts it."""
        weight, bias = self.folded_weight_and_bias()
        kwargs = dict(self._layer_class._twin_kwargs(self), bias=True)
        layer = self._layer_class(**kwargs, device="meta", dtype=weight.dtype)
        layer.weight = nn.Parameter(weight.detach().clone())
        layer.bias = nn.Parameter(bias.detach().clone())
        layer.qconfig = self.qconfig
        layer.quantizers = self.quantizers
        return layer.train(self.training)

    def quantize_params(self) -> Dict[str, Tensor]:
        """The folded weight and bias as the layer uses them in eval mode: quantized where
        a quantizer governs them, the float folded values otherwise (never the unfolded
        parameters, which the layer does not use as they are)."""
        folded = self.folded()
        values = folded.quantize_params()
        values.setdefault("weight", folded.weight.detach())
        values.setdefault("bias", folded.bias.detach())
        return values

    def to_int(self) -> Dict[str, Dict[str, Any]]:
        """Integer codes of the folded weight and bias (see ``QuantizedModule.to_int``)."""
        return self.folded().to_int()

    def to_float(self, baked: bool = True) -> nn.Module:
        """``baked=True``: the folded ``torch.nn`` layer holding the quantized folded weight
        and bias (what :func:`aquatic.dequantize` puts in its place; the batch norm is in
        the weights). ``baked=False``: ``nn.Sequential(layer, bn)`` sharing this layer's
        float parameters and batch norm."""
        if baked:
            return self.folded().to_float(baked=True)
        layer = self._layer_class.to_float(self, baked=False)
        return nn.Sequential(layer, self.bn)

    def extra_repr(self) -> str:
        frozen = ", bn_frozen=True" if bool(self.bn_frozen) else ""
        after = "" if self.freeze_bn_after is None else f", freeze_bn_after={self.freeze_bn_after}"
        return super().extra_repr() + frozen + after


def _switch(model: nn.Module, frozen: bool) -> int:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    fused = [m for m in model.modules() if isinstance(m, FusedBatchNorm)]
    for module in fused:
        module.freeze_bn(frozen)
    return len(fused)


def freeze_bn(model: nn.Module) -> int:
    """Make every fused layer in ``model`` use its batch norm's running statistics.

    The usual recipe (Krishnamoorthi 2018, section 3.2): train with batch statistics
    first, then freeze for the last epochs, so that training sees exactly the folded
    weights that :func:`aquatic.convert` deploys. ``freeze_bn_after=N`` on a layer does
    the same by itself after ``N`` training steps.

    Returns:
        How many fused layers were switched.

    Example:
        >>> import torch, aquatic
        >>> model = torch.nn.Sequential(aquatic.nn.ConvBn2d(1, 2, 3))
        >>> aquatic.nn.freeze_bn(model), bool(model[0].bn_frozen)
        (1, True)
    """
    return _switch(model, True)


def unfreeze_bn(model: nn.Module) -> int:
    """Make every fused layer in ``model`` normalise with batch statistics again (in
    training). Returns how many were switched."""
    return _switch(model, False)
