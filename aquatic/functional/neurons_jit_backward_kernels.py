r"""The fused LIF sequence's backward pass compiled by Numba: one pass from the last step
back that reads the membranes and the incoming gradients once and writes the membranes'
gradients once.

It computes what the blocks of
:func:`~aquatic.functional.neurons_kernel_backward.sequence_backward` compute, in the
notation of :mod:`aquatic.functional.neurons_fused`:
for each step from the last, :math:`g_t = A_t\, \alpha_{mem}\, g_{t+1} + B_t` with
:math:`A_t = m_t (R_t + \psi_t K_t)` and :math:`B_t = \psi_t\, \partial_{s[t]} L +
A_t\, \partial_{\tilde v[t]} L_{direct}`, and each neuron's sums over the steps of
:math:`g_t \tilde v[t-1]` (minus :math:`g_t i[t]` with ``norm_input``), of
:math:`(R_t - s_t^{sub}) \hat g_t - g_t` and of :math:`g_t` (the decay's, threshold's
and bias's gradients). The slopes :math:`\psi_t` are computed in the loop for the
surrogates whose formula it knows (``FastSigmoid``, ``ArcTan``, ``Triangle``,
``SingleExponential``; see
:meth:`~aquatic.functional.surrogate.Surrogate.kernel_form`), by
:mod:`aquatic.functional.neurons_jit_slopes` (their ``derivative``, with one division
at most); any other surrogate's come computed by its ``derivative_``, a block of steps
at a time (``GIVEN``).

Importing this module imports Numba (optional); :mod:`aquatic.functional.neurons_jit_backward`
imports it on first use and prepares the arrays.
Flags: ``spiking, zero_reset, detach, clamp, g_spikes, g_trace, g_final, need_alpha,
need_threshold, need_bias, norm, first, last, n_steps, surrogate, synaptic,
gi_mode, has_ifinal, norm_input, seg_first, every, has_bias, part, parts`` (``norm``: the decay's
gradient has its input term; ``g_spikes``, ``g_trace`` and ``gi_mode``: 0 absent, 1 an
array ``(N, T, F)``, 2 one value for every element, a sum's gradient; ``every``: the
steps between checkpointed states whose segments the loop recomputes, 0 where the
membranes are given; ``surrogate``: its code, or ``SAVED`` where ``v_pre`` holds the
slopes that forward kept, ``SAVED_HERE`` where ``grad_v`` does and is overwritten, see
:mod:`~aquatic.functional.neurons_jit_slopes`); constants: ``0, 1, min_v_mem``, the
surrogate's parameter (its
width, or ``FastSigmoid``'s slope) and its scale.
"""

from __future__ import annotations

import numpy as np

from aquatic.functional.neurons_jit_kernels import (
    advance,
    drive_of,
    inline,
    jit,
    job_block,
    job_lanes,
    job_layout,
    job_range,
    numba,
)
from aquatic.functional.neurons_jit_backward_plain import part as row_part
from aquatic.functional.neurons_jit_backward_plain import run_plain
from aquatic.functional.neurons_jit_slopes import (
    ARCTAN,
    FAST_SIGMOID,
    GIVEN,
    TRIANGLE,
    arctan,
    constants,
    fast_sigmoid,
    slopes_into,
    triangle,
)

__all__ = ["backward"]

if numba is not None:

    @inline
    def _kept(u, h, low, spiking, zero_reset, one, zero):
        """1 where the membrane ``u`` after the reset is at or above the clamp ``low``
        (the clamp's mask), else 0."""
        post = u
        if spiking:
            if zero_reset:
                post = zero if u >= h else u
            else:
                post = u - h * (one if u >= h else zero)
        return one if post >= low else zero

    @jit
    def backward(
        flags, consts, v_pre, v_before, g_spikes, g_trace, g_final, inflow, alpha,
        threshold, grad_v, acc_alpha, acc_threshold, acc_bias, g_itrace, g_ifinal,
        alpha_syn, gain, carry, slopes, x, bias, v_states, i_states,
    ):  # fmt: skip
        r"""Steps ``first:last`` of the membranes' gradient ``grad_v`` ``(N, T, F)``, or
        with a synaptic current of the current's gradient.

        ``v_pre``: the segment's membranes before the reset, ``(N, S, F)``;
        ``v_before``: the membrane entering step ``first``;
        ``inflow``: the segment's input to the membrane ``(N, S, F)`` (the decay's
        gradient with ``norm_input``); ``grad_v[:, last]`` holds the later steps'
        gradient where ``last < n_steps``. The accumulators ``(N, F)`` receive each
        neuron's sum over the steps (added to them). ``first:last`` may be a block of
        the segment that starts at step ``seg_first`` (``v_pre``'s first step, which
        ``v_before`` enters); ``slopes`` ``(N, last - first, F)`` are the block's
        surrogate slopes where ``kind`` is ``GIVEN``.

        With a synaptic current (``synaptic``) ``grad_v`` receives the current's
        gradient :math:`\partial L/\partial i[t] = (1 - \alpha_{mem})^{[norm]} g_t +
        \bar i_t + \alpha_{syn}\, \partial L/\partial i[t+1]` (``g_itrace`` the
        recorded current's gradient, mode ``gi_mode``, ``g_ifinal`` the final one's;
        ``gain`` is :math:`1 - \alpha_{mem}`), and the membranes' gradients stay in
        the job: ``carry`` ``(N, F)`` holds :math:`g` of step ``last`` on entry (where
        ``last < n_steps``) and of step ``first`` on return.

        With ``every`` the membranes are not given (``v_pre`` and ``inflow`` are
        empty, ``first:last`` the whole sequence): each job recomputes the segments
        that start at steps ``0, every, 2 every, ...``, from the last, from the
        input ``x`` ``(N, T, F)``, the states ``v_states`` and ``i_states`` ``(S, N,
        F)`` that enter them and the ``bias`` (with ``gain``, ``alpha_syn``,
        ``alpha`` and ``threshold``), by the forward loop's ``drive_of`` and
        ``advance``, into a buffer of ``every`` steps of the job, and runs each back
        from it.

        A job covers whole rows of ``F`` elements where ``F`` is at most
        :data:`~aquatic.functional.neurons_jit_kernels.JOB_LANES`, else a part of each
        row (``row_part``, :func:`~aquatic.functional.neurons_jit_backward_plain.part`).
        """
        n_batch, n_feat = v_before.shape
        # fmt: off
        (spiking, zero_reset, detach, clamp, gs_mode, gt_mode, has_final, need_alpha,
         need_threshold, need_bias, norm, first, last, n_steps, kind,
         synaptic, gi_mode, has_ifinal, norm_input, seg_first, every, has_bias, part,
         parts) = flags
        # fmt: on
        zero, one, low, width, scale = consts[0], consts[1], consts[2], consts[3], consts[4]
        c1, c2 = constants(kind, width, scale, one)
        rows, chunk, jobs = job_layout(n_batch, n_feat)
        if last <= first:
            return
        dtype = v_before.dtype
        sl = np.zeros(chunk, dtype)
        # stand-ins for absent rows, and one value for every element (a sum's gradient)
        absent = np.zeros(n_feat, dtype)
        gs_row = np.full(n_feat, g_spikes[0, 0, 0] if gs_mode == 2 else zero)
        gt_row = np.full(n_feat, g_trace[0, 0, 0] if gt_mode == 2 else zero)
        gi_row = np.full(n_feat, g_itrace[0, 0, 0] if gi_mode == 2 else zero)
        # with a synaptic current: g of steps t and t + 1 of the job's rows (by parity)
        held = np.zeros((2, rows, chunk) if synaptic else (2, 1, 1), dtype)
        # recomputing: the membranes before the reset of a segment's steps, and its
        # currents where they are the decay's input term; the state, the spikes and the
        # input to the membrane of one step
        segments = -(-(last - first) // every) if every else 1
        span = min(every, last - first)  # a checkpoint may be longer than the sequence
        v_job = np.empty((span, rows, chunk) if every else (1, 1, 1), dtype)
        i_job = np.empty((span, rows, chunk) if every and norm and synaptic else (1, 1, 1), dtype)
        v_now = np.empty((rows, chunk), dtype)
        i_now = np.empty((rows, chunk), dtype)
        spikes = np.empty(chunk, dtype)
        drive = np.empty(chunk, dtype)
        # the common case, one loop without branches: binary spikes, gradients of
        # the spikes only, no clamp, no detached reset, a step with a later one
        plain = spiking and gs_mode and not (detach or clamp or gt_mode)
        whole = chunk == n_feat
        for job in range(*job_range(jobs, part, parts)):
            n0, n1, o, f1 = job_block(job, rows, chunk, n_batch, n_feat)
            m = f1 - o
            a = job_lanes(alpha, n0, n1, o, f1)
            h = job_lanes(threshold, n0, n1, o, f1)
            decay = job_lanes(alpha_syn, n0, n1, o, f1) if synaptic else a
            gain_j = job_lanes(gain, n0, n1, o, f1) if norm_input else a
            bias_j = job_lanes(bias, n0, n1, o, f1) if has_bias and every else a
            factor_i = gain_j if norm_input else decay
            if synaptic:
                if last < n_steps:
                    held[last & 1, : n1 - n0, :m] = carry[n0:n1, o:f1]
            sum_a = np.zeros((n1 - n0, m), dtype)
            sum_h = np.zeros((n1 - n0, m), dtype)
            sum_b = np.zeros((n1 - n0, m), dtype)
            # fmt: off
            job_plain = (plain and not (every or synaptic or has_final or need_alpha
                                        or need_threshold) and kind != GIVEN)
            if job_plain:
                run_plain(kind, zero_reset, (v_pre, g_spikes, gs_row, gs_mode, grad_v, a, h,
                                             sum_b, need_bias, n0, n1, o, f1, first, last,
                                             seg_first, n_steps, c1, c2, one, zero))
            # fmt: on
            for seg in range(-1 if job_plain else segments - 1, -1, -1):  # plain: ran above
                if every:  # the segment's membranes, recomputed from its first state
                    s0 = first + seg * every
                    s1 = min(s0 + every, last)
                    base = s0
                    for r in range(n1 - n0):
                        v_now[r, :m] = v_states[seg, n0 + r, o:f1]
                        if synaptic:
                            i_now[r, :m] = i_states[seg, n0 + r, o:f1]
                    for t in range(s0, s1):
                        for r in range(n1 - n0):
                            # fmt: off
                            src = drive_of(x[n0 + r, t, o:f1], i_now, decay, gain_j, bias_j, r,
                                           drive, m, synaptic, norm_input, has_bias)
                            advance(src, v_now[r], a[r], h[r], v_job[t - s0, r], spikes, m,
                                    spiking, zero_reset, clamp, low, zero, one)
                            # fmt: on
                            if norm and synaptic:
                                i_job[t - s0, r, :m] = i_now[r, :m]
                else:
                    s0, s1, base = first, last, seg_first
                for t in range(s1 - 1, s0 - 1, -1):
                    s_t = t - base  # the step in the segment
                    later = t < n_steps - 1  # a later step's gradient flows in
                    final = has_final and t == n_steps - 1
                    for r in range(n1 - n0):
                        n = n0 + r
                        # this job's lanes of each row: [o, f1)
                        if every:
                            v = v_job[s_t, r]
                        else:
                            v = row_part(v_pre[n, s_t], o, f1, whole)
                        ar, hr = a[r], h[r]
                        gs = row_part(g_spikes[n, t] if gs_mode == 1 else gs_row, o, f1, whole)
                        gt = row_part(g_trace[n, t] if gt_mode == 1 else gt_row, o, f1, whole)
                        gf = row_part(g_final[n] if final else absent, o, f1, whole)
                        if synaptic:  # g_t and g_{t+1} in the job
                            out = held[t & 1, r, :m]
                            gn = held[(t + 1) & 1, r, :m]
                        else:
                            gn = row_part(grad_v[n, t + 1] if later else absent, o, f1, whole)
                            out = row_part(grad_v[n, t], o, f1, whole)
                        # One array written per loop: more keep Numba's loops from
                        # vectorizing (the checks that the arrays do not overlap). The
                        # plainest case computes the slopes in its loop (one loop per
                        # surrogate: a branch in the loop halved its speed); others,
                        # and the exponential (whose loop here took 5 times as long as
                        # in a function of its own), take them from a row computed
                        # first.
                        inline = plain and later and not final and not zero_reset
                        if inline and kind == ARCTAN:
                            for k in range(m):
                                hk = hr[k]
                                psi = arctan(v[k] - hk, c1, c2, one, zero)
                                out[k] = psi * gs[k] + gn[k] * ((psi * -hk + one) * ar[k])
                        elif inline and kind == FAST_SIGMOID:
                            for k in range(m):
                                hk = hr[k]
                                psi = fast_sigmoid(v[k] - hk, c1, c2, one, zero)
                                out[k] = psi * gs[k] + gn[k] * ((psi * -hk + one) * ar[k])
                        elif inline and kind == TRIANGLE:
                            for k in range(m):
                                hk = hr[k]
                                psi = triangle(v[k] - hk, c1, c2, one, zero)
                                out[k] = psi * gs[k] + gn[k] * ((psi * -hk + one) * ar[k])
                        else:
                            if spiking and kind == GIVEN:
                                given = row_part(slopes[n, t - first], o, f1, whole)
                                for k in range(m):
                                    sl[k] = given[k]
                            elif spiking:
                                slopes_into(kind, v, hr, c1, c2, sl, m, one, zero)
                            if plain and later and not final and zero_reset:
                                for k in range(m):
                                    u, psi = v[k], sl[k]
                                    coef = (one if u < hr[k] else zero) - psi * u
                                    out[k] = psi * gs[k] + gn[k] * (coef * ar[k])
                            elif plain and later and not final:
                                for k in range(m):
                                    psi = sl[k]
                                    coef = psi * -hr[k] + one
                                    out[k] = psi * gs[k] + gn[k] * (coef * ar[k])
                            else:
                                for k in range(m):
                                    # every array read unconditionally (absent ones are
                                    # stand-ins), so that the loop vectorizes without masked
                                    # loads
                                    u, hk, psi, ak = v[k], hr[k], sl[k], ar[k]
                                    s_k, t_k, f_k, n_k = gs[k], gt[k], gf[k], gn[k]
                                    b = zero
                                    coef = one
                                    if spiking:
                                        if gs_mode:
                                            b = psi * s_k
                                        if detach:
                                            if zero_reset:
                                                coef = one if u < hk else zero
                                        elif zero_reset:
                                            coef = (one if u < hk else zero) - psi * u
                                        else:
                                            coef = psi * -hk + one
                                    if clamp:
                                        coef = coef * _kept(
                                            u, hk, low, spiking, zero_reset, one, zero
                                        )
                                    if gt_mode:
                                        b = b + coef * t_k
                                    if final:
                                        b = b + coef * f_k
                                    if later:
                                        b = b + n_k * (coef * ak)
                                    out[k] = b
                        if need_threshold:
                            # dL/d(reset membrane) hat, then sum((R_t - s_t) hat - g_t): the
                            # factor is 1 below the threshold, 0 at or above it
                            sh = sum_h[r]
                            for k in range(m):
                                u, hk = v[k], hr[k]
                                hat = zero
                                if later:
                                    hat = gn[k] * ar[k]
                                elif final:
                                    hat = gf[k]
                                if gt_mode:
                                    hat = hat + gt[k]
                                if clamp:
                                    hat = hat * _kept(u, hk, low, spiking, zero_reset, one, zero)
                                if zero_reset:
                                    factor = one if u < hk else zero
                                else:
                                    factor = one - (one if u >= hk else zero)
                                sh[k] += hat * factor - out[k]
                        if need_alpha:
                            # g_t times the membrane after the previous step's reset (the
                            # state entering the segment at its first step)
                            sa = sum_a[r]
                            if t > base:
                                if every:
                                    prev = v_job[s_t - 1, r]
                                else:
                                    prev = row_part(v_pre[n, s_t - 1], o, f1, whole)
                                for k in range(m):
                                    p = prev[k]
                                    if spiking:
                                        if zero_reset:
                                            p = zero if p >= hr[k] else p
                                        else:
                                            p = p - hr[k] * (one if p >= hr[k] else zero)
                                    if clamp and p < low:
                                        p = low
                                    sa[k] += out[k] * p
                            else:
                                prev = v_states[seg, n] if every else v_before[n]
                                prev = row_part(prev, o, f1, whole)
                                for k in range(m):
                                    sa[k] += out[k] * prev[k]
                            if norm:
                                if every and synaptic:
                                    flow = i_job[s_t, r]
                                elif every:
                                    flow = row_part(x[n, t], o, f1, whole)
                                else:
                                    flow = row_part(inflow[n, s_t], o, f1, whole)
                                for k in range(m):
                                    sa[k] -= out[k] * flow[k]
                        if need_bias:
                            sb = sum_b[r]
                            for k in range(m):
                                sb[k] += out[k]
                        if synaptic:
                            # the current's gradient: the PyTorch tail's scan, one step
                            gi = row_part(g_itrace[n, t] if gi_mode == 1 else gi_row, o, f1, whole)
                            gif = row_part(g_ifinal[n] if has_ifinal else absent, o, f1, whole)
                            gin = row_part(grad_v[n, t + 1] if later else absent, o, f1, whole)
                            into = row_part(grad_v[n, t], o, f1, whole)
                            fr, dr = factor_i[r], decay[r]
                            final_i = has_ifinal and t == n_steps - 1
                            for k in range(m):
                                b = out[k] * fr[k] if norm_input else out[k]
                                i_k, f_k, n_k = gi[k], gif[k], gin[k]
                                if gi_mode:
                                    b = b + i_k
                                if final_i:
                                    b = b + f_k
                                if later:
                                    b = b + n_k * dr[k]
                                into[k] = b
            if need_alpha:
                acc_alpha[n0:n1, o:f1] += sum_a
            if need_threshold:
                acc_threshold[n0:n1, o:f1] += sum_h
            if need_bias:
                acc_bias[n0:n1, o:f1] += sum_b
            if synaptic:
                carry[n0:n1, o:f1] = held[first & 1, : n1 - n0, :m]

else:  # pragma: no cover
    backward = None
