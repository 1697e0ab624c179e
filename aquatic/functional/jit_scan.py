r"""The backward recurrence of the quantized states' fused sequence, compiled.

:mod:`aquatic.functional.neurons_grid_backward` carries each state's gradient back
through time, :math:`G_t \mathrel{+}= f_t\, G_{t+1}` from the last step to the first
of a block (:math:`f_t` the decay, times the reset's and the quantizer's factors, or
the decay alone). In PyTorch that is one ``addcmul_`` per step and state; these loops
do it in one call, over the gradient buffer's batch-major storage
(``(N, T, S)``, C-contiguous: every step of one sample lies in one run of memory).

``addcmul_`` rounds :math:`G_t + G_{t+1} f_t` once (a fused multiply-add); so does
:func:`~aquatic.functional.jit_math.fma` here, so the results are the same bits.
"""

from __future__ import annotations

from aquatic.functional.jit_math import fma
from aquatic.functional.neurons_jit_kernels import jit, numba

__all__ = ["scan", "scan_scalar"]

if numba is not None:

    @jit
    def scan(g, f, start, end):
        """``g[n, t] = g[n, t + 1] f[t - start, n] + g[n, t]`` (rounded once) for
        ``t = end - 2`` down to ``start``; ``g`` is ``(N, T, S)``, ``f`` ``(B, N, S)``."""
        for n in range(g.shape[0]):
            for t in range(end - 2, start - 1, -1):
                out, later, factor = g[n, t], g[n, t + 1], f[t - start, n]
                for k in range(out.shape[0]):
                    out[k] = fma(later[k], factor[k], out[k])

    @jit
    def scan_scalar(g, factor, start, end):
        """:func:`scan` with one factor for every step and neuron."""
        for n in range(g.shape[0]):
            for t in range(end - 2, start - 1, -1):
                out, later = g[n, t], g[n, t + 1]
                for k in range(out.shape[0]):
                    out[k] = fma(later[k], factor, out[k])

else:  # pragma: no cover
    scan = scan_scalar = None
