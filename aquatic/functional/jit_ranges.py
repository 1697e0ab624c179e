r"""A per-tensor range in compiled code: a tensor's extrema, and a running range's
merge, scale and zero point.

The extrema use integer keys (:func:`extrema_keys`): a float32's bits ``b`` map to the
signed integer ``b ^ ((b >> 31) & 0x7fffffff)``, which orders as the float does
(negative floats have their magnitude bits flipped); integer minima and maxima
vectorize where float ones do not (LLVM's floating-point ``min`` reduction needs
fast-math, which would also license rewriting the quantization's arithmetic). The map
is its own inverse (:func:`key_floats`), and a NaN maps beyond the infinities, so it
shows up as a non-finite extremum. Keys of parts of a tensor merge with integer
``min`` and ``max``, exactly, NaN included.

:func:`scalar_qparams` is the per-tensor observer's step after the extrema: the
running range merged by the observer's rule
(:mod:`aquatic.functional.fake_quant_rules`), then its scale and zero point, in the
float32 arithmetic of :meth:`aquatic.observers.RangeObserver.update_scalar` and
:func:`~aquatic.functional.qparams.calculate_qparams_float`, so the same bits.

Only compiled code calls these (Numba inlines them); importing this module imports
Numba (optional).
"""

from __future__ import annotations

import numpy as np

from aquatic.functional.fake_quant_rules import AVERAGE, MIN_MAX
from aquatic.functional.neurons_jit_kernels import inline, numba

__all__ = ["extrema_keys", "key_floats", "extrema", "scalar_qparams"]

if numba is not None:
    _FLIP = np.int32(0x7FFFFFFF)

    @inline
    def extrema_keys(row):
        """The smallest and largest integer keys of ``row`` (a float32's bits as
        ``int32``): the order of the floats, NaN beyond the infinities.

        Shape:
            - row: ``(n,)`` ``int32`` (float32 bits); output: two ``int32`` keys.

        Example:
            >>> x = np.array([0.5, -2.0, 3.0, -0.0], np.float32)
            >>> low, high = extrema_keys(x.view(np.int32))
            >>> key_floats(low, high, np.empty(2, np.int32))
            (-2.0, 3.0)
        """
        low = np.int32(0x7FFFFFFF)
        high = np.int32(-0x80000000)
        for k in range(row.shape[0]):
            b = row[k]
            # int32 again: Numba widens int32 arithmetic to int64, and a loop of
            # int64 keys vectorizes at half the width (3x slower measured here)
            key = np.int32(b ^ ((b >> 31) & _FLIP))
            low = min(low, key)
            high = max(high, key)
        return low, high

    @inline
    def key_floats(low, high, bits):
        """The float32 values of two keys; ``bits``: a scratch ``int32`` pair. The map of
        :func:`extrema_keys` is its own inverse.

        Example:
            >>> keys = np.array([-1.5, 2.0], np.float32).view(np.int32)
            >>> key_floats(*extrema_keys(keys), np.empty(2, np.int32))
            (-1.5, 2.0)
        """
        bits[0] = low ^ ((low >> 31) & _FLIP)
        bits[1] = high ^ ((high >> 31) & _FLIP)
        pair = bits.view(np.float32)
        return pair[0], pair[1]

    @inline
    def extrema(row, bits):
        """The smallest and largest float32 of ``row`` (its bits, ``int32``), NaN beyond
        the infinities; ``bits``: a scratch ``int32`` pair.

        Shape:
            - row: ``(n,)`` ``int32`` (float32 bits); output: two float32 values.

        Example:
            >>> x = np.array([1.0, np.inf, -4.0], np.float32)
            >>> extrema(x.view(np.int32), np.empty(2, np.int32))
            (-4.0, inf)
            >>> x[0] = np.nan  # beyond the infinities: a non-finite extremum
            >>> extrema(x.view(np.int32), np.empty(2, np.int32))
            (-4.0, nan)
        """
        low, high = extrema_keys(row)
        return key_floats(low, high, bits)

    @inline
    def _merged(cur, old, rule, factor):
        """``cur`` merged into ``old`` by ``rule`` (float32, as the observers'
        ``_combine_float``); ``factor``: :math:`c`, or :math:`1 - c`."""
        if rule == AVERAGE:
            return old + (cur - old) * factor
        return cur - (cur - old) * factor

    @inline
    def scalar_qparams(
        lo, hi, old_lo, old_hi, rule, factor, initialized, symmetric, quant_min, quant_max, eps
    ):  # fmt: skip
        """The running range merged with the extrema ``lo``, ``hi`` by ``rule``
        (``factor``: the average's :math:`c` or :math:`1 - c`), or set to them where not
        ``initialized``, and its scale and zero point: ``(new_lo, new_hi, scale,
        zero_point)``, the float32 arithmetic of the observers' ``update_scalar`` and of
        :func:`~aquatic.functional.qparams.calculate_qparams_float`.

        Example:
            >>> from aquatic.functional.fake_quant_rules import MIN_MAX
            >>> from aquatic.functional.qparams import calculate_qparams_float
            >>> f32 = np.float32
            >>> step = scalar_qparams(f32(-1.0), f32(3.0), f32(-2.0), f32(2.0), MIN_MAX, 0.0,
            ...                       True, False, 0, 255, 1.1920929e-07)
            >>> step[:2], step[2:] == calculate_qparams_float(-2.0, 3.0, 0, 255, False)
            ((-2.0, 3.0), True)
        """
        f32 = np.float32
        zero = f32(0.0)
        new_lo, new_hi = lo, hi
        if initialized and rule == MIN_MAX:
            new_lo, new_hi = min(old_lo, lo), max(old_hi, hi)
        elif initialized:
            new_lo = _merged(lo, old_lo, rule, f32(factor))
            new_hi = _merged(hi, old_hi, rule, f32(factor))
        zero_point = 0
        min_neg = zero
        if symmetric and quant_min < 0:
            scale = max(-new_lo, new_hi) / f32(min(quant_max, -quant_min))
        elif symmetric:
            scale = new_hi / f32(quant_max)
        else:
            min_neg, max_pos = min(new_lo, zero), max(new_hi, zero)
            levels = f32(quant_max - quant_min)
            scale = (max_pos - min_neg) / levels
            if np.isinf(scale):  # the range overflows float32: each end divided first
                scale = max_pos / levels - min_neg / levels
        scale = max(scale, f32(eps))
        if not symmetric:
            zero_point = quant_min - int(np.rint(min_neg / scale))
            zero_point = min(max(zero_point, quant_min), quant_max)
        return new_lo, new_hi, scale, zero_point

else:  # pragma: no cover
    extrema_keys = key_floats = extrema = scalar_qparams = None
