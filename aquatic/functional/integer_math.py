"""Integer square roots, rounded division and the fixed-point exponential of integer
softmax: the arithmetic of the integer layer norm and attention.

- :func:`integer_sqrt`: :math:`\\lfloor\\sqrt{n}\\rfloor` by Newton's iteration on
  integers (Crandall and Pomerance 2005, "Prime Numbers: A Computational Perspective",
  algorithm 9.2.11; I-BERT, Kim et al. 2021, algorithm 4, uses the same iteration).
- :func:`rounding_divide`: :math:`\\mathrm{round}(a / b)`, halves away from zero.
- :func:`exp_tables` and :func:`table_exp`: :math:`e^{-c d}` for integers
  :math:`d \\ge 0` in fixed point, as the product of two lookup tables
  (:math:`e^{-c (h 2^b + l)} = e^{-c h 2^b} e^{-c l}`), the way TensorFlow Lite Micro's
  int8 softmax tabulates the exponential of max-subtracted inputs.

Every function takes and returns ``int64`` tensors; only :func:`exp_tables` computes in
float64, once, when an integer model is built.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from aquatic.functional.integer import check_integer

__all__ = ["integer_sqrt", "rounding_divide", "exp_tables", "table_exp", "EXP_BITS"]

#: Fraction bits of the fixed-point exponential: :math:`e^0` is :math:`2^{24}`.
EXP_BITS = 24


def integer_sqrt(input: Tensor) -> Tensor:
    """:math:`\\lfloor\\sqrt{n}\\rfloor` of every ``n >= 0``, in integer arithmetic.

    Newton's iteration :math:`x \\leftarrow \\lfloor (x + \\lfloor n / x \\rfloor) / 2
    \\rfloor` from a start above the root decreases to the floor of the root and stops
    there (Crandall and Pomerance 2005, algorithm 9.2.11).

    Args:
        input: integer tensor, every value in :math:`[0, 2^{62})`.

    Raises:
        ValueError: a negative value.

    Example:
        >>> integer_sqrt(torch.tensor([0, 1, 15, 16, 17, 2**62 - 1]))
        tensor([         0,          1,          3,          4,          4, 2147483647])
    """
    n = check_integer(input).to(torch.int64)
    if n.numel() and int(n.min()) < 0:
        raise ValueError(f"integer_sqrt takes values >= 0, got {int(n.min())}")
    m = n.clamp(min=1)  # the iterates stay >= 1; the root of 0 is set at the end
    # 2**ceil(bits / 2) is at least the root: a start from above.
    bits = torch.floor(torch.log2(m.double())).to(torch.int64) + 1
    x = torch.bitwise_left_shift(torch.ones_like(m), (bits + 1) // 2)
    while True:
        y = (x + torch.div(m, x, rounding_mode="floor")) // 2
        smaller = y < x
        if not bool(smaller.any()):
            break
        x = torch.where(smaller, y, x)
    return torch.where(n == 0, 0, x)


def rounding_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``round(numerator / denominator)`` for positive denominators, halves away from zero.

    Both operands must stay below :math:`2^{62}` in magnitude (twice them is formed).

    Example:
        >>> rounding_divide(torch.tensor([7, -7, 5, -5, 4]), torch.tensor(2))
        tensor([ 4, -4,  3, -3,  2])
    """
    a = check_integer(numerator).to(torch.int64)
    b = check_integer(denominator).to(torch.int64)
    magnitude = torch.div(2 * a.abs() + b, 2 * b, rounding_mode="floor")
    return torch.where(a < 0, -magnitude, magnitude)


def exp_tables(rate: float, bits: int = EXP_BITS) -> Tuple[Tensor, Tensor, int]:
    """The two tables of :func:`table_exp` for :math:`e^{-c d}` with :math:`c` = ``rate``.

    Entries are :math:`\\mathrm{round}(2^{bits} e^{-c j})` for the low part and
    :math:`\\mathrm{round}(2^{bits} e^{-c j 2^b})` for the high part, ``j < 2^b``, with
    ``b`` the smallest split that covers every :math:`d` whose exponential does not round
    to zero.

    Args:
        rate: :math:`c > 0`, float64.
        bits: fraction bits of the results.

    Returns:
        ``(low, high, b)``.

    Raises:
        ValueError: ``rate`` not positive, or so small that the tables would exceed
            :math:`2^{16}` entries each.

    Example:
        >>> low, high, b = exp_tables(math.log(2))  # e^{-d ln 2} = 2^{-d}
        >>> b, low[:3].tolist()
        (3, [16777216, 8388608, 4194304])
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"the exponential's rate must be positive and finite, got {rate!r}")
    # Beyond this the exponential is below half a unit of the last place: zero.
    cutoff = math.ceil((bits + 1) * math.log(2) / rate) + 1
    split = max(1, math.ceil(math.log2(cutoff) / 2))
    if split > 16:
        raise ValueError(
            f"the exponential's rate {rate:g} is too small for lookup tables (inputs of "
            f"{cutoff} steps); use coarser scales for the scores"
        )
    j = torch.arange(2**split, dtype=torch.float64)
    unit = 2.0**bits
    low = torch.round(torch.exp(-rate * j) * unit).to(torch.int64)
    high = torch.round(torch.exp(-rate * j * 2**split) * unit).to(torch.int64)
    return low, high, split


def table_exp(steps: Tensor, low: Tensor, high: Tensor, split: int, bits: int = EXP_BITS) -> Tensor:
    """:math:`e^{-c d}` in units of :math:`2^{-bits}` for integers ``steps`` :math:`d \\ge 0`,
    from the tables of :func:`exp_tables`: ``round(high[d >> b] * low[d & (2^b - 1)] / 2^bits)``,
    and 0 from :math:`d \\ge 2^{2b}` on.

    Example:
        >>> low, high, b = exp_tables(math.log(2))
        >>> table_exp(torch.tensor([0, 1, 10, 64]), low, high, b).tolist()
        [16777216, 8388608, 16384, 0]
    """
    d = check_integer(steps).to(torch.int64)
    size = 2**split
    beyond = d >= size * size
    d = d.clamp(min=0, max=size * size - 1)
    product = high[torch.div(d, size, rounding_mode="floor")] * low[torch.remainder(d, size)]
    result = torch.bitwise_right_shift(product + (1 << (bits - 1)), bits)
    return torch.where(beyond, 0, result)
