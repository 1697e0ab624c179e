r"""Fake quantization's compiled loops: one pass where PyTorch operations take several.

:func:`quantize_span` fake-quantizes with one scale (per tensor): the codes
:math:`\mathrm{rint}(x \cdot (1/s))` (half to even, like ``torch.round``), clamped to
``[low, high]`` (the range moved by the zero point), the values :math:`k\, s + 0` (the
``+ 0`` turns -0.0 into +0.0) and, where asked, the gradient's mask (1 where the code
did not clip). As PyTorch operations
(:func:`~aquatic.functional.fake_quant_nearest.fake_quantize_nearest_scalar`) that is
five passes over the tensor; here it is one.

:func:`observe_rows` is a per-channel weight quantizer's whole training step, row by
row (one output channel per row): the row's extrema, its running range widened by
them (:class:`~aquatic.observers.MinMaxObserver`), the symmetric scale
:math:`\max(-m, M) / n` (:math:`n = \min(q_{max}, -q_{min})`, at least ``eps``) and the
row fake-quantized with it, while the row is still in the first-level cache. As
PyTorch operations that is two reductions, a dozen small operations on the ranges and
four passes (131 µs for a 256 x 784 weight on two threads here; 55 µs here on one).
Its codes need no clamp: the range holds the row, so they lie in :math:`[-n, n]` (see
:meth:`aquatic.quantizers.UniformQuantizer._covers`).

:func:`observe_scalar_at` is a per-tensor quantizer's whole training step: the
tensor's extrema, the observer's range merge (the running minimum and maximum, or the
moving average; :mod:`aquatic.functional.fake_quant_rules`), the scale and zero point
of :func:`~aquatic.functional.qparams.calculate_qparams_float`, then
:func:`quantize_span`.

The extrema use integer keys: a float32's bits ``b`` map to the signed integer
``b ^ ((b >> 31) & 0x7fffffff)``, which orders as the float does (negative floats
have their magnitude bits flipped); integer minima and maxima vectorize where float
ones do not (LLVM's floating-point ``min`` reduction needs fast-math, which would also
license rewriting the quantization's arithmetic). The map is its own inverse, and a
NaN maps beyond the infinities, so it shows up as a non-finite extremum.

The arithmetic is PyTorch's float32 arithmetic in the same order, without fast-math
(:func:`~aquatic.functional.qparams.calculate_qparams`,
:func:`~aquatic.functional.fake_quant_nearest.fake_quantize_nearest`), so the results
are the same bits. :func:`quantize_span` and :func:`observe_rows` also have C entry
points (:func:`entry`) that run shares of one call on PyTorch's OpenMP team.

Importing this module imports Numba (optional); :mod:`aquatic.functional.fake_quant_jit`
imports it on first use.
"""

from __future__ import annotations

import numpy as np

from aquatic.functional.fake_quant_rules import AVERAGE, MIN_MAX
from aquatic.functional.jit_pointers import address, claim
from aquatic.functional.neurons_jit_kernels import inline, jit, numba

__all__ = [
    "WORDS", "quantize_span", "quantize_at",
    "observe_rows", "observe_rows_at", "observe_scalar_at", "entry",
]  # fmt: skip

#: Words of a descriptor (``int64``) of a call shared out on threads (:func:`entry`):
#: a counter, the shares, the addresses of ``x``, ``out``, the mask, the running
#: ``min`` and ``max`` and their new values, ``rows``, ``cols``, the address of the
#: shares' status (``int64``) and of the float64 constants (``scale``, its float32
#: reciprocal, ``low``, ``high`` and whether to write the mask; or ``limit``,
#: ``levels`` and ``eps``).
WORDS = 13

if numba is not None:
    _FLIP = np.int32(0x7FFFFFFF)

    @jit
    def quantize_span(x, out, mask, first, last, scale, inv, low, high, masked):
        """``x[first:last]`` (flat float32) fake-quantized into ``out``, with the
        gradient's mask (1.0 where the code lies in ``[low, high]``, else 0.0) into
        ``mask`` where ``masked``. ``scale``, ``inv`` (its float32 reciprocal), ``low``
        and ``high`` are float32; a NaN stays NaN (and masked), as in ``torch.clamp``."""
        src, dst = x[first:last], out[first:last]  # from 0: no check of negative indices
        zero, one = np.float32(0.0), np.float32(1.0)
        if masked:
            gate = mask[first:last]
            for k in range(src.shape[0]):
                code = np.rint(src[k] * inv)
                kept = code
                if kept < low:
                    kept = low
                if kept > high:
                    kept = high
                gate[k] = one if code == kept else zero
                dst[k] = kept * scale + zero
        else:
            for k in range(src.shape[0]):
                code = np.rint(src[k] * inv)
                if code < low:
                    code = low
                if code > high:
                    code = high
                dst[k] = code * scale + zero

    @jit
    def quantize_at(x, out, mask, size, scale, inv, low, high, masked):
        """:func:`quantize_span` over all ``size`` values at the addresses ``x``,
        ``out`` and ``mask``: integers, which Numba takes with less work than arrays."""
        f32 = np.float32
        # fmt: off
        quantize_span(numba.carray(address(x), (size,), f32),
                      numba.carray(address(out), (size,), f32),
                      numba.carray(address(mask), (size if masked else 0,), f32),
                      0, size, f32(scale), f32(inv), f32(low), f32(high), masked)
        # fmt: on

    @inline
    def _extrema(row, bits):
        """The smallest and largest float32 of ``row`` (its bits, ``int32``), NaN beyond
        the infinities; ``bits``: a scratch ``int32`` pair."""
        low = np.int32(0x7FFFFFFF)
        high = np.int32(-0x80000000)
        for k in range(row.shape[0]):
            b = row[k]
            key = b ^ ((b >> 31) & _FLIP)
            low = min(low, key)
            high = max(high, key)
        bits[0] = low ^ ((low >> 31) & _FLIP)
        bits[1] = high ^ ((high >> 31) & _FLIP)
        pair = bits.view(np.float32)
        return pair[0], pair[1]

    @jit
    def observe_rows(x, out, run_min, run_max, new_min, new_max, first, last, limit, levels, eps):
        """Rows ``first:last`` of ``x`` ``(C, K)`` (float32, C-contiguous): each row's
        range ``[run_min, run_max]`` widened by its extrema into ``new_min``,
        ``new_max`` ``(C,)``, and the row fake-quantized with it into ``out``. Returns
        whether every extremum was finite and at most ``limit`` (it stops at the first
        that is not). ``levels``: :math:`n`; ``eps``: the smallest scale."""
        keys = x.view(np.int32)
        bits = np.empty(2, np.int32)
        n = np.float32(levels)
        smallest = np.float32(eps)
        for c in range(first, last):
            lo, hi = _extrema(keys[c], bits)
            if not (hi <= limit and -lo <= limit):  # NaN compares False
                return False
            lo = min(run_min[c], lo)
            hi = max(run_max[c], hi)
            new_min[c], new_max[c] = lo, hi
            scale = max(-lo, hi) / n
            if scale < smallest:
                scale = smallest
            inv = np.float32(1.0) / scale
            src, dst = x[c], out[c]
            for k in range(src.shape[0]):
                dst[k] = np.rint(src[k] * inv) * scale + np.float32(0.0)
        return True

    @jit
    def observe_rows_at(x, out, run_min, run_max, rows, cols, limit, levels, eps):
        """:func:`observe_rows` over every row, at addresses (``x``, ``out``: ``rows`` x
        ``cols``; ``run_min``, ``run_max``: ``rows``), the running range widened in place
        only where every extremum passed (``out`` is undefined where one did not)."""
        f32 = np.float32
        x_ = numba.carray(address(x), (rows, cols), f32)
        out_ = numba.carray(address(out), (rows, cols), f32)
        low = numba.carray(address(run_min), (rows,), f32)
        high = numba.carray(address(run_max), (rows,), f32)
        new_min, new_max = np.empty(rows, f32), np.empty(rows, f32)
        if not observe_rows(x_, out_, low, high, new_min, new_max, 0, rows, limit, levels, eps):
            return False
        low[:] = new_min
        high[:] = new_max
        return True

    @inline
    def _merged(cur, old, rule, factor):
        """``cur`` merged into ``old`` by ``rule`` (float32, as the observers'
        ``_combine_float``); ``factor``: :math:`c`, or :math:`1 - c`."""
        if rule == AVERAGE:
            return old + (cur - old) * factor
        return cur - (cur - old) * factor

    @jit
    def observe_scalar_at(
        x, out, mask, size, run_min, run_max, rule, factor, initialized, symmetric,
        quant_min, quant_max, limit, eps, masked,
    ):  # fmt: skip
        """One range observed from ``size`` float32 values at address ``x``, and its
        qparams: the per-tensor steps of :meth:`aquatic.observers.RangeObserver.update_scalar`
        and :func:`~aquatic.functional.qparams.calculate_qparams_float`, in their float32
        arithmetic. The running range (one float32 each at ``run_min`` and ``run_max``)
        is merged with the extrema by ``rule`` (``factor``: the average's :math:`c` or
        :math:`1 - c`), or set to them where not ``initialized``.

        Then :func:`quantize_span` of the ``size`` values into ``out`` (and the mask
        into ``mask`` where ``masked``; addresses) with that scale and zero point.
        Returns whether the extrema were finite and at most ``limit`` (else nothing is
        written)."""
        f32 = np.float32
        zero = f32(0.0)
        keys = numba.carray(address(x), (size,), np.int32)
        low_at = numba.carray(address(run_min), (1,), f32)
        high_at = numba.carray(address(run_max), (1,), f32)
        lo, hi = _extrema(keys, np.empty(2, np.int32))
        if not (hi <= limit and -lo <= limit):  # NaN compares False
            return False
        new_lo, new_hi = lo, hi
        if initialized and rule == MIN_MAX:
            new_lo, new_hi = min(low_at[0], lo), max(high_at[0], hi)
        elif initialized:
            new_lo = _merged(lo, low_at[0], rule, f32(factor))
            new_hi = _merged(hi, high_at[0], rule, f32(factor))
        low_at[0], high_at[0] = new_lo, new_hi
        zero_point = 0
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
        inv = f32(1.0) / scale
        values = numba.carray(address(x), (size,), f32)
        # fmt: off
        quantize_span(values, numba.carray(address(out), (size,), f32),
                      numba.carray(address(mask), (size if masked else 0,), f32), 0, size,
                      scale, inv, f32(quant_min - zero_point), f32(quant_max - zero_point),
                      masked)
        # fmt: on
        return True

    @jit
    def commit(run_min, run_max, scratch, rows):
        """Copy ``rows`` float32 values from ``scratch`` to ``run_min`` and the next
        ``rows`` to ``run_max`` (addresses)."""
        f32 = np.float32
        new = numba.carray(address(scratch), (2 * rows,), f32)
        numba.carray(address(run_min), (rows,), f32)[:] = new[:rows]
        numba.carray(address(run_max), (rows,), f32)[:] = new[rows:]

    @inline
    def _share(total, part, parts):
        return total * part // parts, total * (part + 1) // parts

    def _rows_entry(data):
        """Claim shares of rows until none is left: :func:`observe_rows` on each."""
        d = numba.carray(data, (WORDS,), np.int64)
        rows, cols, f32 = d[9], d[10], np.float32
        status = numba.carray(address(d[11]), (d[1],), np.int64)
        c = numba.carray(address(d[12]), (3,), np.float64)
        arrays = [numba.carray(address(d[k]), (rows,), f32) for k in range(5, 9)]
        x = numba.carray(address(d[2]), (rows, cols), f32)
        out = numba.carray(address(d[3]), (rows, cols), f32)
        part = claim(d)
        while part < d[1]:
            first, last = _share(rows, part, d[1])
            # fmt: off
            status[part] = observe_rows(x, out, arrays[0], arrays[1], arrays[2], arrays[3],
                                        first, last, c[0], int(c[1]), c[2])
            # fmt: on
            part = claim(d)

    def _quantize_entry(data):
        """Claim spans of the flat ``x`` until none is left: :func:`quantize_span`."""
        d = numba.carray(data, (WORDS,), np.int64)
        size, parts, f32 = d[9] * d[10], d[1], np.float32
        c = numba.carray(address(d[12]), (5,), np.float64)
        masked = c[4] != 0.0
        x = numba.carray(address(d[2]), (size,), f32)
        out = numba.carray(address(d[3]), (size,), f32)
        mask = numba.carray(address(d[4]), (size if masked else 0,), f32)
        part = claim(d)
        while part < parts:
            first, last = _share(size, part, parts)
            # fmt: off
            quantize_span(x, out, mask, first, last, f32(c[0]), f32(c[1]), f32(c[2]),
                          f32(c[3]), masked)
            # fmt: on
            part = claim(d)

    _ENTRIES = {"rows": _rows_entry, "quantize": _quantize_entry}

else:  # pragma: no cover
    quantize_span = quantize_at = observe_rows = observe_rows_at = commit = None
    observe_scalar_at = None
    _ENTRIES = {}

_ADDRESSES = {}


def entry(name: str) -> int:
    """The address of the C function ``void f(int64_t *descriptor)`` (:data:`WORDS`)
    that runs shares of the call ``name`` (``"rows"``: :func:`observe_rows`;
    ``"quantize"``: :func:`quantize_span`) until the descriptor's counter reaches its
    number of shares, for every thread of an OpenMP team to call
    (:func:`aquatic.functional.jit_openmp.run_on_team`); compiled on first use (cached
    on disk).

    Example:
        >>> entry("quantize") > 0 and entry("quantize") == entry("quantize")
        True
    """
    if name not in _ADDRESSES:
        signature = numba.types.void(numba.types.voidptr)
        compiled = numba.cfunc(signature, cache=True, error_model="numpy")(_ENTRIES[name])
        _ADDRESSES[name] = compiled.address
    return _ADDRESSES[name]
