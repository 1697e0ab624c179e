"""The compiled LIF backward loop's steps for the plainest neurons: binary spikes, the
spikes' gradient only, a surrogate whose slopes the loop computes
(:mod:`aquatic.functional.neurons_jit_slopes`) or that forward kept (``SAVED``, with the
subtract reset; ``SAVED_HERE``: in the gradient's array, which the loop writes over
them), and none of the other options.
:func:`~aquatic.functional.neurons_jit_backward_kernels.backward` hands each such job to
:func:`run_plain`, which calls :func:`plain_steps` compiled for each surrogate and reset alone (see
:func:`~aquatic.functional.neurons_jit_kernels.plain_steps` for why).
"""

from __future__ import annotations

from aquatic.functional.neurons_jit_kernels import inline, jit, numba
from aquatic.functional.neurons_jit_slopes import (
    ARCTAN,
    EXP,
    FAST_SIGMOID,
    SAVED,
    SAVED_HERE,
    TRIANGLE,
    slope,
)

__all__ = ["part", "plain_steps", "run_plain"]

if numba is not None:

    @inline
    def part(row, o, f1, whole):
        """``row[o:f1]``, or ``row`` itself where that is all of it."""
        return row if whole else row[o:f1]

    @jit
    def plain_steps(kind, zero_reset, args):
        """Steps ``last - 1`` down to ``first`` of one job (samples ``n0:n1``, features
        ``o:f1``) of the plainest backward pass: binary spikes, the spikes' gradient
        only, the surrogate's slopes computed here (``kind``), no clamp, detached reset,
        synaptic current, recomputed segment, threshold's or decay's gradient, or
        gradient of the final state. The same operations as the other steps of
        :func:`~aquatic.functional.neurons_jit_backward_kernels.backward`, so the same
        bits, compiled once for each ``kind`` and ``zero_reset`` (``SAVED``: ``v_pre``
        holds the slopes, and the reset subtracts)
        (literals: Numba drops the branches that they rule out; see
        :func:`~aquatic.functional.neurons_jit_kernels.plain_steps` for why). ``args``:
        the job's arrays and bounds, as that function passes them."""
        numba.literally(kind)
        numba.literally(zero_reset)
        # fmt: off
        (v_pre, g_spikes, gs_row, gs_mode, grad_v, a, h, sum_b, need_bias, n0, n1, o, f1,
         first, last, seg_first, n_steps, c1, c2, one, zero) = args
        # fmt: on
        m = f1 - o
        whole = m == v_pre.shape[2]
        kept = kind == SAVED or kind == SAVED_HERE  # the slopes, kept by forward
        for t in range(last - 1, first - 1, -1):
            s_t = t - seg_first
            for r in range(n1 - n0):
                n = n0 + r
                gs = part(g_spikes[n, t] if gs_mode == 1 else gs_row, o, f1, whole)
                out = part(grad_v[n, t], o, f1, whole)
                # one array read and written, where it is one: two views of the same
                # memory would send the loop to its unvectorized version (LLVM's check
                # that they do not overlap)
                v = out if kind == SAVED_HERE else part(v_pre[n, s_t], o, f1, whole)
                ar, hr = a[r], h[r]
                if t < n_steps - 1:  # a later step's gradient flows in
                    gn = part(grad_v[n, t + 1], o, f1, whole)
                    for k in range(m):
                        u, hk = v[k], hr[k]
                        psi = u if kept else slope(kind, u - hk, c1, c2, one, zero)
                        if zero_reset:
                            coef = (one if u < hk else zero) - psi * u
                        else:
                            coef = psi * -hk + one
                        out[k] = psi * gs[k] + gn[k] * (coef * ar[k])
                else:
                    for k in range(m):
                        u = v[k]
                        psi = u if kept else slope(kind, u - hr[k], c1, c2, one, zero)
                        out[k] = psi * gs[k]
                if need_bias:
                    sb = sum_b[r]
                    for k in range(m):
                        sb[k] += out[k]

    @inline
    def run_plain(kind, zero_reset, args):
        """:func:`plain_steps` for surrogate ``kind`` and the reset: each call passes
        them as literals, so that each runs the version compiled for them."""
        if kind == SAVED:  # (with the subtract reset only)
            plain_steps(SAVED, 0, args)
        elif kind == SAVED_HERE:
            plain_steps(SAVED_HERE, 0, args)
        elif zero_reset and kind == ARCTAN:
            plain_steps(ARCTAN, 1, args)
        elif zero_reset and kind == FAST_SIGMOID:
            plain_steps(FAST_SIGMOID, 1, args)
        elif zero_reset and kind == TRIANGLE:
            plain_steps(TRIANGLE, 1, args)
        elif zero_reset:
            plain_steps(EXP, 1, args)
        elif kind == ARCTAN:
            plain_steps(ARCTAN, 0, args)
        elif kind == FAST_SIGMOID:
            plain_steps(FAST_SIGMOID, 0, args)
        elif kind == TRIANGLE:
            plain_steps(TRIANGLE, 0, args)
        else:
            plain_steps(EXP, 0, args)

else:  # pragma: no cover
    part = plain_steps = run_plain = None
