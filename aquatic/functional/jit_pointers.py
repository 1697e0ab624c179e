"""Raw memory in the compiled loops: an address as a pointer, and atomic counters.

Compiled code that receives tensors as addresses (``Tensor.data_ptr()``, plain
integers) rather than NumPy arrays is called with less work per call: Numba checks
an integer's type at once, where each array costs it a conversion
(:mod:`aquatic.functional.jit_minmax` runs once per quantizer and training step, where
four conversions took longer than the loop on a small weight). The entry points
of :mod:`aquatic.functional.jit_bridges` read their arrays' addresses from a
descriptor the same way. ``numba.carray(address(a), shape, dtype)`` is then the
array at ``a``.

Only compiled code calls these (they are Numba intrinsics).
"""

from __future__ import annotations

from aquatic.functional.neurons_jit_kernels import numba

__all__ = ["address", "claim", "add_at", "call_int"]

if numba is not None:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def address(typingctx, value):
        """The ``int64`` ``value`` as a ``void *``."""

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)

        return types.voidptr(types.int64), codegen

    @intrinsic
    def claim(typingctx, words):
        """Atomically add 1 to ``words[0]``; the value before (a share of the jobs)."""

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            one = ir.Constant(ir.IntType(64), 1)
            return builder.atomic_rmw("add", array.data, one, "seq_cst")

        return types.int64(words), codegen

    @intrinsic
    def add_at(typingctx, words, index, value):
        """Atomically add ``value`` to ``words[index]`` (``int64``); the value before.
        Adding 0 reads the word as it stands in memory, never a copy the compiler kept,
        as a thread that waits for the others needs (sequentially consistent).

        Example:
            >>> import numba, numpy as np
            >>> @numba.njit
            ... def twice(words):
            ...     return add_at(words, 1, 5), add_at(words, 1, 0)
            >>> words = np.zeros(2, np.int64)
            >>> twice(words), words.tolist()
            ((0, 5), [0, 5])
        """

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            at = builder.gep(array.data, [args[1]])
            return builder.atomic_rmw("add", at, args[2], "seq_cst")

        return types.int64(words, types.int64, types.int64), codegen

    @intrinsic
    def call_int(typingctx, function):
        """Call the C function ``int f(void)`` at the address ``function`` (``int64``);
        its result (``int32``).

        Example:
            >>> import ctypes, numba
            >>> seven = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)
            >>> @numba.njit
            ... def call(function):
            ...     return call_int(function)
            >>> call(ctypes.cast(seven, ctypes.c_void_p).value)
            7
        """

        def codegen(context, builder, signature, args):
            kind = ir.FunctionType(ir.IntType(32), [])
            return builder.call(builder.inttoptr(args[0], kind.as_pointer()), [])

        return types.int32(types.int64), codegen

else:  # pragma: no cover
    address = claim = add_at = call_int = None
