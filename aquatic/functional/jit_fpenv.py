"""The flush-to-zero modes of every thread on PyTorch's OpenMP team (x86).

``torch.set_flush_denormal`` sets the modes of the calling thread only; the threads
that run the other shares of PyTorch's parallel operations keep theirs.
:func:`~aquatic.functional.subnormals.flushing` therefore also hands :func:`entry` to the
OpenMP runtime (:func:`aquatic.functional.jit_openmp.run_on_team`), which calls it on
every thread of the team: it sets or clears the flush-to-zero (bit 15) and
denormals-are-zero (bit 6) bits of the thread's MXCSR register (Intel 64 and IA-32
Architectures Software Developer's Manual, vol. 1, sec. 10.2.3), by the ``stmxcsr`` and
``ldmxcsr`` instructions (LLVM's ``llvm.x86.sse.stmxcsr`` and ``llvm.x86.sse.ldmxcsr``).

:func:`reader` reads the calling thread's modes (what
:func:`~aquatic.functional.subnormals.flushing_now` asks). Both are ``None`` without Numba
or off x86-64.
"""

from __future__ import annotations

import platform
from typing import Callable, Optional

import numpy as np

# first: it keeps Numba's disk cache in step with the code (jit_cache)
from aquatic.functional.neurons_jit_kernels import numba

__all__ = ["FLUSH_BITS", "entry", "reader"]

#: MXCSR's flush-to-zero (FTZ, bit 15) and denormals-are-zero (DAZ, bit 6) bits.
FLUSH_BITS = (1 << 15) | (1 << 6)

_X86 = platform.machine().lower() in ("x86_64", "amd64")

if numba is not None and _X86:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    _I32 = ir.IntType(32)
    _CSR_CALL = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])

    def _call(builder, name, slot):
        function = cgutils.get_or_insert_function(builder.module, _CSR_CALL, name)
        builder.call(function, [builder.bitcast(slot, ir.IntType(8).as_pointer())])

    @intrinsic
    def _read_csr(typingctx):
        """The calling thread's MXCSR register."""

        def codegen(context, builder, signature, args):
            slot = cgutils.alloca_once(builder, _I32)
            _call(builder, "llvm.x86.sse.stmxcsr", slot)
            return builder.zext(builder.load(slot), ir.IntType(64))

        return types.int64(), codegen

    @intrinsic
    def _write_csr(typingctx, value):
        """Load ``value`` into the calling thread's MXCSR register."""

        def codegen(context, builder, signature, args):
            slot = cgutils.alloca_once(builder, _I32)
            builder.store(builder.trunc(args[0], _I32), slot)
            _call(builder, "llvm.x86.sse.ldmxcsr", slot)
            return context.get_dummy_value()

        return types.void(types.int64), codegen

    def _set_flush(data):
        on = numba.carray(data, (1,), np.int64)[0]
        csr = _read_csr()
        _write_csr(csr | FLUSH_BITS if on else csr & ~FLUSH_BITS)

    def _flush_bits():
        return _read_csr() & FLUSH_BITS

else:  # pragma: no cover
    _set_flush = _flush_bits = None

_ADDRESS = []
_READER = []


def reader() -> Optional[Callable[[], int]]:
    """A function of no arguments that returns the calling thread's flush bits (MXCSR's
    :data:`FLUSH_BITS`: nonzero where either mode is set), compiled on first use (cached
    on disk); ``None`` where there is none (no Numba, not x86-64). A call took 0.07 µs
    here, against 2.7 µs for a PyTorch multiplication that shows the mode.

    Example:
        >>> import torch
        >>> read = reader()
        >>> if read is not None:
        ...     on = torch.set_flush_denormal(True)
        ...     print(read() == FLUSH_BITS)
        ...     off = torch.set_flush_denormal(False)
        ...     print(read())
        True
        0
    """
    if _flush_bits is None:
        return None
    if not _READER:
        _READER.append(numba.cfunc(numba.types.int64(), cache=True)(_flush_bits).ctypes)
    return _READER[0]


def entry() -> Optional[int]:
    """The address of a C function ``void set_flush(int64_t *on)`` that sets the
    calling thread's flush modes (``*on`` nonzero) or clears them, compiled on first use
    (cached on disk); ``None`` where there is none (no Numba, not x86-64).

    Example:
        >>> import ctypes
        >>> from aquatic.functional.subnormals import flushing_now
        >>> address = entry()
        >>> if address is not None:
        ...     set_flush = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)
        ...     set_flush(np.ones(1, np.int64).ctypes.data)
        ...     print(flushing_now())
        ...     set_flush(np.zeros(1, np.int64).ctypes.data)
        True
        >>> flushing_now()
        False
    """
    if _set_flush is None:
        return None
    if not _ADDRESS:
        signature = numba.types.void(numba.types.voidptr)
        _ADDRESS.append(numba.cfunc(signature, cache=True)(_set_flush).address)
    return _ADDRESS[0]
