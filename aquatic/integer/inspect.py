"""Reading a quantization-aware model for conversion: ranges, scales, codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import Tensor, nn

from aquatic.integer.requant import is_power_of_two

__all__ = ["Affine", "affine_params", "check_observed", "grid_codes", "describe"]

#: How far from the grid (in steps) a quantized value may lie and still count as on it.
GRID_TOLERANCE = 1e-3


def describe(name: str, module: nn.Module) -> str:
    """``layer '0' (Linear)``: how messages name a layer."""
    return f"layer {name!r} ({type(module).__name__})"


@dataclass
class Affine:
    """A quantizer read as uniform affine: codes ``clamp(round(x / scale) + zp, low, high)``."""

    scale: Tensor  # float64, scalar or (C,)
    zero_point: Tensor  # int64, scalar or (C,)
    low: int
    high: int
    ch_axis: Optional[int]
    rounding: str
    notes: List[str] = field(default_factory=list)

    @property
    def power_of_two(self) -> bool:
        return is_power_of_two(self.scale)


def affine_params(quantizer: nn.Module, where: str, rounds: bool = True) -> Affine:
    """The affine parameters of ``quantizer`` (from its ``qparams()``), or a clear error.

    Args:
        quantizer: any aquatic quantizer whose ``qparams()`` has ``scale``,
            ``zero_point``, ``quant_min`` and ``quant_max``.
        where: how to name it in messages, e.g. ``"layer '0' (Linear), quantizer 'activation'"``.
        rounds: the integer model will quantize with it (activations, states, the input),
            so it must round to a uniform grid; ``False`` when only the scale of values
            it already produced is needed (weights).

    Raises:
        ValueError: it has no range yet, or it is not an affine quantizer.
    """
    from aquatic.quantizers.binary import BinaryQuantizer, TernaryQuantizer

    if rounds and isinstance(quantizer, (BinaryQuantizer, TernaryQuantizer)):
        raise ValueError(
            f"{where} is a {type(quantizer).__name__}, which thresholds rather than rounds "
            "to a uniform grid; the integer model requantizes with uniform quantizers only "
            "(e.g. aquatic.quantizers.UniformQuantizer)"
        )
    if not getattr(quantizer, "fake_quant_enabled", True):
        raise ValueError(
            f"{where} has fake quantization switched off, so the model computes in float "
            "there; switch it back on (aquatic.enable_fake_quant(model)) before converting"
        )
    try:
        params = quantizer.qparams()
    except RuntimeError as error:
        raise ValueError(
            f"{where} has no range yet ({error}); run the model on representative data "
            "in training mode before aquatic.convert"
        ) from None
    missing = [k for k in ("scale", "zero_point", "quant_min", "quant_max") if k not in params]
    if missing:
        raise ValueError(
            f"{where} is a {type(quantizer).__name__}, which has no scale and zero point "
            f"(no {', '.join(missing)}); the integer model needs a uniform affine quantizer "
            "here (e.g. aquatic.quantizers.UniformQuantizer)"
        )
    scale = torch.as_tensor(params["scale"]).detach().to(torch.float64)
    zero_point = torch.as_tensor(params["zero_point"]).detach().to(torch.int64)
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise ValueError(
            f"{where} has the scale {scale.tolist()}; scales must be positive and finite "
            "(run a forward pass so that the quantizer has a range)"
        )
    notes = []
    rounding = getattr(quantizer, "rounding", "nearest")
    if rounding == "stochastic":
        notes.append(f"{where} rounds stochastically; the integer model rounds to nearest instead")
        rounding = "nearest"
    axis = params.get("ch_axis") if scale.dim() == 1 else None
    return Affine(
        scale,
        zero_point,
        int(params["quant_min"]),
        int(params["quant_max"]),
        axis,
        rounding,
        notes,
    )


def grid_codes(value: Tensor, affine: Affine, axis: Optional[int], where: str) -> Tensor:
    """``(code - zero_point)`` of quantized values ``value`` (``int64``), checked on the grid.

    ``axis`` is the (non-negative) axis of ``value`` that per-channel parameters run along.
    """
    shape = [1] * value.dim()
    scale = affine.scale
    if scale.dim() == 1 and value.dim() > 0:
        shape[axis] = -1
        scale = scale.reshape(shape)
    steps = value.detach().to(torch.float64) / scale
    codes = torch.round(steps)
    # float32 values (q - z) * s carry a relative error of 2**-24: allow for it.
    error = (steps - codes).abs() - codes.abs() * 2.0**-20
    if error.numel() and float(error.max()) > GRID_TOLERANCE:
        raise ValueError(
            f"{where}: the quantized values are not on their quantizer's grid (a value is "
            f"{float(error.max()):.3g} steps off); the quantizer's qparams() do not describe "
            "its forward pass"
        )
    return codes.to(torch.int64)


def check_observed(model: nn.Module) -> None:
    """Raise a ``ValueError`` naming every quantizer of ``model`` that has no range yet.

    An observer that never saw data has no range, and an activation quantizer without a
    range would take it from the first batch that the quantization-aware model sees in
    eval mode, which the integer model cannot know.
    """
    from aquatic.observers import RangeObserver
    from aquatic.quantizers.bias import AccumulatorBiasQuantizer
    from aquatic.quantizers.learned import LSQQuantizer

    unused = set()
    for module in model.modules():
        if isinstance(module, AccumulatorBiasQuantizer):
            follows = module.__dict__.get("_input_quantizer") is not None
            if (follows or module.input_scale is not None) and module.input_observer is not None:
                unused.update(id(m) for m in module.input_observer.modules())
    missing = []
    for name, module in model.named_modules():
        if id(module) in unused:
            continue
        if isinstance(module, (RangeObserver, LSQQuantizer)) and not module.initialized:
            missing.append(name)
        elif isinstance(module, AccumulatorBiasQuantizer) and bool(torch.isnan(module.scale).any()):
            missing.append(name)
    if missing:
        raise ValueError(
            "these quantizers have never seen data, so they have no range: "
            + ", ".join(repr(n) for n in missing)
            + ". Run the model on representative data in training mode (or train it) "
            "before aquatic.convert"
        )
