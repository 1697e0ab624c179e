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

The extrema and the range's merge, scale and zero point come from
:mod:`aquatic.functional.jit_ranges`.

The arithmetic is PyTorch's float32 arithmetic in the same order, without fast-math
(:func:`~aquatic.functional.qparams.calculate_qparams`,
:func:`~aquatic.functional.fake_quant_nearest.fake_quantize_nearest`), so the results
are the same bits. :mod:`aquatic.functional.jit_fake_quant_team` runs shares of one
call of them on PyTorch's OpenMP team.

Importing this module imports Numba (optional); :mod:`aquatic.functional.fake_quant_jit`
imports it on first use.
"""

from __future__ import annotations

import numpy as np

from aquatic.functional.fake_quant_outputs import BYTE_MASK, NO_MASK
from aquatic.functional.jit_pointers import address
from aquatic.functional.jit_ranges import extrema, scalar_qparams
from aquatic.functional.neurons_jit_kernels import inline, jit, numba

__all__ = [
    "quantize_span", "quantize_span_here", "quantize_into", "quantize_at",
    "mask_product_span", "mask_product_at", "observe_rows", "observe_rows_at",
    "observe_scalar_at", "commit", "same_bits_at",
]  # fmt: skip

if numba is not None:

    @inline
    def _quantize_loop(src, dst, gate, scale, inv, low, high, masked):
        """The loop of :func:`quantize_span` over all of ``src`` into ``dst`` (and
        ``gate``, where ``masked``): inlined, so that where ``dst`` is ``src`` itself
        the compiled loop reads and writes one array."""
        zero = np.float32(0.0)
        if masked:
            for k in range(src.shape[0]):
                code = np.rint(src[k] * inv)
                kept = code
                if kept < low:
                    kept = low
                if kept > high:
                    kept = high
                gate[k] = code == kept
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
    def quantize_span(x, out, mask, first, last, scale, inv, low, high, masked):
        """``x[first:last]`` (flat float32) fake-quantized into ``out``, with the
        gradient's mask (1 where the code lies in ``[low, high]``, else 0; float32 or
        ``uint8``) into ``mask`` where ``masked``. ``scale``, ``inv`` (its float32
        reciprocal), ``low`` and ``high`` are float32; a NaN stays NaN (and masked), as
        in ``torch.clamp``."""
        # from 0: no check of negative indices; an unread mask is empty
        gate = mask[first:last]
        _quantize_loop(x[first:last], out[first:last], gate, scale, inv, low, high, masked)

    @jit
    def quantize_span_here(x, mask, first, last, scale, inv, low, high, masked):
        """:func:`quantize_span` with the values written over ``x`` itself: one array
        read and written (given as two views of the same memory, LLVM's check that they
        do not overlap would send the loop to its unvectorized version). On one thread,
        802,816 values just written: 159 µs, against 283 µs into a new array.

        Shape:
            - x: ``(n,)`` float32; mask: ``(n,)`` (``uint8`` or float32), or empty.

        Example:
            >>> x = np.array([0.26, -3.0, 9.0], np.float32)
            >>> mask, f32 = np.zeros(3, np.uint8), np.float32
            >>> quantize_span_here(x, mask, 0, 3, f32(0.1), f32(10.0), f32(-8.0), f32(7.0), True)
            >>> x, mask
            (array([ 0.3, -0.8,  0.7], dtype=float32), array([1, 0, 0], dtype=uint8))
        """
        src = x[first:last]
        _quantize_loop(src, src, mask[first:last], scale, inv, low, high, masked)

    @inline
    def quantize_into(x, out, mask, kind, first, last, scale, inv, low, high):
        """:func:`quantize_span` of ``x[first:last]`` (flat float32 arrays) with the mask
        at the address ``mask``, of ``kind``
        (:mod:`~aquatic.functional.fake_quant_outputs`: ``NO_MASK``, ``FLOAT_MASK`` or
        ``BYTE_MASK``).

        Shape:
            - x, out: ``(n,)`` float32; the mask: ``n`` values of its kind.

        Example:
            >>> from aquatic.functional.fake_quant_outputs import BYTE_MASK
            >>> x = np.array([0.26, -3.0, 9.0], np.float32)
            >>> out, mask = np.empty_like(x), np.zeros(3, np.uint8)
            >>> f32 = np.float32
            >>> quantize_into(x, out, mask.ctypes.data, BYTE_MASK, 0, 3, f32(0.1), f32(10.0),
            ...               f32(-8.0), f32(7.0))
            >>> out, mask
            (array([ 0.3, -0.8,  0.7], dtype=float32), array([1, 0, 0], dtype=uint8))
        """
        size = x.shape[0]
        here = x.ctypes.data == out.ctypes.data  # in place: quantize_span_here
        if kind == BYTE_MASK:
            gate = numba.carray(address(mask), (size,), np.uint8)
            if here:
                quantize_span_here(x, gate, first, last, scale, inv, low, high, True)
            else:
                quantize_span(x, out, gate, first, last, scale, inv, low, high, True)
        else:
            flags = numba.carray(address(mask), (size if kind else 0,), np.float32)
            masked = kind != NO_MASK
            if here:
                quantize_span_here(x, flags, first, last, scale, inv, low, high, masked)
            else:
                quantize_span(x, out, flags, first, last, scale, inv, low, high, masked)

    @jit
    def quantize_at(x, out, mask, size, scale, inv, low, high, kind):
        """:func:`quantize_span` over all ``size`` values at the addresses ``x``,
        ``out`` and ``mask`` (of ``kind``, :func:`quantize_into`): integers, which Numba
        takes with less work than arrays."""
        f32 = np.float32
        # fmt: off
        quantize_into(numba.carray(address(x), (size,), f32),
                      numba.carray(address(out), (size,), f32), mask, kind, 0, size,
                      f32(scale), f32(inv), f32(low), f32(high))
        # fmt: on

    @jit
    def mask_product_span(grad, mask, out, first, last):
        """``out[first:last] = grad * mask`` (float32 arrays, the mask ``uint8``): the
        float32 product with the mask's 0.0 or 1.0, as PyTorch's product gives it
        (``-0.0`` for a negative gradient where the mask is 0, NaN kept).

        Shape:
            - grad, mask, out: ``(n,)``.

        Example:
            >>> grad = np.array([-2.0, 3.0, np.nan], np.float32)
            >>> out = np.empty_like(grad)
            >>> mask_product_span(grad, np.array([0, 1, 0], np.uint8), out, 0, 3)
            >>> out
            array([-0.,  3., nan], dtype=float32)
        """
        g, m, o = grad[first:last], mask[first:last], out[first:last]
        for k in range(g.shape[0]):
            o[k] = g[k] * np.float32(m[k])

    @jit
    def mask_product_at(grad, mask, out, size):
        """:func:`mask_product_span` over all ``size`` values at the addresses.

        Example:
            >>> grad, mask = np.array([1.5, -1.0], np.float32), np.array([1, 0], np.uint8)
            >>> out = np.empty_like(grad)
            >>> mask_product_at(grad.ctypes.data, mask.ctypes.data, out.ctypes.data, 2)
            >>> out
            array([ 1.5, -0. ], dtype=float32)
        """
        # fmt: off
        mask_product_span(numba.carray(address(grad), (size,), np.float32),
                          numba.carray(address(mask), (size,), np.uint8),
                          numba.carray(address(out), (size,), np.float32), 0, size)
        # fmt: on

    @jit
    def observe_rows(x, out, run_min, run_max, new_min, new_max, first, last, limit, levels, eps):
        """Rows ``first:last`` of ``x`` ``(C, K)`` (float32, C-contiguous): each row's
        range ``[run_min, run_max]`` widened by its extrema into ``new_min``,
        ``new_max`` ``(C,)``, and the row fake-quantized with it into ``out`` (which
        may be ``x`` itself: a copy quantized in place, as one array). Returns
        whether every extremum was finite and at most ``limit`` (it stops at the first
        that is not). ``levels``: :math:`n`; ``eps``: the smallest scale."""
        keys = x.view(np.int32)
        bits = np.empty(2, np.int32)
        here = x.ctypes.data == out.ctypes.data  # a copy quantized in place
        n = np.float32(levels)
        smallest = np.float32(eps)
        for c in range(first, last):
            lo, hi = extrema(keys[c], bits)
            if not (hi <= limit and -lo <= limit):  # NaN compares False
                return False
            lo = min(run_min[c], lo)
            hi = max(run_max[c], hi)
            new_min[c], new_max[c] = lo, hi
            scale = max(-lo, hi) / n
            if scale < smallest:
                scale = smallest
            inv = np.float32(1.0) / scale
            src = x[c]
            if here:  # one array: two views of it would not vectorize
                for k in range(src.shape[0]):
                    src[k] = np.rint(src[k] * inv) * scale + np.float32(0.0)
            else:
                dst = out[c]
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

    @jit
    def observe_scalar_at(
        x, out, mask, size, run_min, run_max, rule, factor, initialized, symmetric,
        quant_min, quant_max, limit, eps, kind,
    ):  # fmt: skip
        """One range observed from ``size`` float32 values at address ``x``, and its
        qparams: the per-tensor steps of
        :meth:`aquatic.observers.RangeObserver.update_scalar` and
        :func:`~aquatic.functional.qparams.calculate_qparams_float`, in their float32
        arithmetic (:func:`~aquatic.functional.jit_ranges.scalar_qparams`). The running
        range (one float32 each at ``run_min`` and ``run_max``) is merged with the
        extrema by ``rule`` (``factor``: the average's :math:`c` or :math:`1 - c`), or
        set to them where not ``initialized``.

        Then :func:`quantize_span` of the ``size`` values into ``out`` (and the mask
        into ``mask``, of ``kind``, :func:`quantize_into`; addresses) with that scale
        and zero point. Returns whether the extrema were finite and at most ``limit``
        (else nothing is written)."""
        f32 = np.float32
        keys = numba.carray(address(x), (size,), np.int32)
        low_at = numba.carray(address(run_min), (1,), f32)
        high_at = numba.carray(address(run_max), (1,), f32)
        lo, hi = extrema(keys, np.empty(2, np.int32))
        if not (hi <= limit and -lo <= limit):  # NaN compares False
            return False
        # fmt: off
        new_lo, new_hi, scale, zero_point = scalar_qparams(
            lo, hi, low_at[0], high_at[0], rule, factor, initialized, symmetric, quant_min,
            quant_max, eps,
        )
        low_at[0], high_at[0] = new_lo, new_hi
        values = numba.carray(address(x), (size,), f32)
        quantize_into(values, numba.carray(address(out), (size,), f32), mask, kind, 0, size,
                      scale, f32(1.0) / scale, f32(quant_min - zero_point),
                      f32(quant_max - zero_point))
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

    @jit
    def same_bits_at(a, b, size):
        """Whether ``size`` 32-bit words at the addresses ``a`` and ``b`` are the same
        bits: one pass, the words' differences or-ed together (which vectorizes, where
        a loop that stops at the first difference does not: 16 µs against 78 µs for
        200,704 values here)."""
        i32 = np.int32
        left = numba.carray(address(a), (size,), i32)
        right = numba.carray(address(b), (size,), i32)
        diff = i32(0)
        for k in range(size):
            diff = i32(diff | i32(left[k] ^ right[k]))
        return diff == 0

else:  # pragma: no cover
    _quantize_loop = quantize_span = quantize_span_here = quantize_into = quantize_at = None
    observe_rows = observe_rows_at = None
    observe_scalar_at = commit = mask_product_span = mask_product_at = same_bits_at = None
