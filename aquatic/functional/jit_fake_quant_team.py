"""C entry points of fake quantization's compiled loops
(:mod:`aquatic.functional.jit_fake_quant`), which run shares of one call on PyTorch's
OpenMP team (:func:`aquatic.functional.jit_openmp.run_on_team`): every thread of the
team calls the entry point with one descriptor (:data:`WORDS`) and claims shares by an
atomic increment of its counter until none is left, so a team of any size runs every
share once.

- ``"quantize"``: :func:`~aquatic.functional.jit_fake_quant.quantize_span` on spans of
  the flat tensor;
- ``"product"``: a gradient times its ``uint8`` mask
  (:func:`~aquatic.functional.jit_fake_quant.mask_product_span`) on spans;
- ``"rows"``: :func:`~aquatic.functional.jit_fake_quant.observe_rows` on blocks of rows;
- ``"scalar"``: a per-tensor observer's step
  (:func:`~aquatic.functional.jit_fake_quant.observe_scalar_at`) in two phases: each
  thread takes the extrema of the spans it claims; once every span has them, each
  thread merges them, computes the scale and zero point and quantizes the spans it
  read, while they are still in its cache.

Importing this module imports Numba (optional); :mod:`aquatic.functional.fake_quant_jit`
imports it on first use.
"""

from __future__ import annotations

import numpy as np

from aquatic.functional.jit_fake_quant import mask_product_span, observe_rows, quantize_into
from aquatic.functional.jit_pointers import add_at, address, call_int, claim
from aquatic.functional.jit_ranges import extrema_keys, key_floats, scalar_qparams
from aquatic.functional.neurons_jit_kernels import inline, numba

__all__ = ["WORDS", "SPINS", "entry"]

#: Words of a descriptor (``int64``) of a call shared out on threads (:func:`entry`):
#: a counter, the shares, the addresses of ``x``, ``out``, the mask, the running
#: ``min`` and ``max`` and their new values (or the spans' keys), ``rows``, ``cols``,
#: the address of the shares' status (``int64``) and of the float64 constants
#: (``scale``, its float32 reciprocal, ``low``, ``high`` and the mask's kind,
#: :mod:`~aquatic.functional.fake_quant_outputs`; or ``limit``, ``levels`` and
#: ``eps``; or the nine of ``"scalar"``), and the address of the C library's
#: ``sched_yield`` (0 where there is none).
WORDS = 14
#: Rounds a thread of ``"scalar"`` waits for the others' extrema before it yields its
#: core at each further round, to a thread that shares the core where there are more
#: threads than cores (GNU OpenMP's own waits spin 100 to 1000 rounds there before
#: they sleep, by its manual's ``GOMP_SPINCOUNT``). Measured with two threads on one
#: core (``taskset -c 0``), a 200,000-value step took 76 to 80 µs (median of 300) with
#: 64, 1024 or 4096 rounds, against 64 µs in one call on one thread, and 35 µs shared
#: out on two cores.
SPINS = 1024

if numba is not None:

    @inline
    def _share(total, part, parts):
        return total * part // parts, total * (part + 1) // parts

    def _rows_entry(data):
        """Claim shares of rows until none is left:
        :func:`~aquatic.functional.jit_fake_quant.observe_rows` on each."""
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
        """Claim spans of the flat ``x`` until none is left:
        :func:`~aquatic.functional.jit_fake_quant.quantize_into` (the mask's kind in
        constant 4)."""
        d = numba.carray(data, (WORDS,), np.int64)
        size, parts, f32 = d[9] * d[10], d[1], np.float32
        c = numba.carray(address(d[12]), (5,), np.float64)
        kind = int(c[4])
        x = numba.carray(address(d[2]), (size,), f32)
        out = numba.carray(address(d[3]), (size,), f32)
        part = claim(d)
        while part < parts:
            first, last = _share(size, part, parts)
            # fmt: off
            quantize_into(x, out, d[4], kind, first, last, f32(c[0]), f32(c[1]), f32(c[2]),
                          f32(c[3]))
            # fmt: on
            part = claim(d)

    def _scalar_entry(data):
        """:func:`~aquatic.functional.jit_fake_quant.observe_scalar_at` shared out:
        each thread claims spans of the flat ``x`` and takes their extrema (integer
        keys, into the scratch); once every span has its keys (a wait on the count of
        finished spans: every span is claimed by a running thread, so it ends), each
        thread merges them, and where they pass the limit computes the qparams
        (:func:`~aquatic.functional.jit_ranges.scalar_qparams`) and quantizes the spans
        it read, still in its cache. The thread that finishes the last span writes the
        running range, after every thread has read it, and sets the result word.

        Words: 7 and 8, the spans' lowest and highest keys (``int32``, one per span);
        10, the size; 11, three ``int64`` counts (spans with keys, spans quantized, the
        result: 1 where the range was written); 12, nine constants (the rule, its
        factor, ``initialized``, ``symmetric``, ``quant_min``, ``quant_max``, the limit,
        ``eps``, the mask's kind); 13, ``sched_yield`` (:data:`SPINS`)."""
        d = numba.carray(data, (WORDS,), np.int64)
        parts, size, f32 = d[1], d[10], np.float32
        counts = numba.carray(address(d[11]), (3,), np.int64)
        c = numba.carray(address(d[12]), (9,), np.float64)
        lows = numba.carray(address(d[7]), (parts,), np.int32)
        highs = numba.carray(address(d[8]), (parts,), np.int32)
        keys = numba.carray(address(d[2]), (size,), np.int32)
        mine = np.empty(parts, np.int64)
        count = 0
        part = claim(d)
        while part < parts:
            first, last = _share(size, part, parts)
            lows[part], highs[part] = extrema_keys(keys[first:last])
            mine[count] = part
            count += 1
            add_at(counts, 0, 1)
            part = claim(d)
        if count == 0:
            return
        rounds = 0
        while add_at(counts, 0, 0) < parts:
            rounds += 1
            if rounds > SPINS and d[13] != 0:
                call_int(d[13])
        low, high = lows[0], highs[0]
        for k in range(1, parts):
            low, high = min(low, lows[k]), max(high, highs[k])
        lo, hi = key_floats(low, high, np.empty(2, np.int32))
        if not (hi <= c[6] and -lo <= c[6]):  # NaN compares False
            return
        low_at = numba.carray(address(d[5]), (1,), f32)
        high_at = numba.carray(address(d[6]), (1,), f32)
        quant_min, quant_max = int(c[4]), int(c[5])
        # fmt: off
        new_lo, new_hi, scale, zero_point = scalar_qparams(
            lo, hi, low_at[0], high_at[0], int(c[0]), c[1], c[2] != 0.0, c[3] != 0.0,
            quant_min, quant_max, c[7],
        )
        # fmt: on
        kind = int(c[8])
        x = numba.carray(address(d[2]), (size,), f32)
        out = numba.carray(address(d[3]), (size,), f32)
        inv, low_code, high_code = (
            f32(1.0) / scale,
            f32(quant_min - zero_point),
            f32(quant_max - zero_point),
        )
        for k in range(count):
            first, last = _share(size, mine[k], parts)
            quantize_into(x, out, d[4], kind, first, last, scale, inv, low_code, high_code)
            if add_at(counts, 1, 1) == parts - 1:
                low_at[0], high_at[0] = new_lo, new_hi
                counts[2] = 1

    def _product_entry(data):
        """Claim spans of the flat gradient (word 2) until none is left:
        :func:`~aquatic.functional.jit_fake_quant.mask_product_span` with the ``uint8``
        mask (word 4) into ``out`` (word 3); word 10: the size."""
        d = numba.carray(data, (WORDS,), np.int64)
        size, parts = d[10], d[1]
        grad = numba.carray(address(d[2]), (size,), np.float32)
        out = numba.carray(address(d[3]), (size,), np.float32)
        mask = numba.carray(address(d[4]), (size,), np.uint8)
        part = claim(d)
        while part < parts:
            first, last = _share(size, part, parts)
            mask_product_span(grad, mask, out, first, last)
            part = claim(d)

    _ENTRIES = {
        "rows": _rows_entry,
        "quantize": _quantize_entry,
        "scalar": _scalar_entry,
        "product": _product_entry,
    }

else:  # pragma: no cover
    _ENTRIES = {}

_ADDRESSES = {}


def entry(name: str) -> int:
    """The address of the C function ``void f(int64_t *descriptor)`` (:data:`WORDS`)
    that runs shares of the call ``name`` (see the module docstring) until the
    descriptor's counter reaches its number of shares, for every thread of an OpenMP
    team to call
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
