"""Checks of the scale and zero point given to the public fake-quantization functions.

Shapes are checked on every call (they cost nothing). Values (a finite positive scale,
an integer zero point inside the range) need a look at the tensors, one synchronisation
for all of them; they are checked outside ``torch.compile`` graphs only, where a data-
dependent branch would break the graph. Quantizers call the kernels behind these
functions directly, having validated their parameters when they were set.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["check_qparams", "check_float_input"]


def check_float_input(input: Tensor, name: str = "input") -> None:
    """Raise a ``TypeError`` unless ``input`` is a floating-point tensor."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {input.dtype}; "
            "convert it with .float() first"
        )


def _check_shapes(input, scale, zero_point, ch_axis: Optional[int], learned_zero_point: bool):
    for name, value in (("scale", scale), ("zero_point", zero_point)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, got {type(value).__name__}; "
                f"wrap it as torch.tensor({value!r})"
            )
    if ch_axis is None:
        if scale.numel() != 1:
            raise ValueError(
                f"scale has shape {tuple(scale.shape)} but ch_axis is None (one scale per "
                "tensor); pass ch_axis, the axis of input that scale runs along, or one scale"
            )
    else:
        channels = input.shape[ch_axis]
        if scale.dim() != 1 or scale.numel() != channels:
            raise ValueError(
                f"scale has shape {tuple(scale.shape)}, but per-channel quantization along "
                f"ch_axis={ch_axis} needs one scale per channel, shape ({channels},) for "
                f"an input of shape {tuple(input.shape)}"
            )
    # A learned zero point may be one for every channel (LSQ's constant 0).
    one_for_all = learned_zero_point and zero_point.dim() == 0
    if (zero_point.numel() != scale.numel() and not one_for_all) or zero_point.dim() > 1:
        raise ValueError(
            f"zero_point has shape {tuple(zero_point.shape)}, which does not match scale's "
            f"{tuple(scale.shape)}; give one zero point per scale"
        )


def check_qparams(
    input: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: Optional[int],
    quant_max: Optional[int],
    ch_axis: Optional[int],
    learned_zero_point: bool = False,
) -> None:
    """Check ``scale`` and ``zero_point`` for ``input`` (``ch_axis`` already normalised).

    Args:
        input: the tensor to quantize (or the codes to dequantize).
        scale, zero_point: one each per tensor (``ch_axis=None``), or one per channel.
        quant_min, quant_max: the integer range; ``None`` when unknown (dequantizing),
            then the zero point need only be an integer.
        ch_axis: a non-negative axis of ``input``, or ``None``.
        learned_zero_point: the zero point is a real number rounded in the forward pass
            (LSQ+); it must round into the range instead of being an integer.

    Raises:
        TypeError: if ``scale`` or ``zero_point`` is not a tensor.
        ValueError: for shapes that do not match ``input`` along ``ch_axis``, a scale that
            is not finite and positive, or a zero point outside ``[quant_min, quant_max]``
            or not an integer.

    Example:
        >>> check_qparams(torch.zeros(3), torch.tensor(0.0), torch.tensor(0), -8, 7, None)
        Traceback (most recent call last):
        ...
        ValueError: scale must be finite and > 0, got 0.0; ...
    """
    _check_shapes(input, scale, zero_point, ch_axis, learned_zero_point)
    if torch.compiler.is_compiling():
        return
    scale = scale.detach()
    zero_point = zero_point.detach()
    good = torch.isfinite(scale).all() & (scale > 0).all()
    rounded = zero_point if not zero_point.is_floating_point() else zero_point.round()
    if quant_min is None or quant_max is None:
        quant_min, quant_max = -math.inf, math.inf
    good &= ((rounded >= quant_min) & (rounded <= quant_max)).all()
    if not learned_zero_point and zero_point.is_floating_point():
        good &= (zero_point == rounded).all()
    if bool(good):
        return
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ValueError(
            f"scale must be finite and > 0, got {scale}; compute it from a non-empty, "
            "finite range (e.g. aquatic.functional.calculate_qparams)"
        )
    what = "round into" if learned_zero_point else "be integers inside"
    raise ValueError(
        f"zero_point must {what} [quant_min, quant_max] = [{quant_min}, {quant_max}], got "
        f"{zero_point}"
    )
