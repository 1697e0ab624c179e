"""A compiled call shared out on PyTorch's OpenMP team: its descriptor, kept per shape.

The entry points of :mod:`aquatic.functional.jit_fake_quant_team` read one ``int64``
array: the descriptor's words, the shares' status, float64 constants; a float32 scratch
lies beside it. :class:`Call` holds them in one NumPy block (one ``ctypes`` address
lookup, the slow part of making one) and :func:`call_for` keeps one per shape and thread
for the next call, so that a training step fills a few words rather than making arrays.

:func:`team_parts` says how many shares a call gets: two per thread, where PyTorch's
OpenMP team can run them (:func:`aquatic.functional.jit_openmp.usable`).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from aquatic.functional import jit_jobs, jit_openmp

__all__ = ["CONSTANTS", "SCHED_YIELD", "team_parts", "Call", "call_for"]

#: Float64 constants a descriptor carries.
CONSTANTS = 9


def _sched_yield() -> int:
    try:
        return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0
    except (OSError, AttributeError, TypeError):  # pragma: no cover - not a POSIX C library
        return 0


#: The address of the C library's ``sched_yield`` (0 where there is none), the last
#: word of a descriptor: a thread that waits for the others yields its core with it.
SCHED_YIELD = _sched_yield()


def team_parts() -> int:
    """Two shares per thread where PyTorch's OpenMP team can run them, else 1.

    Example:
        >>> team_parts() in (1, 2 * torch.get_num_threads())
        True
    """
    threads = torch.get_num_threads()
    if threads < 2 or not jit_jobs.ENABLED or not jit_openmp.usable():
        return 1
    return 2 * threads


class Call:
    """A descriptor of ``words`` words (``rows``, ``cols`` and the addresses of the
    status and constants at words 9 to 12, :data:`SCHED_YIELD` at 13), the shares'
    status (at least three words, which a shared observe step counts in) and
    :data:`CONSTANTS` float64 constants in one array, and a float32 scratch of
    ``2 * extra`` values (its halves' addresses at words 7 and 8). ``entry(name)``
    gives the address of an entry point.

    Example:
        >>> call = Call(lambda name: 0, 14, rows=2, cols=3, parts=4, extra=2)  # entries: none
        >>> call.words[9:11].tolist(), call.status.shape, call.constants.shape
        ([2, 3], (4,), (9,))
    """

    def __init__(
        self, entry: Callable[[str], int], words: int, rows: int, cols: int, parts: int, extra: int
    ):
        status = max(parts, 3)
        self.entry = entry
        self.block = np.zeros(words + status + CONSTANTS, dtype=np.int64)
        self.words = self.block[:words]
        self.status = self.block[words : words + parts]
        self.counts = self.block[words : words + 3]
        self.constants = self.block[words + status :].view(np.float64)
        self.scratch = torch.empty(2 * extra)
        self.address = self.block.ctypes.data
        base, low = self.address, self.scratch.data_ptr()
        self.words[7:9] = low, low + 4 * extra
        statuses, constants = base + 8 * words, base + 8 * (words + status)
        self.words[9:14] = rows, cols, statuses, constants, SCHED_YIELD

    def run(self, name: str, parts: int) -> bool:
        """Run the entry point ``name`` on the team; ``False`` where it cannot run
        (no team, or no entry point: an address of 0)."""
        words = self.words
        words[:2] = 0, parts
        address = self.entry(name)
        if not address or not jit_openmp.run_on_team(address, self.address):
            return False
        if words[0] < parts:  # pragma: no cover - a team that did not run
            raise RuntimeError(f"the OpenMP team ran {words[0]} of {parts} shares")
        return True


_local = threading.local()


def call_for(
    entry: Callable[[str], int],
    words: int,
    source: Tensor,
    out: Tensor,
    rows: int,
    cols: int,
    parts: int,
    extra: int,
) -> Call:
    """This thread's :class:`Call` of these entry points and this shape (made on first
    use), with the addresses of ``source`` and ``out`` in words 2 and 3.

    Example:
        >>> x, y = torch.zeros(6), torch.zeros(6)
        >>> def entry(name):
        ...     return 0  # no entry point: run() refuses
        >>> call = call_for(entry, 14, x, y, 1, 6, 4, 0)
        >>> call is call_for(entry, 14, y, x, 1, 6, 4, 0), int(call.words[2]) == y.data_ptr()
        (True, True)
        >>> call.run("any", 4)
        False
    """
    calls = getattr(_local, "calls", None)
    if calls is None:
        calls = _local.calls = {}
    key = (entry, words, rows, cols, parts, extra)
    call = calls.get(key)
    if call is None:
        if len(calls) >= 64:  # a model of many shapes: start again
            calls.clear()
        call = calls[key] = Call(entry, words, rows, cols, parts, extra)
    call.words[2:4] = source.data_ptr(), out.data_ptr()
    return call
