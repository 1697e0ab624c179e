"""Integer arithmetic as neuromorphic chips do it: saturation, shifts, decays.

Every function here takes and returns integer tensors and never leaves integer
arithmetic, so its results are exact and identical on every device. They are the
building blocks of the chip simulators in :mod:`aquatic.hw`:

- :func:`saturate` clamps to a signed ``bits``-bit range (saturating accumulators).
- :func:`saturating_add` adds and saturates, as one hardware adder does.
- :func:`shift_right_toward_zero` divides by :math:`2^n` rounding toward zero
  (``sign(x) * (|x| >> n)``), unlike ``x >> n`` which rounds toward :math:`-\\infty`.
- :func:`bitshift_decay` is SynSense Xylo's leak ``x -= x >> dash`` with a decrement
  of at least one toward zero for non-zero ``x``.
- :func:`multiplicative_decay` is Intel Loihi's leak
  ``x = (2**bits - d) * x >> bits``, rounded toward zero.
- :func:`spike_count` is the count of spikes ``floor(v / threshold)``, capped, that
  :func:`aquatic.functional.surrogate.spike_values` computes on the same grid in float.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

__all__ = [
    "check_integer",
    "int_range",
    "saturate",
    "saturating_add",
    "shift_right_toward_zero",
    "bitshift_decrement",
    "bitshift_decay",
    "multiplicative_decay",
    "spike_count",
]

IntLike = Union[int, Tensor]


def check_integer(input: Tensor, name: str = "input") -> Tensor:
    """Return ``input`` if it is an integer tensor, else raise a ``TypeError``.

    Example:
        >>> check_integer(torch.tensor([1, 2])).dtype
        torch.int64
        >>> check_integer(torch.tensor([1.0]), "weights")
        Traceback (most recent call last):
        ...
        TypeError: weights must be an integer tensor, got dtype torch.float32; round it and convert it with .to(torch.int64) first
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if input.is_floating_point() or input.is_complex() or input.dtype == torch.bool:
        raise TypeError(
            f"{name} must be an integer tensor, got dtype {input.dtype}; round it and "
            "convert it with .to(torch.int64) first"
        )
    return input


def int_range(bits: int) -> tuple:
    """``(min, max)`` of a signed two's-complement ``bits``-bit integer.

    Example:
        >>> int_range(16)
        (-32768, 32767)
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 63:
        raise ValueError(f"bits must be an int in 2..63, got {bits!r}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def saturate(input: Tensor, bits: int) -> Tensor:
    """Clamp ``input`` to the signed ``bits``-bit range (saturation, not wrap-around).

    Args:
        input: integer tensor.
        bits: width of the signed range, e.g. 16 for ``-32768..32767``.

    Shape:
        - input: any shape. Output: same shape and dtype.

    Example:
        >>> saturate(torch.tensor([-40000, 5, 40000]), 16)
        tensor([-32768,      5,  32767])
    """
    low, high = int_range(bits)
    return torch.clamp(check_integer(input), low, high)


def saturating_add(input: Tensor, other: IntLike, bits: int) -> Tensor:
    """``saturate(input + other, bits)``, computed without intermediate overflow.

    Both operands are widened to ``int64`` before adding, so the sum is exact before it
    saturates; the result has the dtype of ``input``.

    Example:
        >>> saturating_add(torch.tensor([32000, -32000], dtype=torch.int16), 1000, 16)
        tensor([ 32767, -31000], dtype=torch.int16)
    """
    check_integer(input)
    if isinstance(other, Tensor):
        other = check_integer(other, "other").to(torch.int64)
    return saturate(input.to(torch.int64) + other, bits).to(input.dtype)


def shift_right_toward_zero(input: Tensor, shift: IntLike) -> Tensor:
    """Divide by :math:`2^{shift}` rounding toward zero: ``sign(x) * (|x| >> shift)``.

    ``x >> n`` on a negative ``x`` rounds toward :math:`-\\infty` (``-5 >> 1 == -3``);
    chips that compute on magnitudes round toward zero instead (``-2``).

    Args:
        input: integer tensor.
        shift: non-negative shift, an int or an integer tensor that broadcasts.

    Example:
        >>> shift_right_toward_zero(torch.tensor([-5, -1, 5]), 1)
        tensor([-2,  0,  2])
    """
    check_integer(input)
    magnitude = torch.bitwise_right_shift(input.abs(), shift)
    return torch.where(input < 0, -magnitude, magnitude)


def bitshift_decrement(input: Tensor, dash: IntLike) -> Tensor:
    """The leak of a bit-shift decay: ``x >> dash``, but at least 1 toward zero.

    ``x >> dash`` rounds toward :math:`-\\infty`, so a negative ``x`` always leaks at
    least 1 already; a positive ``x`` smaller than :math:`2^{dash}` would not leak at
    all, and leaks 1 instead (xylosim's ``decay``, ``XyloIAFNeuron.cpp``). Zero stays zero.

    Example:
        >>> bitshift_decrement(torch.tensor([-3, -1, 0, 1, 7, 100]), 4)
        tensor([-1, -1,  0,  1,  1,  6])
    """
    check_integer(input)
    # max(x >> dash, min(x, 1)): for x > 0 that is max(x >> dash, 1); for x = 0, 0; for
    # x < 0, x <= x >> dash <= -1 already. Three passes instead of six.
    shifted = torch.bitwise_right_shift(input, dash)
    return torch.maximum(shifted, torch.clamp(input, max=1))


def bitshift_decay(input: Tensor, dash: IntLike) -> Tensor:
    """Xylo's leak: ``x - bitshift_decrement(x, dash)``.

    The retention factor is :math:`\\alpha = 1 - 2^{-dash}`; in exact terms the result
    is :math:`\\lceil \\alpha x \\rceil`, except for :math:`0 < x < 2^{dash}`, which
    gives :math:`x - 1`. It never overshoots zero.

    Args:
        input: integer tensor (the state).
        dash: shift, an int or an integer tensor that broadcasts (Xylo: 0..15).

    Example:
        >>> bitshift_decay(torch.tensor([-3, -1, 0, 1, 7, 100]), 4)
        tensor([-2,  0,  0,  0,  6, 94])
    """
    return input - bitshift_decrement(input, dash)


def multiplicative_decay(input: Tensor, decrement: IntLike, bits: int = 12) -> Tensor:
    """Loihi's leak: ``(2**bits - d) * x >> bits`` rounded toward zero.

    With ``bits=12`` the retention factor is :math:`\\alpha = 1 - d / 4096`. The
    product is formed in ``int64``, so it cannot overflow for Loihi's 24-bit states.

    Args:
        input: integer tensor (the state).
        decrement: ``d`` in ``0..2**bits``, an int or an integer tensor that broadcasts.
        bits: precision of the decay.

    Example:
        >>> multiplicative_decay(torch.tensor([-100, 100, 4095]), 1024)
        tensor([ -75,   75, 3071])
    """
    check_integer(input)
    product = input.to(torch.int64) * (2**bits - torch.as_tensor(decrement, dtype=torch.int64))
    return shift_right_toward_zero(product, bits).to(input.dtype)


def spike_count(v: Tensor, threshold: IntLike, max_spikes: int) -> Tensor:
    """Spikes per step of an integer membrane: ``clamp(floor(v / threshold), 0, max_spikes)``.

    The one definition of the spike count with ``max_spikes > 1``: the float path
    (:func:`aquatic.functional.surrogate.spike_values`) computes the same count of
    ``v * s`` and ``threshold * s`` for any grid step ``s`` (within the ranges stated
    there).

    Args:
        v: integer membrane.
        threshold: positive integer threshold on the same grid (broadcasts to ``v``).
        max_spikes: the cap on the count.

    Example:
        >>> spike_count(torch.tensor([-3, 0, 770, 771, 13760255]), torch.tensor(257), 31)
        tensor([ 0,  0,  2,  3, 31])
    """
    v = check_integer(v, "v")
    return torch.div(v, threshold, rounding_mode="floor").clamp(0, max_spikes)
