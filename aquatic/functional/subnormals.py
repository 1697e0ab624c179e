r"""Backward passes with subnormal numbers flushed to zero.

The surrogate gradient of a neuron far below its threshold is tiny
(:math:`e^{-|v - \vartheta|/w}` for ``SingleExponential``), and it shrinks further as
it flows back through the decays of earlier steps and through the layers below. As
neurons fall silent in training, more and more gradients reach the subnormal range
(magnitudes under :math:`1.2 \cdot 10^{-38}` in float32, :math:`2.2 \cdot 10^{-308}` in
float64), where an x86 processor takes a slow path for every operation that reads or
writes one: about a hundred cycles instead of one. Measured on the training step of
``benchmarks/preset_speed.py`` (2 threads, the network falls silent within ten steps):
the Loihi preset's backward pass went from 7 ms at step 10 to 28 ms at step 60, the
matrix products of the layers below it from 1.4 to 13 ms a step, and the float
network's step from 11.7 to 14 ms.

:func:`flushing` runs a block with the processor's flush-to-zero and
denormals-are-zero modes on the calling thread (``torch.set_flush_denormal``) and on
every thread of PyTorch's OpenMP team (:mod:`aquatic.functional.jit_fpenv`), and
restores the mode it found. The fused backward passes of the spiking layers run in it
on the CPU, so a gradient under the smallest normal number becomes 0, as the hardware's
own arithmetic would give with those modes set (TensorFlow runs all of its CPU
operations so). No optimizer step can tell: Adam's update of such a gradient is below
:math:`10^{-30}`. Forward passes keep every value, bit for bit.

Without Numba on x86-64, or outside PyTorch's GNU OpenMP runtime (another platform, a
process made by ``fork``), only the calling thread flushes: operations that PyTorch
shares over its other threads keep their mode there, so which subnormal values survive
may depend on the number of threads, as the rounding of PyTorch's own sums does.
Processors without these modes (where ``torch.set_flush_denormal`` returns ``False``)
compute as before.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from types import ModuleType
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from aquatic.functional import jit_openmp

__all__ = ["flushing", "flushing_now"]

# The smallest positive subnormal float32, made from its bits (converting a Python float
# would itself be flushed when the mode is on).
_PROBE = torch.tensor([1], dtype=torch.int32).view(torch.float32)


# The arguments of the team's call (never written: threads may call at once).
_ON, _OFF = np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
_ADDRESSES = {True: _ON.ctypes.data, False: _OFF.ctypes.data}

# The compiled loops' modules, looked up on first use (neurons_jit imports this module's
# importers; jit_fpenv imports Numba).
_MODULES: Dict[str, ModuleType] = {}
# [(reader, team entry)] of jit_fpenv once looked up, [None] where they are missing or
# fail (then the probe reads the mode, and only the calling thread's is set).
_CALLS: List[Optional[Tuple[Callable[[], int], int]]] = []


def flushing_now() -> bool:
    """Whether the calling thread flushes subnormal numbers to zero now.

    Example:
        >>> with flushing():
        ...     flushing_now()
        True
        >>> flushing_now()
        False
    """
    calls = _calls()
    if calls is not None:  # MXCSR's bits, read directly
        return calls[0]() != 0
    # Either mode makes the product 0: flush-to-zero its result, denormals-are-zero its
    # operand.
    return torch.mul(_PROBE, 1.0).view(torch.int32).item() == 0


@contextlib.contextmanager
def flushing(on: bool = True) -> Iterator[None]:
    """Run the block with subnormal numbers flushed to zero on the calling thread
    (``torch.set_flush_denormal(True)``) and on PyTorch's OpenMP team, then restore the
    mode found. ``on=False`` runs it as it is (a backward pass on another device than
    the CPU: its threads would gain nothing).

    Example:
        >>> tiny = torch.tensor([1e-30])
        >>> with flushing():
        ...     print(tiny * 1e-10)
        tensor([0.])
        >>> print(tiny * 1e-10)
        tensor([9.9999e-41])
    """
    if not on or flushing_now() or not torch.set_flush_denormal(True):
        # not asked, already flushing, or a processor without the modes
        yield
        return
    team = _set_team(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        if team:
            _set_team(False)


def _module(name: str) -> ModuleType:
    module = _MODULES.get(name)
    if module is None:
        module = _MODULES[name] = importlib.import_module(f"aquatic.functional.{name}")
    return module


def _calls() -> Optional[Tuple[Callable[[], int], int]]:
    """``(reader, entry)`` of :mod:`~aquatic.functional.jit_fpenv`: the calling thread's
    flush bits and the C function that sets them on a thread of the team; ``None``
    where the compiled loops are off, or without Numba on x86-64, or where they fail
    (a ``RuntimeWarning``, once)."""
    if not _module("neurons_jit").ENABLED:
        return None
    if not _CALLS:
        try:
            fpenv = _module("jit_fpenv")
            read, address = fpenv.reader(), fpenv.entry()
            _CALLS.append(None if read is None or address is None else (read, address))
        except Exception as error:  # no Numba, or one that fails: the calling thread only
            _CALLS.append(None)
            warnings.warn(
                f"could not set the flush-to-zero mode on PyTorch's OpenMP threads "
                f"({type(error).__name__}: {error}); it is set on the calling thread only",
                RuntimeWarning,
                stacklevel=4,
            )
    return _CALLS[0]


def _set_team(on: bool) -> bool:
    """Set (or clear) the flush modes of every thread on PyTorch's OpenMP team; whether
    it did (it needs the compiled loops enabled, Numba on x86-64 and the team's runtime:
    :mod:`~aquatic.functional.jit_fpenv`, :func:`~aquatic.functional.jit_openmp.usable`)."""
    calls = _calls()
    if calls is None or not jit_openmp.usable():
        return False
    return jit_openmp.run_on_team(calls[1], _ADDRESSES[on])
