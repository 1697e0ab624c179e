"""Raw memory in the compiled loops: an address as a pointer, and an atomic counter.

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

__all__ = ["address", "claim"]

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

else:  # pragma: no cover
    address = claim = None
