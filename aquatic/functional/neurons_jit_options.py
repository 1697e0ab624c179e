"""Numba and the decorators of the compiled loops, in a module of their own: every
module with compiled code imports them from here, directly or through
:mod:`aquatic.functional.neurons_jit_kernels` (which re-exports them), so that the
loops' modules can import one another's helpers without a cycle.

Importing this module keeps Numba's disk cache in step with the loops' source
(:func:`aquatic.functional.jit_cache.refresh`, once per process), before any loop is
loaded from it. Without Numba, ``numba``, :data:`jit` and :data:`inline` are ``None``.
"""

from __future__ import annotations

from aquatic.functional import jit_cache

try:  # optional: the compiled loops exist where Numba is installed
    import numba
except ImportError:  # pragma: no cover - the PyTorch loops run instead
    numba = None

__all__ = ["numba", "jit", "inline"]


def _locate() -> int:  # pragma: no cover - never called: its dispatcher names the folder
    """A function of this package whose (never compiled) dispatcher says where Numba
    keeps the package's loops."""
    return 0


if numba is not None:
    _OPTIONS = dict(nogil=True, boundscheck=False, error_model="numpy")
    #: Numba's decorator of the loops: no fast-math, cached on disk; ``error_model=
    #: "numpy"``: a division by zero is inf or nan, as in PyTorch, and no check of the
    #: divisor keeps the loops from vectorizing.
    jit = numba.njit(cache=True, **_OPTIONS)
    #: For helpers that run once per row and step: inlined (a call there costs more
    #: than the helper's work).
    inline = numba.njit(inline="always", **_OPTIONS)

    # Before any loop is loaded from Numba's disk cache: drop loops compiled from other
    # code (Numba's key covers each loop's own file only). No cache, nothing to drop
    # (NUMBA_DISABLE_JIT=1 leaves plain Python functions).
    _cache_path = getattr(getattr(jit(_locate), "_cache", None), "cache_path", None)
    if _cache_path:
        jit_cache.refresh(_cache_path)
else:  # pragma: no cover
    jit = inline = None
