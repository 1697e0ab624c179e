r"""The fused LIF sequence's forward loop compiled by Numba: one pass that reads each
input element once and writes each result once.

Importing this module imports Numba (optional: without it :func:`forward_kernel` is an
``ImportError``); :mod:`aquatic.functional.neurons_jit` imports it on first use and
prepares the arrays. The loops are module-level functions, so Numba's disk cache serves
later processes (:mod:`aquatic.functional.jit_cache` keeps it in step with the code
that the loops inline from other modules).
The kernel performs the operations of
:func:`~aquatic.functional.neurons_kernel.sequence_forward` in the same order and dtype,
and Numba compiles without fast-math (no contraction of a product and a sum into one
rounding), so its results are the same bits.

It runs the ``(N, F)`` neurons in *jobs* of about :data:`JOB_LANES` (:func:`job_layout`:
``chunk`` features of ``rows`` samples each); a job's state lives in small local arrays
for the whole sequence, in the first-level cache, and the loops over its features
vectorize. A call runs the share of the jobs that its last two flags select
(:func:`job_range`), and :mod:`aquatic.functional.jit_jobs` runs the shares on
threads.
Flags and constants come in small arrays (one compiled version per dtype); absent
tensors are empty arrays of the right dtype and rank. Flags: ``synaptic, norm_input,
bias, spiking, zero_reset, clamp, record, keep_current, keep_v, checkpoint, slopes, part,
parts``;
constants: ``0, 1, min_v_mem``, the surrogate's parameter and scale. With ``slopes``, a
surrogate's code in :mod:`~aquatic.functional.neurons_jit_slopes` (0: none), the loop
keeps the surrogate's slopes at the membranes instead of the membranes
(:func:`~aquatic.functional.neurons_jit_backward.kept_slopes`), for the plainest
neurons (:func:`plain_steps`).
"""

from __future__ import annotations

import numpy as np

from aquatic.functional import jit_jobs
from aquatic.functional.neurons_jit_options import inline, jit, numba
from aquatic.functional.neurons_jit_slopes import ARCTAN, EXP, FAST_SIGMOID, TRIANGLE
from aquatic.functional.neurons_jit_slopes import constants, slope, slopes_into

__all__ = [
    "JOB_LANES", "jit", "inline", "job_layout", "job_block", "job_range", "job_lanes",
    "drive_of", "advance", "advance_slopes", "plain_steps", "plain_kept", "plain_forward",
    "forward_kernel",
]  # fmt: skip

#: Neurons per job (:data:`aquatic.functional.jit_jobs.JOB_LANES`).
JOB_LANES = jit_jobs.JOB_LANES

if numba is not None:
    #: :func:`aquatic.functional.jit_jobs.layout`, compiled.
    job_layout = inline(jit_jobs.layout)
    #: :func:`aquatic.functional.jit_jobs.block`, compiled.
    job_block = inline(jit_jobs.block)
    #: :func:`aquatic.functional.jit_jobs.share`, compiled.
    job_range = inline(jit_jobs.share)

    @inline
    def job_lanes(values, n0, n1, f0, f1):
        """A job's block ``[n0:n1, f0:f1]`` of a per-neuron parameter ``(N, F)``, or of
        one ``(1, F)`` that every sample shares (its row repeated), as a new array.

        Shape:
            - values: ``(N, F)`` or ``(1, F)``; output: ``(n1 - n0, f1 - f0)``.

        Example:
            >>> shared = np.array([[1.0, 2.0, 3.0]], np.float32)
            >>> job_lanes(shared, 0, 2, 1, 3)
            array([[2., 3.],
                   [2., 3.]], dtype=float32)
            >>> job_lanes(np.arange(6.0).reshape(3, 2), 1, 3, 0, 2)  # one row per sample
            array([[2., 3.],
                   [4., 5.]])
        """
        if values.shape[0] != 1:
            return values[n0:n1, f0:f1].copy()
        block = np.empty((n1 - n0, f1 - f0), values.dtype)
        for r in range(n1 - n0):
            block[r] = values[0, f0:f1]
        return block

    @inline
    def drive_of(src, i, s_syn, g, b, r, drive, m, synaptic, norm, has_bias):
        """The input to the membranes of row ``r`` of a job's ``m`` neurons in one step,
        from the step's input ``src``: the synaptic current ``i[r]`` (updated, decay
        ``s_syn[r]``), times the gain ``g[r]`` and plus the bias ``b[r]`` (into
        ``drive``) where the options have them. Rows of arrays that an option leaves
        unread are not taken (taking them all cost 5% of the forward loop)."""
        if synaptic:
            ir, sr = i[r], s_syn[r]
            for k in range(m):
                ir[k] = (ir[k] + src[k]) * sr[k]
            src = ir
        if norm and has_bias:
            gr, br = g[r], b[r]
            for k in range(m):
                drive[k] = gr[k] * src[k] + br[k]
            return drive
        if norm:
            gr = g[r]
            for k in range(m):
                drive[k] = gr[k] * src[k]
            return drive
        if has_bias:
            br = b[r]
            for k in range(m):
                drive[k] = src[k] + br[k]
            return drive
        return src

    @inline
    def advance(src, vr, ar, hr, pre, out, m, spiking, zero_reset, clamp, low, zero, one):
        """One step of a row of ``m`` neurons driven by ``src``
        (:func:`drive_of`): the membranes before the reset into ``pre``, the spikes
        into ``out`` (spiking neurons) and the state ``vr`` after the reset and the
        clamp (decay ``ar``, threshold ``hr``).

        :func:`drive_of` and this run the operations of the PyTorch loop in its order;
        the forward loop and the backward loop's recomputation both run them, so the
        recomputed membranes are the forward's bits."""
        if spiking and zero_reset:
            for k in range(m):
                u = vr[k] * ar[k] + src[k]
                pre[k] = u
                fired = u >= hr[k]
                out[k] = one if fired else zero
                vr[k] = zero if fired else u
        elif spiking:
            for k in range(m):
                u = vr[k] * ar[k] + src[k]
                pre[k] = u
                s = one if u >= hr[k] else zero
                out[k] = s
                vr[k] = u - hr[k] * s
        else:
            for k in range(m):
                u = vr[k] * ar[k] + src[k]
                pre[k] = u
                vr[k] = u
        if clamp:
            for k in range(m):
                if vr[k] < low:
                    vr[k] = low

    @inline
    def advance_slopes(src, vr, ar, hr, slopes, out, m, kind, c1, c2, zero, one):
        """:func:`advance` of binary spikes with the subtract reset (the same operations),
        writing the slopes of surrogate ``kind`` at the membranes into ``slopes``
        (:func:`~aquatic.functional.neurons_jit_slopes.slope`, the backward loop's
        function, so its bits) instead of the membranes."""
        for k in range(m):
            u = vr[k] * ar[k] + src[k]
            hk = hr[k]
            slopes[k] = slope(kind, u - hk, c1, c2, one, zero)
            s = one if u >= hk else zero
            out[k] = s
            vr[k] = u - hk * s

    @jit
    def plain_steps(zero_reset, has_bias, kind, args):
        """All steps of one job (samples ``n0:n1``, features ``f0:f1``) of the plainest
        neurons: binary spikes, no synaptic current, input gain, clamp, record or
        checkpoint. The same :func:`drive_of` and :func:`advance` as :func:`forward`'s
        other steps, so the same bits, but compiled once for each value of
        ``zero_reset`` and ``has_bias`` (literals: Numba drops the branches that they
        rule out), so that the loop nest holds only the loops that run. With the other
        options' loops beside them, the same loops took 1.5 to 3 times as long (LLVM
        vectorizes them either way; measured on one thread, ``(64, 100, 512)`` and
        ``(256, 100, 128)``: 0.45 to 0.53 ns an element against 0.83 to 1.63).

        With a surrogate's ``kind`` (not 0; the subtract reset), it keeps the slopes at
        the membranes (constants ``c1`` and ``c2``) in ``v_pre`` instead of the
        membranes (:func:`advance_slopes`; compiled for each ``kind`` too: computed in
        a loop of their own from each row's membranes, the exponential's slopes added
        0.55 ms to this loop on ``(64, 100, 512)``, two threads; inline, nothing
        measured).

        ``args``: ``(x, out, v_pre, scratch, drive, v, a, h, b, n0, n1, f0, f1, keep_v,
        low, zero, one, c1, c2)``."""
        numba.literally(zero_reset)
        numba.literally(has_bias)
        numba.literally(kind)
        # fmt: off
        (x, out, v_pre, scratch, drive, v, a, h, b, n0, n1, f0, f1, keep_v, low, zero, one,
         c1, c2) = args
        # fmt: on
        m = f1 - f0
        for t in range(x.shape[1]):
            for r in range(n1 - n0):
                n = n0 + r
                # fmt: off
                src = drive_of(x[n, t, f0:f1], v, a, a, b, r, drive, m, False, False,
                               has_bias)
                if kind:
                    advance_slopes(src, v[r], a[r], h[r], v_pre[n, t, f0:f1],
                                   out[n, t, f0:f1], m, kind, c1, c2, zero, one)
                else:
                    pt = v_pre[n, t, f0:f1] if keep_v else scratch
                    advance(src, v[r], a[r], h[r], pt, out[n, t, f0:f1], m, True, zero_reset,
                            False, low, zero, one)
                # fmt: on

    @inline
    def plain_kept(has_bias, kind, args):
        """:func:`plain_steps` of the subtract reset for the bias and the slopes kept
        (``kind``; 0: the membranes), each as literals (see :func:`plain_forward`)."""
        if kind == EXP:
            plain_steps(0, has_bias, EXP, args)
        elif kind == ARCTAN:
            plain_steps(0, has_bias, ARCTAN, args)
        elif kind == FAST_SIGMOID:
            plain_steps(0, has_bias, FAST_SIGMOID, args)
        elif kind == TRIANGLE:
            plain_steps(0, has_bias, TRIANGLE, args)
        else:
            plain_steps(0, has_bias, 0, args)

    @inline
    def plain_forward(zero_reset, has_bias, kind, args):
        """:func:`plain_steps` for the reset, the bias and the slopes kept (``kind``,
        with the subtract reset; 0: the membranes): each call passes them as literals,
        so that each runs the version compiled for them."""
        if zero_reset and has_bias:
            plain_steps(1, 1, 0, args)
        elif zero_reset:
            plain_steps(1, 0, 0, args)
        elif has_bias:
            plain_kept(1, kind, args)
        else:
            plain_kept(0, kind, args)

    @jit
    def forward(
        flags, consts, x, v0, i0, alpha, gain, alpha_syn,
        threshold, bias, out, trace, current, v_pre, v_final, i_final, v_states, i_states,
    ):  # fmt: skip
        n_batch, n_steps, n_feat = x.shape
        # fmt: off
        (synaptic, norm, has_bias, spiking, zero_reset, clamp, record, keep_current, keep_v,
         every, kind, part, parts) = flags
        # fmt: on
        zero, one, low = consts[0], consts[1], consts[2]
        c1, c2 = constants(kind, consts[3], consts[4], one)
        rows, chunk, jobs = job_layout(n_batch, n_feat)
        for job in range(*job_range(jobs, part, parts)):
            n0, n1, f0, f1 = job_block(job, rows, chunk, n_batch, n_feat)
            m = f1 - f0
            v = v0[n0:n1, f0:f1].copy()
            a = job_lanes(alpha, n0, n1, f0, f1)
            h = job_lanes(threshold, n0, n1, f0, f1)
            i = i0[n0:n1, f0:f1].copy() if synaptic else v.copy()
            s_syn = job_lanes(alpha_syn, n0, n1, f0, f1) if synaptic else a
            g = job_lanes(gain, n0, n1, f0, f1) if norm else a
            b = job_lanes(bias, n0, n1, f0, f1) if has_bias else a
            drive = np.empty(m, x.dtype)
            scratch = np.empty(m, x.dtype)
            # fmt: off
            plain = spiking and not (synaptic or norm or clamp or record or keep_current or every)
            plain = plain and (kind == 0 or not (keep_v and zero_reset))  # (else: below)
            if plain:
                plain_forward(zero_reset, has_bias, kind if keep_v else 0,
                              (x, out, v_pre, scratch, drive, v, a, h, b, n0, n1, f0, f1,
                               keep_v, low, zero, one, c1, c2))
            # fmt: on
            for t in range(0 if plain else n_steps):  # the plainest neurons ran above
                for r in range(n1 - n0):
                    n = n0 + r
                    vr, ar, hr = v[r], a[r], h[r]
                    if every > 0 and t % every == 0:
                        v_states[t // every, n, f0:f1] = vr
                        if synaptic:
                            i_states[t // every, n, f0:f1] = i[r]
                    ot = out[n, t, f0:f1]
                    pt = v_pre[n, t, f0:f1] if keep_v and not kind else scratch
                    # fmt: off
                    src = drive_of(x[n, t, f0:f1], i, s_syn, g, b, r, drive, m, synaptic,
                                   norm, has_bias)
                    advance(src, vr, ar, hr, pt, ot, m, spiking, zero_reset, clamp, low, zero,
                            one)
                    if keep_v and kind:
                        slopes_into(kind, scratch, hr, c1, c2, v_pre[n, t, f0:f1], m, one,
                                    zero)
                    # fmt: on
                    if keep_current:
                        current[n, t, f0:f1] = i[r]
                    if spiking and record:
                        trace[n, t, f0:f1] = vr
                    elif not spiking:
                        ot[:] = vr
            v_final[n0:n1, f0:f1] = v
            if synaptic:
                i_final[n0:n1, f0:f1] = i

else:  # pragma: no cover
    job_layout = job_block = job_range = job_lanes = drive_of = advance = None
    plain_steps = forward = None


def forward_kernel():
    """The compiled forward loop (an ``ImportError`` without Numba)."""
    if numba is None:
        raise ImportError("the compiled loops need Numba: pip install 'aquatic[fast]'")
    return forward
