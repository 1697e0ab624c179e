"""How the compiled loops split their neurons into jobs, and run the jobs on threads.

The compiled loops (:mod:`aquatic.functional.neurons_jit_kernels`,
:mod:`aquatic.functional.neurons_jit_backward_kernels`,
:mod:`aquatic.functional.neurons_grid_jit_kernels`) run a sequence's ``(N, F)`` neurons
in *jobs* of about :data:`JOB_LANES` (:func:`layout`): a job's state stays in the
first-level cache for the whole sequence, and it reads and writes its own parts of
every array, so its results do not depend on which thread runs it or when. The loops'
last two flags, ``part`` and ``parts``, select a share of the jobs (:func:`share`), and
the loops release the GIL (Numba's ``nogil``), so :func:`run` runs the shares at the same
time: on PyTorch's own OpenMP threads where :mod:`aquatic.functional.jit_openmp` can
reach them (Linux, PyTorch's ``libgomp``), else the first share on the calling thread
and the others on a pool of Python threads. The results are the bits of one call over
every job.

A loop runs on as many threads as PyTorch uses (``torch.get_num_threads()``, which
``torch.set_num_threads`` sets and a ``DataLoader`` worker sets to 1), and no more than
it has jobs, for calls of at least :data:`PARALLEL_ABOVE` elements on the OpenMP
threads (starting their team cost about 6 µs here) or :data:`POOL_ABOVE` on the pool
(an empty task's round trip took 80 µs, and the pool's threads compete for the cores
with the OpenMP threads that keep spinning after PyTorch's operations); smaller calls
run on the calling thread. The pool is made on first use, once per process (again in a
forked child, which does not inherit the parent's threads).

Set :data:`ENABLED` to ``False`` (or the environment variable
``AQUATIC_NUMBA_THREADS=0``, before import) to run every loop on the calling thread.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import numpy as np
import torch

from aquatic.functional import jit_openmp

__all__ = [
    "JOB_LANES", "ENABLED", "PARALLEL_ABOVE", "POOL_ABOVE", "layout", "block", "share",
    "parts_for", "run", "describe",
]  # fmt: skip

#: Neurons per job: a job's state stays in the first-level cache.
JOB_LANES = 512
#: Whether loops run on several threads where :func:`parts_for` allows.
ENABLED = os.environ.get("AQUATIC_NUMBA_THREADS", "1") != "0"
#: Elements of a call (neurons times steps) from which its jobs are shared out on
#: PyTorch's OpenMP threads (:mod:`aquatic.functional.jit_openmp`) ...
PARALLEL_ABOVE = 1 << 16
#: ... and on Python threads, where those are not available.
POOL_ABOVE = 1 << 19

_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None
_pool_pid = -1
_pool_size = 0


def layout(n_batch: int, n_feat: int) -> Tuple[int, int, int]:
    """``(rows, chunk, jobs)``: ``n_batch`` samples of ``n_feat`` neurons run as
    ``jobs`` jobs of ``rows`` samples by ``chunk`` features (a job of several samples
    takes every feature). The loops compile this function as it is.

    Example:
        >>> layout(64, 512), layout(64, 16), layout(3, 2000)
        ((1, 512, 64), (32, 16, 2), (1, 512, 12))
    """
    chunk = max(1, min(n_feat, JOB_LANES))
    rows = max(1, min(n_batch, JOB_LANES // chunk))
    jobs = -(-n_batch // rows) * -(-n_feat // chunk) if n_feat else 0
    return rows, chunk, jobs


def block(job: int, rows: int, chunk: int, n_batch: int, n_feat: int) -> Tuple[int, ...]:
    """``(n0, n1, f0, f1)``: the samples and features of job ``job`` of :func:`layout`.
    The loops compile this function as it is.

    Example:
        >>> block(2, 1, 512, 3, 1100)  # the third job: the last 76 features of sample 0
        (0, 1, 1024, 1100)
    """
    nf = (n_feat + chunk - 1) // chunk
    n0 = (job // nf) * rows
    f0 = (job % nf) * chunk
    return n0, min(n_batch, n0 + rows), f0, min(n_feat, f0 + chunk)


def share(jobs: int, part: int, parts: int) -> Tuple[int, int]:
    """The bounds ``(start, stop)`` of the jobs of share ``part`` of ``parts``: the
    shares in order cover every job once.

    Example:
        >>> [share(5, part, 2) for part in range(2)]
        [(0, 2), (2, 5)]
    """
    return part * jobs // parts, (part + 1) * jobs // parts


def parts_for(n_batch: int, steps: int, n_feat: int) -> int:
    """How many threads share a call over ``steps`` steps of ``n_batch`` samples of
    ``n_feat`` neurons (see the module docstring).

    Example:
        >>> parts_for(4, 100, 64)  # small: the calling thread alone
        1
    """
    limit = PARALLEL_ABOVE if jit_openmp.usable() else POOL_ABOVE
    if not ENABLED or n_batch * steps * n_feat < limit:
        return 1
    return max(1, min(torch.get_num_threads(), layout(n_batch, n_feat)[2]))


def describe() -> str:
    """Where the compiled loops' jobs run now, in words (for benchmarks' headers).

    Example:
        >>> describe().startswith(("jobs on", "jobs shared"))
        True
    """
    threads = torch.get_num_threads()
    if not ENABLED or threads == 1:
        return "jobs on the calling thread"
    where = "PyTorch's OpenMP team" if jit_openmp.usable() else "Python threads"
    return f"jobs shared over {threads} threads on {where}"


def _executor(workers: int) -> ThreadPoolExecutor:
    """This process's pool, with at least ``workers`` threads."""
    global _pool, _pool_pid, _pool_size
    with _lock:
        if _pool is None or _pool_pid != os.getpid() or _pool_size < workers:
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)  # its queued tasks still run
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="aquatic-loop")
            _pool_pid, _pool_size = os.getpid(), workers
        return _pool


def run(kernel, flags: np.ndarray, *arrays, parts: int = 1, entry: str = "") -> None:
    """Call ``kernel(flags, *arrays)`` once for each share ``(part, parts)`` of the jobs
    (written into the last two of ``flags``), at the same time: on PyTorch's OpenMP
    threads through the loop's ``entry`` point where
    :func:`aquatic.functional.jit_openmp.run` can, else the first share on this thread
    and the others on the pool. Returns when every share has finished, raising the
    first error."""
    flags[-2:] = (0, 1)
    if parts <= 1:
        kernel(flags, *arrays)
        return
    if entry and jit_openmp.run(entry, kernel, flags, arrays, parts):
        return
    pool, futures = _executor(parts - 1), []
    for part in range(1, parts):
        own = flags.copy()
        own[-2:] = (part, parts)
        futures.append(pool.submit(kernel, own, *arrays))
    try:
        flags[-1] = parts
        kernel(flags, *arrays)
    finally:
        flags[-1] = 1
        errors = [future.exception() for future in futures]  # waits for every share
    for error in errors:
        if error is not None:
            raise error
