"""Keep Numba's disk cache of the compiled loops in step with all of their source.

Numba keeps a compiled function on disk (``cache=True``) under a key that covers the
function's own file only: a loop that inlines helpers from other modules (the job
layout of :mod:`~aquatic.functional.jit_jobs`, the surrogate slopes of
:mod:`~aquatic.functional.neurons_jit_slopes`, the exponential of
:mod:`~aquatic.functional.jit_math`, the loops that the OpenMP entry points of
:mod:`~aquatic.functional.jit_bridges` call) would be loaded unchanged after a change to
those helpers alone, computing with the old code. That happens after an upgrade too:
the package manager replaces the ``.py`` files but leaves Numba's files in
``__pycache__``.

:func:`refresh` therefore fingerprints every module whose code the loops compile
(:data:`SOURCES`) and, where the fingerprint stored beside the cache differs, deletes the
cached loops (the files of the modules in :data:`CACHED`) before any is loaded; they
are compiled again on first use. :mod:`aquatic.functional.neurons_jit_options`, which
every compiled module imports first (it holds Numba's decorators of the loops), calls it
once per process.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

__all__ = ["SOURCES", "CACHED", "STAMP", "fingerprint", "refresh"]

#: The modules (files of this package) whose functions or constants the loops compile.
SOURCES = (
    "exp_floor.py",
    "fake_quant_outputs.py",
    "fake_quant_rules.py",
    "jit_bridges.py",
    "jit_fake_quant.py",
    "jit_fake_quant_team.py",
    "jit_fpenv.py",
    "jit_jobs.py",
    "jit_math.py",
    "jit_pointers.py",
    "jit_ranges.py",
    "jit_scan.py",
    "neurons_grid_jit_kernels.py",
    "neurons_jit_backward.py",
    "neurons_jit_backward_kernels.py",
    "neurons_jit_backward_plain.py",
    "neurons_jit_kernels.py",
    "neurons_jit_options.py",
    "neurons_jit_slopes.py",
)
#: The modules whose compiled functions Numba keeps on disk.
CACHED = (
    "jit_bridges",
    "jit_fake_quant",
    "jit_fake_quant_team",
    "jit_fpenv",
    "jit_scan",
    "neurons_grid_jit_kernels",
    "neurons_jit_backward_kernels",
    "neurons_jit_backward_plain",
    "neurons_jit_kernels",
    "neurons_jit_slopes",
)
#: The file, in the cache's directory, that holds the fingerprint of the cached loops.
STAMP = "aquatic-compiled-loops.sha256"

_HERE = Path(__file__).resolve().parent


def fingerprint(folder: Path = _HERE) -> str:
    """The SHA-256 of the :data:`SOURCES` in ``folder``, in their order.

    Example:
        >>> len(fingerprint())
        64
    """
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    return digest.hexdigest()


def refresh(cache_dir, folder: Path = _HERE) -> bool:
    """Where the fingerprint stored in ``cache_dir`` is not that of the sources in
    ``folder``, delete the :data:`CACHED` modules' cache files (``*.nbi`` and
    ``*.nbc``) there and store the new one; return whether it did. A cache that cannot
    be cleaned gives a ``RuntimeWarning`` (it may then hold stale loops).

    Example:
        >>> import tempfile
        >>> cache = tempfile.mkdtemp()
        >>> refresh(cache), refresh(cache)  # stamped once; the same sources then
        (True, False)
    """
    cache, current = Path(cache_dir), fingerprint(folder)
    stamp = cache / STAMP
    try:
        if stamp.read_text().strip() == current:
            return False
    except OSError:
        pass  # none yet
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for path in cache.iterdir():
            module = path.name.split(".", 1)[0]
            if module in CACHED and path.suffix in (".nbi", ".nbc"):
                path.unlink(missing_ok=True)
        temporary = cache / f"{STAMP}.{os.getpid()}"
        temporary.write_text(current + "\n")
        os.replace(temporary, stamp)
    except OSError as error:
        warnings.warn(
            f"could not clear the compiled loops' cache in {cache} ({error}); it may "
            "hold loops compiled from older code: delete its *.nbi and *.nbc files",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True
