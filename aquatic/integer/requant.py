"""Requantization in integer arithmetic: rounding shifts and fixed-point multipliers.

An integer layer accumulates in units of one scale and hands its result on in units of
another. The ratio :math:`M = s_{in} / s_{out}` of the two is a real number, which
integer hardware applies as a fixed-point multiplier and a shift (Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", section 2.2):

.. math::

    M \\approx m\\, 2^{-n}, \\qquad q_{out} = \\mathrm{round}(q_{in}\\, m\\, 2^{-n})

with an integer :math:`m` of at most 31 bits. When :math:`M` is a power of two the
multiplier is 1 and the result is exact.

Rounding is half to even, as :func:`torch.round` (and so every aquatic quantizer with
``rounding="nearest"``) rounds, or floor. Where the quantization-aware model computes
in float32, :func:`round_to_float32` reproduces float32's rounding of an exact
intermediate (24 significant bits, ties to even), so that integer arithmetic can follow
the float model bit for bit where the values are dyadic (power-of-two scales).

Everything here takes and returns ``int64`` tensors.
"""

from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor

from aquatic.functional.grid import is_power_of_two
from aquatic.functional.integer import check_integer

__all__ = [
    "ROUNDINGS",
    "bit_length",
    "rounding_right_shift",
    "round_to_float32",
    "quantize_multiplier",
    "multiply_shift",
    "is_power_of_two",
    "dyadic_exponent",
]

#: Rounding modes of the integer model: half to even (``torch.round``) and floor.
ROUNDINGS = ("nearest", "floor")

IntLike = Union[int, Tensor]

#: Significant bits of a float32 (23 stored and the implicit leading one).
FLOAT32_BITS = 24


def _check_rounding(rounding: str) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be 'nearest' or 'floor', got {rounding!r}")


def bit_length(input: Tensor) -> Tensor:
    """Bits needed for ``|input|`` (0 for 0), elementwise, as Python's ``int.bit_length``.

    Example:
        >>> bit_length(torch.tensor([0, 1, -5, 2**40 - 1, 2**40]))
        tensor([ 0,  1,  3, 40, 41])
    """
    magnitude = check_integer(input).to(torch.int64).abs()
    length = torch.floor(torch.log2(magnitude.double().clamp(min=1.0))).to(torch.int64) + 1
    # Converting to float64 rounds to nearest, which can carry 2**k - 1 up to 2**k (never
    # down below a power of two): one correction step downward suffices.
    too_long = torch.bitwise_right_shift(magnitude, (length - 1).clamp(min=0)) == 0
    return torch.where(too_long, length - 1, length)


def rounding_right_shift(input: Tensor, shift: IntLike, rounding: str = "nearest") -> Tensor:
    """``input / 2**shift`` rounded half to even (``"nearest"``) or down (``"floor"``).

    Args:
        input: integer tensor with :math:`|x| < 2^{62}` (computed in ``int64``).
        shift: non-negative shift, an int or an integer tensor that broadcasts; any size
            (beyond 62 the result is 0, or -1 for a negative input rounded down).
        rounding: ``"nearest"`` (ties to even, as :func:`torch.round`) or ``"floor"``.

    Shape:
        - input: any shape. Output: the broadcast shape of ``input`` and ``shift``, ``int64``.

    Example:
        >>> rounding_right_shift(torch.tensor([5, 6, 7, -5, -6, -7]), 2)
        tensor([ 1,  2,  2, -1, -2, -2])
        >>> rounding_right_shift(torch.tensor([-5, 5]), 1, "floor")
        tensor([-3,  2])
    """
    _check_rounding(rounding)
    x = check_integer(input).to(torch.int64)
    n = torch.as_tensor(shift, dtype=torch.int64, device=x.device)
    if bool((n < 0).any()):
        raise ValueError(f"shift must be >= 0, got {n.min().item()}")
    capped = n.clamp(max=62)
    floor = torch.bitwise_right_shift(x, capped)
    if rounding == "nearest":
        remainder = x - torch.bitwise_left_shift(floor, capped)  # in [0, 2**n)
        half = torch.bitwise_left_shift(torch.ones_like(capped), (capped - 1).clamp(min=0))
        odd = torch.bitwise_and(floor, 1) == 1
        up = (capped > 0) & ((remainder > half) | ((remainder == half) & odd))
        result = floor + up.to(torch.int64)
        far = torch.zeros_like(result)
    else:
        result = floor
        far = torch.where(x < 0, -1, 0)
    # With |x| < 2**62 a shift beyond 62 leaves |x| / 2**n < 1/2.
    return torch.where(n > 62, far, result)


def round_to_float32(input: Tensor) -> Tensor:
    """Round integers to the 24 significant bits a float32 keeps, ties to even.

    A value :math:`N \\cdot 2^{-k}` that float32 arithmetic produced from dyadic operands
    (and that lies in float32's normal range) is the correctly rounded exact result: this
    function rounds the numerator :math:`N` the same way, so ``round_to_float32(a * b)``
    equals the float32 product of :math:`a 2^{-k}` and :math:`b 2^{-j}`, in units of
    :math:`2^{-k-j}`.

    Example:
        >>> x = torch.tensor([2**24 + 1, 2**24 + 3, -(2**25 + 2), 7])
        >>> round_to_float32(x).tolist()
        [16777216, 16777220, -33554432, 7]
        >>> [int(torch.tensor(float(v), dtype=torch.float32).item()) for v in x.tolist()]
        [16777216, 16777220, -33554432, 7]
    """
    x = check_integer(input).to(torch.int64)
    drop = (bit_length(x) - FLOAT32_BITS).clamp(min=0)
    if not bool((drop > 0).any()):
        return x
    magnitude = rounding_right_shift(x.abs(), drop)
    return torch.where(x < 0, -1, 1) * torch.bitwise_left_shift(magnitude, drop)


def quantize_multiplier(ratio: Tensor, precision: int = 31) -> Tuple[Tensor, Tensor]:
    """An integer multiplier and shift with ``multiplier * 2**-shift`` close to ``ratio``.

    Following Jacob et al. 2018 (section 2.2): :math:`M = m_0\\, 2^{e}` with
    :math:`m_0 \\in [1/2, 1)`, the multiplier is :math:`\\mathrm{round}(m_0 2^{p})` for a
    precision of :math:`p` bits. Trailing zero bits are then dropped, so a power of two
    becomes multiplier 1 and an exact shift. The shift is negative for ratios of
    :math:`2^{p}` and more (then it is a left shift).

    Args:
        ratio: positive finite ratios (any shape), float64 for full precision.
        precision: bits of the multiplier, 1 to 31.

    Returns:
        ``(multiplier, shift)``, ``int64`` tensors shaped like ``ratio``.

    Example:
        >>> m, n = quantize_multiplier(torch.tensor([0.25, 3.0, 0.1], dtype=torch.float64))
        >>> m.tolist(), n.tolist()
        ([1, 3, 858993459], [2, 0, 33])
    """
    if isinstance(precision, bool) or not isinstance(precision, int) or not 1 <= precision <= 31:
        raise ValueError(f"precision must be an int from 1 to 31, got {precision!r}")
    ratio = torch.as_tensor(ratio, dtype=torch.float64)
    if not bool(torch.isfinite(ratio).all()) or bool((ratio <= 0).any()):
        raise ValueError(
            f"a requantization ratio must be positive and finite, got {ratio.tolist()}; "
            "check that every scale is positive"
        )
    mantissa, exponent = torch.frexp(ratio)
    multiplier = torch.round(torch.ldexp(mantissa, torch.tensor(precision))).to(torch.int64)
    full = multiplier == 2**precision  # m0 rounded up to 1
    multiplier = torch.where(full, multiplier // 2, multiplier)
    exponent = exponent.to(torch.int64) + full.to(torch.int64)
    shift = precision - exponent
    # Drop trailing zeros of the multiplier: exact powers of two become (1, n) and need
    # no multiplication at all (a negative n is then a plain left shift).
    drop = _trailing_zeros(multiplier)
    return torch.bitwise_right_shift(multiplier, drop), shift - drop


def _trailing_zeros(input: Tensor) -> Tensor:
    lowest = torch.bitwise_and(input, -input)  # the lowest set bit (input > 0)
    return bit_length(lowest) - 1


def multiply_shift(
    input: Tensor, multiplier: IntLike, shift: IntLike, rounding: str = "nearest"
) -> Tensor:
    """``round(input * multiplier * 2**-shift)`` in ``int64`` (a negative shift shifts left).

    The caller keeps ``|input * multiplier|`` below :math:`2^{63}` (see
    :func:`quantize_multiplier`'s ``precision``).

    Example:
        >>> multiply_shift(torch.tensor([10, -10, 3]), 3, 2)  # x * 0.75
        tensor([ 8, -8,  2])
    """
    product = check_integer(input).to(torch.int64) * torch.as_tensor(multiplier, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    if not bool((shift < 0).any()):
        return rounding_right_shift(product, shift, rounding)
    left = torch.bitwise_left_shift(product, (-shift).clamp(min=0))
    return torch.where(shift < 0, left, rounding_right_shift(product, shift.clamp(min=0), rounding))


def dyadic_exponent(input: Tensor, limit: int = 160) -> int:
    """The smallest ``k`` (possibly negative) such that every ``input * 2**k`` is an integer.

    Every finite float is a dyadic rational, so ``k`` exists; it is at most 149 for
    float32. Zero tensors give ``-limit``.

    Example:
        >>> dyadic_exponent(torch.tensor([0.75, 2.0])), dyadic_exponent(torch.tensor(12.0))
        (2, -2)
    """
    values = torch.as_tensor(input, dtype=torch.float64).flatten()
    values = values[values != 0]
    if values.numel() == 0:
        return -limit
    if not bool(torch.isfinite(values).all()):
        raise ValueError("dyadic_exponent needs finite values")
    mantissa, exponent = torch.frexp(values)
    # mantissa * 2**53 is an integer; its trailing zeros say how far that is from needed.
    numerator = torch.ldexp(mantissa, torch.tensor(53)).to(torch.int64)
    needed = 53 - _trailing_zeros(numerator.abs()) - exponent.to(torch.int64)
    return int(needed.max())
