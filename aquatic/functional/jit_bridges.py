"""C entry points of the compiled loops, for OpenMP threads to run shares of their jobs.

:mod:`aquatic.functional.jit_openmp` hands each entry point (a Numba ``cfunc`` taking
one ``void *``) to the OpenMP runtime's ``GOMP_parallel``, which calls it on every
thread of a team. The pointer is a descriptor, an ``int64`` array: a counter, the number
of shares, the loop's item size (4 or 8: float32 or float64), the address and length of
its flags, then for each array its address and up to three extents (:data:`HEADER`,
:data:`SLOTS`; the arrays are C-contiguous). Each thread claims shares by an atomic
increment of the counter until none is left, and runs the loop on its share (its own
copy of the flags, with ``part`` and ``parts`` set), so a team of any size runs every
share once.

Importing this module imports Numba; :func:`entry` compiles an entry point on first use
(cached on disk, as the loops).
"""

from __future__ import annotations

import numpy as np

from aquatic.functional.jit_pointers import address, claim
from aquatic.functional.neurons_grid_jit_kernels import forward as grid_forward
from aquatic.functional.neurons_jit_backward_kernels import backward
from aquatic.functional.neurons_jit_kernels import forward, inline, jit, numba

__all__ = ["HEADER", "SLOTS", "LOOPS", "entry", "fill_descriptor"]

#: Descriptor words before the arrays': counter, shares, item size, flags' address and
#: length.
HEADER = 5
#: Descriptor words per array: its address and three extents.
SLOTS = 4

if numba is not None:
    from numba import literal_unroll, types

    _SIGNATURE = types.void(types.voidptr)

    @inline
    def _a1(d, k, dt):
        s = HEADER + SLOTS * k
        return numba.carray(address(d[s]), (d[s + 1],), dt)

    @inline
    def _a2(d, k, dt):
        s = HEADER + SLOTS * k
        return numba.carray(address(d[s]), (d[s + 1], d[s + 2]), dt)

    @inline
    def _a3(d, k, dt):
        s = HEADER + SLOTS * k
        return numba.carray(address(d[s]), (d[s + 1], d[s + 2], d[s + 3]), dt)

    @inline
    def _next(d):
        """The flags of the next unclaimed share, or an empty array when none is left."""
        part = claim(d)
        if part >= d[1]:
            return np.empty(0, np.int64)
        flags = numba.carray(address(d[3]), (d[4],), np.int64).copy()
        flags[-2] = part
        flags[-1] = d[1]
        return flags

    @jit
    def _forward_shares(d, dt):
        f = _next(d)
        while len(f):
            # fmt: off
            forward(f, _a1(d, 0, dt), _a3(d, 1, dt), _a2(d, 2, dt), _a2(d, 3, dt),
                    _a2(d, 4, dt), _a2(d, 5, dt), _a2(d, 6, dt), _a2(d, 7, dt), _a2(d, 8, dt),
                    _a3(d, 9, dt), _a3(d, 10, dt), _a3(d, 11, dt), _a3(d, 12, dt),
                    _a2(d, 13, dt), _a2(d, 14, dt), _a3(d, 15, dt), _a3(d, 16, dt))
            # fmt: on
            f = _next(d)

    @jit
    def _backward_shares(d, dt):
        f = _next(d)
        while len(f):
            # fmt: off
            backward(f, _a1(d, 0, dt), _a3(d, 1, dt), _a2(d, 2, dt), _a3(d, 3, dt),
                     _a3(d, 4, dt), _a2(d, 5, dt), _a3(d, 6, dt), _a2(d, 7, dt), _a2(d, 8, dt),
                     _a3(d, 9, dt), _a2(d, 10, dt), _a2(d, 11, dt), _a2(d, 12, dt),
                     _a3(d, 13, dt), _a2(d, 14, dt), _a2(d, 15, dt), _a2(d, 16, dt),
                     _a2(d, 17, dt), _a3(d, 18, dt), _a3(d, 19, dt), _a2(d, 20, dt),
                     _a3(d, 21, dt), _a3(d, 22, dt))
            # fmt: on
            f = _next(d)

    @jit
    def _grid_shares(d, dt):
        f32, f64, b = np.float32, np.float64, np.bool_
        f = _next(d)
        while len(f):
            # fmt: off
            grid_forward(f, _a1(d, 0, dt), _a1(d, 1, f32), _a3(d, 2, dt), _a1(d, 3, dt),
                         _a1(d, 4, dt), _a1(d, 5, dt), _a1(d, 6, dt), _a1(d, 7, dt),
                         _a1(d, 8, f64), _a1(d, 9, dt), _a1(d, 10, dt), _a1(d, 11, dt),
                         _a1(d, 12, f64), _a1(d, 13, dt), _a1(d, 14, dt), _a1(d, 15, dt),
                         _a3(d, 16, dt), _a3(d, 17, dt), _a2(d, 18, dt), _a2(d, 19, b),
                         _a2(d, 20, dt), _a2(d, 21, b), _a1(d, 22, dt), _a1(d, 23, dt))
            # fmt: on
            f = _next(d)

    # The entry points, one per loop and dtype, compiled on first use (:func:`entry`):
    # module-level functions, so that Numba's disk cache keeps them.
    def _forward_32(data):
        _forward_shares(numba.carray(data, (HEADER + SLOTS * 17,), np.int64), np.float32)

    def _forward_64(data):
        _forward_shares(numba.carray(data, (HEADER + SLOTS * 17,), np.int64), np.float64)

    def _backward_32(data):
        _backward_shares(numba.carray(data, (HEADER + SLOTS * 23,), np.int64), np.float32)

    def _backward_64(data):
        _backward_shares(numba.carray(data, (HEADER + SLOTS * 23,), np.int64), np.float64)

    def _grid_32(data):
        _grid_shares(numba.carray(data, (HEADER + SLOTS * 24,), np.int64), np.float32)

    def _grid_64(data):
        _grid_shares(numba.carray(data, (HEADER + SLOTS * 24,), np.int64), np.float64)

    @jit
    def fill_descriptor(words, flags, arrays):
        """Write the flags' and the ``arrays``' (a tuple) addresses and extents into the
        descriptor ``words``; ``False`` (and nothing to run) if one is not C-contiguous."""
        words[3] = flags.ctypes.data
        words[4] = len(flags)
        k, contiguous = HEADER, True
        for a in literal_unroll(arrays):
            contiguous = contiguous and a.flags.c_contiguous
            words[k] = a.ctypes.data
            for j in range(a.ndim):
                words[k + 1 + j] = a.shape[j]
            k += SLOTS
        return contiguous

    #: Each loop (by name): the loop, its number of arrays and its entry points'
    #: functions by item size.
    LOOPS = {
        "forward": (forward, 17, {4: _forward_32, 8: _forward_64}),
        "backward": (backward, 23, {4: _backward_32, 8: _backward_64}),
        "grid": (grid_forward, 24, {4: _grid_32, 8: _grid_64}),
    }

else:  # pragma: no cover
    LOOPS, fill_descriptor = {}, None

_ADDRESSES = {}


def entry(name: str, itemsize: int) -> int:
    """The address of loop ``name``'s entry point for float32 (``itemsize`` 4) or
    float64 (8) values, compiled on first use (a few tens of seconds for each, once:
    Numba's disk cache keeps them)."""
    key = (name, itemsize)
    if key not in _ADDRESSES:
        function = LOOPS[name][2][itemsize]
        _ADDRESSES[key] = numba.cfunc(_SIGNATURE, cache=True, error_model="numpy")(function).address
    return _ADDRESSES[key]
