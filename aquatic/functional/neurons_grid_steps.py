r"""One step of a quantized state, written into buffers: the arithmetic of the fused loop.

:class:`StepDecay` decays a state as
:func:`~aquatic.functional.neurons_grid.decay_on_grid` does and :class:`StepQuantizer`
quantizes it as torch's per-tensor fake quantization does, bit for bit, with few
elementwise passes per step, each written into a buffer allocated once per sequence.

Integers (the codes of a grid) are held in a floating-point tensor. Every operation on
them is exact while they stay below :math:`2^{p}` (``p`` significand bits: 24 for
float32, 53 for float64), so the codes live in the input's dtype where that holds and in
float64 otherwise (Loihi's 24-bit states in a float32 network). A product of an integer
below :math:`2^{24}` and a float32 scale is exact in float64, and its conversion to
float32 rounds once: the bits of the same product formed in float32.

Nearest rounding with ties to even is two additions (:func:`round_codes_`): below
:math:`2^{p-2}`, :math:`(y + 1.5 \cdot 2^{p-1}) - 1.5 \cdot 2^{p-1}` lands where the
spacing of floats is 1, and IEEE 754 addition rounds to nearest, ties to even (Goldberg
1991, "What every computer scientist should know about floating-point arithmetic",
section 1.2). ``torch.round``, ``floor`` and ``trunc`` are not used per step: torch
spreads them over threads even for tensors of a few thousand values, and on a busy
machine waiting for a second core costs far more than the pass. The results may hold a
zero of the other sign; values are equal.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from aquatic.functional.neurons_grid import StateGrid, decay_on_grid

__all__ = ["code_dtype", "round_codes_", "StepDecay", "StepQuantizer"]

_SIGNIFICAND = {torch.float32: 24, torch.float64: 53}


_MAGIC = {}


def _magic(like: Tensor) -> Tensor:
    """:math:`1.5 \\cdot 2^{p-1}` as a 0-dim tensor of ``like``'s dtype and device (a
    Python number would be converted at every call)."""
    key = (like.dtype, like.device)
    if key not in _MAGIC:
        value = 1.5 * 2.0 ** (_SIGNIFICAND[like.dtype] - 1)
        _MAGIC[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return _MAGIC[key]


def code_dtype(dtype: torch.dtype, bound: float) -> Optional[torch.dtype]:
    """The dtype (``dtype`` itself, else float64) that holds codes up to ``bound`` in
    magnitude and rounds them by additions exactly, or ``None``.

    Example:
        >>> code_dtype(torch.float32, 2**15), code_dtype(torch.float32, 2**23)
        (torch.float32, torch.float64)
    """
    for candidate in (dtype, torch.float64):
        bits = _SIGNIFICAND.get(candidate)
        if bits is not None and bound + 2 < 2.0 ** (bits - 2):
            return candidate
    return None


def round_codes_(codes: Tensor) -> Tensor:
    """Round ``codes`` in place to the nearest integer, ties to even (exact within the
    bound of :func:`code_dtype`; beyond it, to a value beyond it).

    Example:
        >>> round_codes_(torch.tensor([0.5, 1.5, -2.5, 2.4]))
        tensor([ 0.,  2., -2.,  2.])
    """
    magic = _magic(codes)
    return codes.add_(magic).sub_(magic)


def _power_of_two(scale: Tensor) -> bool:
    mantissa, _ = torch.frexp(scale.double())
    return float(mantissa) == 0.5


def _range(grid: StateGrid):
    zero_point = int(grid.zero_point)
    return grid.quant_min - zero_point, grid.quant_max - zero_point


class StepQuantizer:
    """``quantize(y, z, codes, out, mask)``: torch's per-tensor fake quantization of
    ``y`` (``FakeQuantizeCore``: :math:`q = z + \\mathrm{nearbyint}(y \\cdot (1 / s))`,
    clamped, times :math:`s` in float32) into ``out``, with the rounded codes before the
    clamp in ``z`` and the clamped codes in ``codes``, both of :attr:`dtype`, and where
    they are equal (the quantizer passes the gradient) in the boolean ``mask`` when
    given. ``out`` may be ``y``.

    Example:
        >>> grid = StateGrid(torch.tensor(0.25), torch.tensor(0, dtype=torch.int32), -8, 7)
        >>> step = StepQuantizer(grid, torch.float32)
        >>> y, z, codes = torch.tensor([0.3, 5.0]), torch.empty(2), torch.empty(2)
        >>> mask = torch.empty(2, dtype=torch.bool)
        >>> step(y, z, codes, y, mask), codes, mask
        (tensor([0.2500, 1.7500]), tensor([1., 7.]), tensor([ True, False]))
    """

    def __init__(self, grid: StateGrid, dtype: torch.dtype) -> None:
        self.scale = grid.scale
        self.inverse = torch.reciprocal(grid.scale)  # 1.0f / scale, as the kernel has it
        self.low, self.high = _range(grid)
        bound = max(abs(grid.quant_min), abs(grid.quant_max)) + abs(int(grid.zero_point))
        exact = code_dtype(dtype, bound) if dtype in _SIGNIFICAND else None
        # Codes of float32 values are exact in float64 only below 2**24.
        self.additions = exact is not None and (exact == dtype or bound < 2**24)
        self.dtype = exact if self.additions else dtype
        self.values = dtype
        # The scale in the codes' dtype: a 0-dim float32 scale would be converted at
        # every product with float64 codes (to the same value: the conversion is exact).
        self.code_scale = grid.scale.to(self.dtype)
        power = _power_of_two(grid.scale) and bound < 2**24
        self.exact_codes = self.additions and (bound < 2**21 or power)
        self.bound = bound

    def __call__(
        self, y: Tensor, z: Tensor, codes: Tensor, out: Tensor, mask: Optional[Tensor] = None
    ) -> Tensor:
        torch.mul(y, self.inverse, out=z)  # formed in y's dtype, exact in z's
        if self.additions:
            round_codes_(z)
        else:
            torch.round(z, out=z)
        return self.finish(z, codes, out, mask)

    def finish(
        self, z: Tensor, codes: Tensor, out: Tensor, mask: Optional[Tensor] = None
    ) -> Tensor:
        """The quantization from the rounded codes ``z`` on: clamped into ``codes``, the
        mask, the value into ``out``."""
        torch.clamp(z, self.low, self.high, out=codes)
        if mask is not None:
            torch.eq(z, codes, out=mask)
        if self.values == torch.float32:
            return torch.mul(codes, self.code_scale, out=out)
        # Other values: the kernel's float32 product, converted.
        return out.copy_(codes.to(torch.float32).mul_(self.scale))

    def codes_of(self, value: Tensor) -> Optional[Tensor]:
        """The codes of ``value`` (e.g. a threshold) when it lies on the grid, to within
        :math:`2^{-12}` of a step, with codes below :math:`2^{20}`; else ``None``.

        Then a state :math:`q s - value` (:math:`q` codes of this quantizer, below
        :math:`2^{20}`), formed in float32 or float64, divided by :math:`s` rounds to
        :math:`q - k`: three roundings to float32 at most, off by less than
        :math:`2^{-24} (3 |q| + 2 |k|) + 2^{-12} < 1/2` steps.
        """
        if not self.exact_codes or self.bound >= 2**20:
            return None
        codes = value.detach().double() / self.scale.double()
        nearest = torch.round(codes)
        if (codes - nearest).abs().max() > 2.0**-12 or nearest.abs().max() >= 2**20:
            return None
        return nearest.to(self.dtype)


class StepDecay:
    """``decay(y, codes, out)``: :func:`~aquatic.functional.neurons_grid.decay_on_grid`
    of ``y`` into ``out``, with ``codes`` (:attr:`dtype`) a scratch buffer; without a rule
    the product ``alpha * y``. :meth:`from_codes` decays a state given by the clamped
    codes of a :class:`StepQuantizer` on the same grid, one rounding fewer.

    Example:
        >>> grid = StateGrid(torch.tensor(0.25), torch.tensor(0, dtype=torch.int32), -64, 63,
        ...                  "bitshift", 0, torch.tensor(3))
        >>> step = StepDecay(grid, torch.tensor(0.875), torch.empty(2))
        >>> step(torch.tensor([0.75, 12.5]), torch.empty(2), torch.empty(2))
        tensor([ 0.5000, 11.0000])
    """

    def __init__(self, grid: Optional[StateGrid], alpha: Tensor, like: Tensor) -> None:
        self.alpha, self.grid = alpha, grid
        self.rule = grid.rule if grid is not None else ""
        self.dtype = None
        if not self.rule:
            return
        self.scale = grid.scale
        self.low, self.high = _range(grid)
        bound = max(abs(self.low), abs(self.high))
        self.bits = grid.bits
        # A multiplicative rule forms codes * (2**bits - d): that product must be exact too.
        reach = bound * 2**grid.bits if self.rule == "multiplicative" else bound
        self.dtype = code_dtype(like.dtype, reach) if like.dtype in _SIGNIFICAND else None
        if self.dtype is None or (self.dtype != like.dtype and bound >= 2**24):
            self.dtype = None  # beyond the exact range: decay_on_grid as it is
            return
        self.code_scale = grid.scale.to(self.dtype)  # as StepQuantizer's
        new = lambda: like.new_empty(like.shape, dtype=self.dtype)  # noqa: E731
        dash = grid.codes.to(self.dtype)
        if self.rule == "bitshift":
            # x >> dash = floor(x 2**-dash); the decrement is at least 1 toward zero. The
            # floor of x 2**-dash (dash fractional bits) is the nearest integer to
            # x 2**-dash - 1/2 + 2**-(dash + 1), which is never a tie.
            self.factor = torch.exp2(-dash)
            self.offset = torch.exp2(-dash - 1) - 0.5
            self.shifted, self.floor = new(), new()
        else:
            self.keep = 2.0**grid.bits - dash

    def __call__(self, y: Tensor, codes: Tensor, out: Tensor) -> Tensor:
        if not self.rule:
            return torch.mul(self.alpha, y, out=out)
        if self.dtype is None:
            return out.copy_(decay_on_grid(y, self.alpha, self.grid))
        torch.div(y, self.scale, out=codes)  # formed in y's dtype, exact in codes'
        round_codes_(codes).clamp_(self.low, self.high)
        return torch.mul(self.rule_codes(codes, codes), self.code_scale, out=out)

    def from_codes(self, codes: Tensor, scratch: Tensor, out: Tensor) -> Tensor:
        """The decay of the state ``codes * s`` that a :class:`StepQuantizer` on this
        grid wrote (with ``exact_codes``: its value divided by ``s`` rounds back to
        ``codes``); ``scratch`` of :attr:`dtype`, ``codes`` left as they are."""
        return torch.mul(self.rule_codes(codes, scratch), self.code_scale, out=out)

    def rule_codes(self, codes: Tensor, result: Tensor) -> Tensor:
        """The decayed codes of ``codes`` (:attr:`dtype`) into ``result`` (may be
        ``codes``), for a rule within the exact range."""
        if self.rule == "bitshift":
            shifted = round_codes_(torch.addcmul(self.offset, codes, self.factor, out=self.shifted))
            torch.maximum(shifted, torch.clamp(codes, max=1, out=self.floor), out=shifted)
            torch.sub(codes, shifted, out=result)
        else:
            # (2**bits - d) x >> bits toward zero: the product and the quotient are exact.
            torch.mul(codes, self.keep, out=result)
            result.div_(2.0**self.bits, rounding_mode="trunc")
        return result
