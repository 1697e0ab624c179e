"""Run shares of a compiled loop's jobs on PyTorch's own OpenMP threads.

PyTorch's CPU builds for Linux run their parallel operations on GNU OpenMP
(``libgomp``), whose threads keep spinning for a while after each parallel region,
waiting for the next. Threads of our own then compete with them for the cores: measured
here inside a training step, shares handed to a pool of Python threads gained nothing,
while the same shares run by those OpenMP threads took the backward loop from 4.3 ms to
2.3 ms (two threads, ``(64, 100, 512)``). So where the process has loaded PyTorch's
``libgomp``, :func:`run` calls its ``GOMP_parallel`` with an entry point of the loop
(:mod:`aquatic.functional.jit_bridges`): the team is the one PyTorch's operations use,
already awake, and starting it costs a few microseconds (a Python thread's round trip
took 80 µs).

It is used in the process that imported this module only: a child made by ``fork``
inherits the OpenMP runtime without its threads, and there
:mod:`aquatic.functional.jit_jobs` uses its Python threads instead. Set :data:`ENABLED`
to ``False`` (or ``AQUATIC_NUMBA_OPENMP=0`` before import) to use them everywhere.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import re
import sys
from typing import Optional

import numpy as np
import torch

__all__ = ["ENABLED", "runtime", "usable", "run", "run_on_team"]

#: Whether shares run on PyTorch's OpenMP threads where :func:`runtime` finds them.
ENABLED = os.environ.get("AQUATIC_NUMBA_OPENMP", "1") != "0"

_PID = os.getpid()


@functools.lru_cache(maxsize=None)
def _gomp_parallel(path: str):
    library = ctypes.CDLL(path)  # the loaded library itself: the same path, one handle
    call = library.GOMP_parallel
    call.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    call.restype = None
    return call


@functools.lru_cache(maxsize=None)
def runtime() -> Optional[str]:
    """The path of the GNU OpenMP runtime that PyTorch loaded (Linux: the ``libgomp``
    in this process's memory map, PyTorch's own copy where there are several), or
    ``None``.

    Example:
        >>> path = runtime()
        >>> path is None or "libgomp" in path
        True
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted(set(re.findall(r"(/\S*/libgomp[^/\s]*\.so[^/\s]*)", maps.read())))
    except OSError:
        return None
    ours = [p for p in paths if p.startswith(os.path.dirname(torch.__file__) + os.sep)]
    chosen = ours or paths
    if len(chosen) != 1:
        return None
    try:
        _gomp_parallel(chosen[0])
    except (OSError, AttributeError):
        return None
    return chosen[0]


@functools.lru_cache(maxsize=None)
def _bridges():
    """The entry points' module (imported on first use: it compiles them), or ``None``
    with a ``RuntimeWarning`` where they fail to compile."""
    # (neurons_jit imports this module's importer: looked up here, not at import)
    compiles = importlib.import_module("aquatic.functional.neurons_jit").compiles
    module = []
    if compiles(
        "OpenMP entry points",
        "Python threads",
        lambda: module.append(importlib.import_module("aquatic.functional.jit_bridges")),
    ):
        return module[0]
    return None


@functools.lru_cache(maxsize=None)
def _entry(bridges, name: str, itemsize: int) -> Optional[int]:
    """The address of an entry point, or ``None`` with a ``RuntimeWarning`` where it
    fails to compile."""
    compiles = importlib.import_module("aquatic.functional.neurons_jit").compiles
    address = []
    if compiles(
        f"OpenMP entry point of the {name} loop",
        "Python threads",
        lambda: address.append(bridges.entry(name, itemsize)),
    ):
        return address[0]
    return None


def usable() -> bool:
    """Whether :func:`run` may run loops here (:data:`ENABLED`, a runtime found, and
    the process that imported this module).

    Example:
        >>> usable() == (ENABLED and runtime() is not None)  # in the importing process
        True
    """
    return ENABLED and os.getpid() == _PID and runtime() is not None


def run(name: str, kernel, flags: np.ndarray, arrays, parts: int) -> bool:
    """Run ``kernel(flags, *arrays)`` as ``parts`` shares on the OpenMP team, where the
    entry point ``name`` of :mod:`~aquatic.functional.jit_bridges` belongs to
    ``kernel``, the arrays are C-contiguous and this process may (see the module
    docstring); return whether it did (``False``: nothing ran)."""
    if not usable():
        return False
    bridges = _bridges()
    loop = bridges.LOOPS.get(name) if bridges is not None else None
    if loop is None or loop[0] is not kernel or loop[1] != len(arrays):
        return False
    address = _entry(bridges, name, arrays[0].itemsize)
    if address is None:
        return False
    # arrays[0]: the loop's constants, in its dtype
    descriptor = np.zeros(bridges.HEADER + bridges.SLOTS * len(arrays), dtype=np.int64)
    descriptor[1:3] = parts, arrays[0].itemsize
    if not bridges.fill_descriptor(descriptor, flags, tuple(arrays)):
        return False
    # each thread of the team copies the flags and sets its share in its copy
    _gomp_parallel(runtime())(address, descriptor.ctypes.data, parts, 0)
    if descriptor[0] < parts:  # pragma: no cover - a team that did not run
        raise RuntimeError(f"the OpenMP team ran {descriptor[0]} of {parts} shares")
    return True


def run_on_team(address: int, data: int) -> bool:
    """Call the C function ``void f(void *)`` at ``address`` with ``data`` once on
    every thread of the OpenMP team that PyTorch's operations use (the calling thread
    included), where this process may (:func:`usable`); return whether it did.

    Example:
        >>> import ctypes
        >>> calls = []
        >>> f = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda data: calls.append(data))
        >>> ran = run_on_team(ctypes.cast(f, ctypes.c_void_p).value, 7)
        >>> len(calls) == (torch.get_num_threads() if ran else 0)
        True
    """
    if not usable():
        return False
    _gomp_parallel(runtime())(address, data, torch.get_num_threads(), 0)
    return True
