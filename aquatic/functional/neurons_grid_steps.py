r"""One step of a quantized state, written into buffers: the arithmetic of the fused loop.

:class:`StepDecay` decays a state as
:func:`~aquatic.functional.neurons_grid.decay_on_grid` does and :class:`StepQuantizer`
quantizes it as torch's per-tensor fake quantization does, bit for bit, with few
elementwise passes per step, each written into a buffer allocated once per sequence.

They work on NumPy arrays (zero-copy views of the sequence's CPU tensors,
:func:`as_array`): a NumPy ufunc with ``out=`` costs well under a microsecond to call,
a few times less than a torch operation, and the loop runs some twenty of them per
step. Addition, subtraction, multiplication, division, ``rint`` (nearest, ties to
even), ``floor`` and ``trunc`` are correctly rounded IEEE 754 operations in both
libraries, so they give torch's bits. NumPy runs them on one thread; the arrays of one
step (a batch of a layer's neurons) are below torch's own threshold for using more.

Integers (the codes of a grid) are held in a floating-point array of the values' dtype:
every operation on them is exact while they stay below :math:`2^{p}` (``p`` significand
bits: 24 for float32, 53 for float64). A decay's product that needs more (Loihi's 24-bit
states times a 12-bit factor) is formed in float64. A product of an integer below
:math:`2^{24}` and a float32 scale is exact in float64, and its conversion to float32
rounds once: the bits of the same product formed in float32. Scalars are given the
dtype of the computation explicitly: NumPy promotes a float32 array with a float64
0-dim array to float64, where torch keeps float32.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from aquatic.functional.neurons_grid import StateGrid, decay_on_grid

try:  # the clip ufunc itself: np.clip wraps it in three Python calls (over a microsecond)
    from numpy._core.umath import clip
except ImportError:  # NumPy 1
    from numpy.core.umath import clip

__all__ = [
    "SIGNIFICAND",
    "as_array",
    "clip",
    "constant",
    "power_of_two",
    "StepDecay",
    "StepQuantizer",
]

#: Significand bits of the dtypes the loop runs: integers below ``2**bits`` are exact.
SIGNIFICAND = {torch.float32: 24, torch.float64: 53}


def as_array(tensor: Tensor) -> np.ndarray:
    """The NumPy view of a CPU tensor (no copy; writes go to the tensor).

    Example:
        >>> t = torch.zeros(3)
        >>> as_array(t)[1] = 2.0
        >>> t
        tensor([0., 2., 0.])
    """
    return tensor.detach().numpy()


def constant(value, dtype) -> np.ndarray:
    """``value`` (a number or a tensor) as an array of NumPy ``dtype`` (0-dim for a
    number or a 0-dim tensor).

    Example:
        >>> constant(torch.tensor(0.1), np.float32).dtype, constant(3, np.float64).shape
        (dtype('float32'), ())
    """
    if isinstance(value, Tensor):
        value = value.detach().double().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def power_of_two(scale: Tensor) -> bool:
    """Whether the 0-dim ``scale`` is a power of two.

    Example:
        >>> power_of_two(torch.tensor(0.125)), power_of_two(torch.tensor(0.1))
        (True, False)
    """
    mantissa, _ = torch.frexp(scale.double())
    return float(mantissa) == 0.5


def _range(grid: StateGrid):
    zero_point = int(grid.zero_point)
    return grid.quant_min - zero_point, grid.quant_max - zero_point


def _numpy_dtype(dtype: torch.dtype):
    return np.float32 if dtype == torch.float32 else np.float64


class StepQuantizer:
    """``quantize(y, z, codes, out, mask)``: torch's per-tensor fake quantization of
    ``y`` (``FakeQuantizeCore``: :math:`q = z + \\mathrm{nearbyint}(y \\cdot (1 / s))`,
    clamped, times :math:`s` in float32) into ``out``, with the rounded codes before the
    clamp in ``z`` and the clamped codes in ``codes`` (arrays of the values' dtype), and
    where they are equal (the quantizer passes the gradient) in ``mask`` when given
    (boolean, or 1 and 0 of a floating-point dtype). ``out`` may be ``y``.

    Example:
        >>> grid = StateGrid(torch.tensor(0.25), torch.tensor(0, dtype=torch.int32), -8, 7)
        >>> step = StepQuantizer(grid, torch.float32)
        >>> y = np.array([0.3, 5.0], np.float32)
        >>> z, codes, mask = np.empty(2, np.float32), np.empty(2, np.float32), np.empty(2, bool)
        >>> step(y, z, codes, y, mask), codes, mask
        (array([0.25, 1.75], dtype=float32), array([1., 7.], dtype=float32), array([ True, False]))
    """

    def __init__(self, grid: StateGrid, dtype: torch.dtype) -> None:
        self.dtype = _numpy_dtype(dtype)
        self.scale = grid.scale
        # 1.0f / scale, as the kernel has it, in the values' dtype (exactly).
        self.inverse = constant(torch.reciprocal(grid.scale), self.dtype)
        self.low, self.high = _range(grid)
        bound = max(abs(grid.quant_min), abs(grid.quant_max)) + abs(int(grid.zero_point))
        # The bounds in the values' dtype, as torch converts a Python number.
        self.code_low, self.code_high = (constant(b, self.dtype) for b in (self.low, self.high))
        # The kernel's product in float32 (for float64 values too, then converted).
        self.value_scale = constant(grid.scale, np.float32)
        self.cast = self.dtype != np.float32
        power = power_of_two(grid.scale) and bound < 2**24
        self.exact_codes = bound < 2**21 or power
        self.bound = bound

    def __call__(
        self,
        y: np.ndarray,
        z: np.ndarray,
        codes: np.ndarray,
        out: np.ndarray,
        mask: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        np.multiply(y, self.inverse, out=z)
        np.rint(z, out=z)
        return self.finish(z, codes, out, mask)

    def finish(
        self, z: np.ndarray, codes: np.ndarray, out: np.ndarray, mask: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """The quantization from the rounded codes ``z`` on: clamped into ``codes``, the
        mask, the value into ``out``."""
        clip(z, self.code_low, self.code_high, out=codes)
        if mask is not None:
            np.equal(z, codes, out=mask)
        if self.cast:  # float64 codes, rounded to float32 as the kernel converts them
            return np.multiply(codes, self.value_scale, out=out, dtype=np.float32)
        return np.multiply(codes, self.value_scale, out=out)

    def codes_of(self, value: Tensor) -> Optional[np.ndarray]:
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
        return constant(nearest, self.dtype)


class StepDecay:
    """``decay(y, codes, out)``: :func:`~aquatic.functional.neurons_grid.decay_on_grid`
    of ``y`` into ``out``, with ``codes`` (of the values' dtype) a scratch array; without
    a rule the product ``alpha * y``. :meth:`from_codes` decays a state given by the
    clamped codes of a :class:`StepQuantizer` on the same grid, one rounding fewer.

    Example:
        >>> grid = StateGrid(torch.tensor(0.25), torch.tensor(0, dtype=torch.int32), -64, 63,
        ...                  "bitshift", 0, torch.tensor(3))
        >>> step = StepDecay(grid, torch.tensor(0.875), torch.empty(2))
        >>> codes, out = np.empty(2, np.float32), np.empty(2, np.float32)
        >>> step(np.array([0.75, 12.5], np.float32), codes, out)
        array([ 0.5, 11. ], dtype=float32)
    """

    def __init__(self, grid: Optional[StateGrid], alpha: Tensor, like: Tensor) -> None:
        self.dtype = _numpy_dtype(like.dtype)
        self.alpha = constant(alpha, self.dtype)
        self.rule = grid.rule if grid is not None else ""
        self.exact = False
        if not self.rule:
            return
        self.grid, self.torch_alpha = grid, alpha
        self.low, self.high = (constant(b, self.dtype) for b in _range(grid))
        bound = max(abs(b) for b in _range(grid))
        # Beyond 2**p the codes are not exact: decay_on_grid as it is, in torch.
        self.exact = bound < 2.0 ** SIGNIFICAND[like.dtype]
        if not self.exact:
            return
        self.scale = constant(grid.scale, self.dtype)
        new = lambda dtype: np.empty(tuple(like.shape), dtype)  # noqa: E731
        codes = grid.codes.detach().double().cpu()
        if self.rule == "bitshift":
            # x >> dash = floor(x 2**-dash), exact; the decrement is at least 1 toward zero.
            self.factor = constant(torch.exp2(-codes), self.dtype)
            self.shifted, self.floor = new(self.dtype), new(self.dtype)
            # min(x, 1) against an array: NumPy's minimum with a scalar is a slow loop.
            self.ones = np.ones(tuple(like.shape), self.dtype)
            self.wide = False
        else:
            # (2**bits - d) x >> bits toward zero is trunc(x ((2**bits - d) 2**-bits)):
            # one product, exact where x (2**bits - d) is (below 2**p; float64 otherwise).
            reach = bound * 2.0**grid.bits
            self.wide = reach >= 2.0 ** SIGNIFICAND[like.dtype]
            if self.wide and reach >= 2.0**53:
                self.exact = False
                return
            product = np.float64 if self.wide else self.dtype
            self.keep = constant((2.0**grid.bits - codes) * 2.0**-grid.bits, product)
            self.product = new(product) if self.wide else None

    def __call__(self, y: np.ndarray, codes: np.ndarray, out: np.ndarray) -> np.ndarray:
        if not self.rule:
            return np.multiply(self.alpha, y, out=out)
        if not self.exact:
            state = torch.from_numpy(y)
            out[...] = as_array(decay_on_grid(state, self.torch_alpha, self.grid))
            return out
        np.divide(y, self.scale, out=codes)
        np.rint(codes, out=codes)
        clip(codes, self.low, self.high, out=codes)
        return np.multiply(self.rule_codes(codes, codes), self.scale, out=out)

    def from_codes(self, codes: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The decay of the state ``codes * s`` that a :class:`StepQuantizer` on this
        grid wrote (with ``exact_codes``: its value divided by ``s`` rounds back to
        ``codes``); ``scratch`` of the values' dtype, ``codes`` left as they are."""
        return np.multiply(self.rule_codes(codes, scratch), self.scale, out=out)

    def rule_codes(self, codes: np.ndarray, result: np.ndarray) -> np.ndarray:
        """The decayed codes of ``codes`` into ``result`` (may be ``codes``), for a rule
        within the exact range (a product beyond it formed in float64 first)."""
        if self.rule == "bitshift":
            shifted = np.multiply(codes, self.factor, out=self.shifted)
            np.floor(shifted, out=shifted)
            np.maximum(shifted, np.minimum(codes, self.ones, out=self.floor), out=shifted)
            return np.subtract(codes, shifted, out=result)
        product = np.multiply(codes, self.keep, out=self.product if self.wide else result)
        return np.trunc(product, out=result)  # below 2**p: exact in result's dtype
