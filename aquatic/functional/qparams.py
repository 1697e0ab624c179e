"""Scale and zero point from an observed range."""

from __future__ import annotations

import math
import struct
from typing import Tuple

import torch
from torch import Tensor

__all__ = ["calculate_qparams", "round_to_power_of_two"]

_EPS = torch.finfo(torch.float32).eps
_PACK = struct.Struct("f").pack
_UNPACK = struct.Struct("f").unpack


def _float32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float32 else x.float()


def round_to_power_of_two(scale: Tensor) -> Tensor:
    """Round each scale *up* to the next power of two, so nothing new is clipped.

    Example:
        >>> round_to_power_of_two(torch.tensor([0.3, 0.25, 3.0]))
        tensor([0.5000, 0.2500, 4.0000])
    """
    return torch.exp2(torch.ceil(torch.log2(scale)))


def calculate_qparams(
    min_val: Tensor,
    max_val: Tensor,
    quant_min: int,
    quant_max: int,
    symmetric: bool,
    power_of_two: bool = False,
    eps: float = _EPS,
) -> Tuple[Tensor, Tensor]:
    """Scale and zero point that cover ``[min_val, max_val]`` (extended to include 0).

    - Symmetric: zero point 0 and :math:`s = \\max(|min|, |max|) / \\min(q_{max}, -q_{min})`
      for a signed range, :math:`s = \\max(max, 0) / q_{max}` for an unsigned one
      (negative values then clip to 0, as after a ReLU).
    - Asymmetric: :math:`s = (max - min) / (q_{max} - q_{min})` and
      :math:`z = q_{min} - \\mathrm{round}(min / s)`, clamped to the range.

    The scale is at least ``eps``, so an all-zero or constant tensor still gets a
    usable scale; ``power_of_two`` rounds it up to :math:`2^k`. It is finite for every
    finite range: where :math:`max - min` overflows float32 (ranges near
    :math:`\\pm 3.4 \\cdot 10^{38}`), it is :math:`max / n - min / n` with
    :math:`n = q_{max} - q_{min}`.

    Args:
        min_val, max_val: observed minimum and maximum (scalars or per channel).
        quant_min, quant_max: the integer range.
        symmetric: whether the zero point is fixed at 0.
        power_of_two: restrict the scale to powers of two.
        eps: the smallest scale returned.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors shaped like ``min_val``.

    Example:
        >>> calculate_qparams(torch.tensor(-1.0), torch.tensor(2.54), -128, 127, True)
        (tensor(0.0200), tensor(0, dtype=torch.int32))
        >>> calculate_qparams(torch.tensor(-1.0), torch.tensor(2.0), 0, 255, False)
        (tensor(0.0118), tensor(85, dtype=torch.int32))
    """
    if symmetric:
        if quant_min < 0:
            # max(-min, max) equals max(|min_neg|, max_pos) whenever that is positive;
            # otherwise both end at eps below. Fewer small ops: this runs every step.
            # amax is a fresh tensor: divided in place (one allocation fewer).
            amax = _float32(torch.maximum(torch.neg(min_val), max_val))
            scale = amax.div_(min(quant_max, -quant_min))
        else:
            # a negative max gives a negative quotient, clamped to eps like 0 / quant_max
            scale = torch.div(_float32(max_val), quant_max)
        scale = scale.clamp_(min=eps)
        if power_of_two:
            scale = round_to_power_of_two(scale)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return scale, zero_point
    min_neg = torch.clamp(_float32(min_val), max=0.0)
    max_pos = torch.clamp(_float32(max_val), min=0.0)
    levels = quant_max - quant_min
    scale = torch.sub(max_pos, min_neg).div_(levels)
    # max - min overflows float32 for ranges such as +-3e38: then divide each end first,
    # which keeps the scale finite (and leaves every other range's scale as it was).
    scale = torch.where(
        torch.isinf(scale), torch.sub(max_pos.div(levels), min_neg.div(levels)), scale
    ).clamp_(min=eps)
    if power_of_two:
        scale = round_to_power_of_two(scale)
    # quant_min - round(min_neg / scale), clamped to the range
    zero_point = torch.div(min_neg, scale).round_().neg_().add_(quant_min)
    zero_point = zero_point.clamp_(quant_min, quant_max).to(torch.int32)
    return scale, zero_point


def to_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even), as a Python float.

    One float32 operation computed in float64 and rounded once to float32 gives the
    float32 result exactly for ``+ - * /`` (53 >= 2 * 24 + 2 bits; Figueroa 1995,
    "When is double rounding innocuous?"), which lets the scalar paths below reproduce
    float32 tensor arithmetic bit for bit.

    Example:
        >>> to_float32(0.1), to_float32(1e39)
        (0.10000000149011612, inf)
    """
    try:
        return _UNPACK(_PACK(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def calculate_qparams_float(
    min_val: float,
    max_val: float,
    quant_min: int,
    quant_max: int,
    symmetric: bool,
    eps: float = _EPS,
) -> Tuple[float, int]:
    """:func:`calculate_qparams` for one range given as floats, without tensor ops.

    The same float32 arithmetic, step by step, for the eager per-tensor path where a
    dozen tiny tensor ops would cost more than the quantization itself. ``min_val`` and
    ``max_val`` must be float32 values; ``power_of_two`` is not supported here (float32
    ``log2`` has no exact scalar twin).

    Args:
        min_val, max_val: the range, float32 values as Python floats.
        quant_min, quant_max: the integer range.
        symmetric: whether the zero point is fixed at 0.
        eps: the smallest scale returned.

    Returns:
        ``(scale, zero_point)``: a float holding a float32 value, and an int; equal to
        ``calculate_qparams``'s tensors.

    Example:
        >>> calculate_qparams_float(-1.0, 2.0, 0, 255, False)  # as calculate_qparams
        (0.0117647061124444, 85)
    """
    if symmetric:
        if quant_min < 0:
            amax = max(-min_val, max_val)
            scale = to_float32(amax / min(quant_max, -quant_min))
        else:
            scale = to_float32(max_val / quant_max)
        return max(scale, eps), 0
    min_neg = min(min_val, 0.0)
    max_pos = max(max_val, 0.0)
    levels = quant_max - quant_min
    scale = to_float32(to_float32(max_pos - min_neg) / levels)
    if math.isinf(scale):  # max - min overflows float32: as calculate_qparams
        scale = to_float32(to_float32(max_pos / levels) - to_float32(min_neg / levels))
    scale = max(scale, eps)
    zero_point = quant_min - round(to_float32(min_neg / scale))
    return scale, min(max(zero_point, quant_min), quant_max)
