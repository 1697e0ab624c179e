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

Importing this module imports Numba and compiles the entry points (cached on disk, as
the loops).
"""

from __future__ import annotations

import numpy as np

from aquatic.functional.neurons_grid_jit_kernels import forward as grid_forward
from aquatic.functional.neurons_jit_backward_kernels import backward
from aquatic.functional.neurons_jit_kernels import forward, inline, jit, numba

__all__ = ["HEADER", "SLOTS", "ENTRIES", "describe"]

#: Descriptor words before the arrays': counter, shares, item size, flags' address and
#: length.
HEADER = 5
#: Descriptor words per array: its address and three extents.
SLOTS = 4

if numba is not None:
    from llvmlite import ir
    from numba import literal_unroll, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    _cfunc = numba.cfunc(types.void(types.voidptr), cache=True, error_model="numpy")

    @intrinsic
    def _address(typingctx, value):
        """The ``int64`` ``value`` as a ``void *``."""

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)

        return types.voidptr(types.int64), codegen

    @intrinsic
    def _claim(typingctx, words):
        """Atomically add 1 to ``words[0]``; the value before (a share of the jobs)."""

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            one = ir.Constant(ir.IntType(64), 1)
            return builder.atomic_rmw("add", array.data, one, "seq_cst")

        return types.int64(words), codegen

    @inline
    def _a1(d, k, dt):
        s = HEADER + SLOTS * k
        return numba.carray(_address(d[s]), (d[s + 1],), dt)

    @inline
    def _a2(d, k, dt):
        s = HEADER + SLOTS * k
        return numba.carray(_address(d[s]), (d[s + 1], d[s + 2]), dt)

    @inline
    def _a3(d, k, dt):
        s = HEADER + SLOTS * k
        return numba.carray(_address(d[s]), (d[s + 1], d[s + 2], d[s + 3]), dt)

    @inline
    def _next(d):
        """The flags of the next unclaimed share, or an empty array when none is left."""
        part = _claim(d)
        if part >= d[1]:
            return np.empty(0, np.int64)
        flags = numba.carray(_address(d[3]), (d[4],), np.int64).copy()
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

    @_cfunc
    def _forward_entry(data):
        d = numba.carray(data, (HEADER + SLOTS * 17,), np.int64)
        if d[2] == 4:
            _forward_shares(d, np.float32)
        else:
            _forward_shares(d, np.float64)

    @_cfunc
    def _backward_entry(data):
        d = numba.carray(data, (HEADER + SLOTS * 23,), np.int64)
        if d[2] == 4:
            _backward_shares(d, np.float32)
        else:
            _backward_shares(d, np.float64)

    @_cfunc
    def _grid_entry(data):
        d = numba.carray(data, (HEADER + SLOTS * 24,), np.int64)
        if d[2] == 4:
            _grid_shares(d, np.float32)
        else:
            _grid_shares(d, np.float64)

    @jit
    def describe(words, flags, arrays):
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

    #: Each loop (by name) and its entry point's address and number of arrays.
    ENTRIES = {
        "forward": (forward, _forward_entry.address, 17),
        "backward": (backward, _backward_entry.address, 23),
        "grid": (grid_forward, _grid_entry.address, 24),
    }
else:  # pragma: no cover
    ENTRIES, describe = {}, None
