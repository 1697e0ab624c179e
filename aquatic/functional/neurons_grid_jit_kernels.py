r"""The forward loop of the fused sequence with quantized states, compiled by Numba.

Importing this module imports Numba (without it :func:`grid_forward_kernel` is an
``ImportError``); :mod:`aquatic.functional.neurons_grid_jit` imports it on first use and
prepares the arrays. Per
element and step it runs the operations of the reference loop as
:mod:`aquatic.functional.neurons_grid_steps` writes them, in the same order and dtype:
the decay :math:`s\, \mathrm{rule}(\mathrm{clip}(\mathrm{rint}(y / s)))` (or
:math:`\alpha y` without a rule), torch's fake quantization
:math:`\mathrm{clip}(\mathrm{rint}(y \cdot (1/s))) \cdot s` (the product in float32),
the spike, the reset and the clamp. Those are correctly rounded IEEE 754 operations, and
the minimum, maximum and clip are NumPy's (a NaN propagates), so the results are the
NumPy loop's bits (Numba compiles without fast-math). Where the NumPy loop reads known
integer codes instead of rounding a state again, it proves that the two agree; this
loop always rounds.

Jobs and flags as in :mod:`aquatic.functional.neurons_jit_kernels`. The arrays: the
input, the spikes and the recorded membrane batch major ``(N, T, F)``; the per-neuron
arrays (initial and final states, decays, threshold, gain, bias) flat ``(N F,)``; the
time-major results (membranes before the reset, currents, masks) ``(T, N F)``. A job's
neurons are then one contiguous run of the flat arrays, and each operation on its state
is one loop over all of them (a job of several samples holds every feature), rather
than one loop per sample, which matters for narrow layers (a layer of eight features
runs about four times faster so). Each step's membrane is computed in place in the
tensor that backward reads. Flags:
``synaptic, norm_input, bias, spiking, zero_reset, clamp, keep_trace, keep_current,
need_grad, strict, after_decay, delay, rule_v, wide_v, quantize_v, rule_i, wide_i,
quantize_i, keep_v_mask, keep_i_mask`` (a rule: 0 none, 1 bit shift, 2
multiplicative; ``wide``: its product in float64). Constants in the values' dtype:
``0, 1, min_v_mem``, then for the membrane and the current each ``scale, low, high``
(the decay's grid and code range) and ``inverse, code_low, code_high`` (the
quantizer's); ``scales32``: the quantizers' float32 scales.
"""

from __future__ import annotations

import numpy as np

from aquatic.functional.neurons_jit_kernels import inline, jit, job_block, job_layout, job_range

try:  # optional: the compiled loops exist where Numba is installed
    import numba
except ImportError:  # pragma: no cover - the NumPy loop runs instead
    numba = None

__all__ = ["grid_forward_kernel"]

if numba is not None:

    @inline
    def maximum(a, b):  # np.maximum: a NaN in either propagates
        return a if (a >= b or a != a) else b

    @inline
    def minimum(a, b):  # np.minimum
        return a if (a <= b or a != a) else b

    @inline
    def decay_into(y, out, rule, wide, alpha, factor, keep, keep64, scale, low, high, one):
        """The decay of the row ``y`` into the row ``out`` (may be ``y``)."""
        m = y.shape[0]
        if rule == 0:
            for k in range(m):
                out[k] = alpha[k] * y[k]
            return
        for k in range(m):
            out[k] = minimum(maximum(np.rint(y[k] / scale), low), high)
        if rule == 1:  # c - max(floor(c 2**-dash), min(c, 1))
            for k in range(m):
                c = out[k]
                out[k] = c - maximum(np.floor(c * factor[k]), minimum(c, one))
        elif wide:  # the product in float64; the truncated codes back in the dtype
            for k in range(m):
                out[k] = np.trunc(np.float64(out[k]) * keep64[k])
        else:
            for k in range(m):
                out[k] = np.trunc(out[k] * keep[k])
        for k in range(m):
            out[k] = out[k] * scale

    @inline
    def quantize_into(y, inverse, code_low, code_high, scale32, mask, keep_mask):
        """torch's fake quantization of the row ``y`` in place, the in-range mask into
        ``mask`` when ``keep_mask``."""
        m = y.shape[0]
        if keep_mask:
            for k in range(m):
                z = np.rint(y[k] * inverse)
                q = minimum(maximum(z, code_low), code_high)
                mask[k] = z == q
                y[k] = np.float32(q) * scale32
        else:
            for k in range(m):
                q = minimum(maximum(np.rint(y[k] * inverse), code_low), code_high)
                y[k] = np.float32(q) * scale32

    @jit
    def forward(
        flags, consts, scales32, x, v0, i0, alpha_v, factor_v,
        keep_v, keep64_v, alpha_i, factor_i, keep_i, keep64_i, threshold, gain, bias,
        spikes, trace, v_pre, v_mask, current, i_mask, v_final, i_final,
    ):  # fmt: skip
        n_batch, n_steps, n_feat = x.shape
        # fmt: off
        (synaptic, norm, has_bias, spiking, zero_reset, clamp, keep_trace, keep_current,
         need_grad, strict, after, late, rule_v, wide_v, has_qv, rule_i, wide_i, has_qi,
         keep_vm, keep_im, part, parts) = flags
        # fmt: on
        zero, one, low = consts[0], consts[1], consts[2]
        sv, lv, hv, inv_v, qlv, qhv = consts[3:9]
        si, li, hi, inv_i, qli, qhi = consts[9:15]
        scale_qv, scale_qi = scales32[0], scales32[1]
        no_mask = np.empty(0, np.bool_)
        rows, chunk, jobs = job_layout(n_batch, n_feat)
        for job in range(*job_range(jobs, part, parts)):
            n0, n1, f0, f1 = job_block(job, rows, chunk, n_batch, n_feat)
            m, count = f1 - f0, n1 - n0
            # The job's neurons are one contiguous run of the flat per-neuron arrays (a
            # job of several samples takes every feature), so the state's operations are
            # one loop each over all of them; only the loops that read the batch-major
            # input or write the batch-major outputs go row by row.
            if count > 1 and m != n_feat:  # job_layout's promise, which the runs rely on
                raise ValueError("a job of several samples must take every feature")
            first = n0 * n_feat + f0
            last = first + count * m
            v = v0[first:last].copy()
            i = i0[first:last].copy() if synaptic else v.copy()
            av, fv, kv, k64v = (
                alpha_v[first:last],
                factor_v[first:last],
                keep_v[first:last],
                keep64_v[first:last],
            )
            ai, fi, ki, k64i = (
                alpha_i[first:last],
                factor_i[first:last],
                keep_i[first:last],
                keep64_i[first:last],
            )
            h, g, b = threshold[first:last], gain[first:last], bias[first:last]
            drive = np.empty(count * m, x.dtype)
            buf = np.empty(count * m, x.dtype)
            for t in range(n_steps):
                if synaptic:
                    if after:  # Q(D(i) + x)
                        decay_into(i, i, rule_i, wide_i, ai, fi, ki, k64i, si, li, hi, one)
                    if late and t == 0:  # a delayed input enters one step late: + 0
                        for k in range(i.shape[0]):
                            i[k] = i[k] + zero
                    else:
                        for r in range(count):
                            xr = x[n0 + r, t - late, f0:f1]
                            for k in range(m):
                                i[r * m + k] = i[r * m + k] + xr[k]
                    if not after:  # D(i + x), then Q
                        decay_into(i, i, rule_i, wide_i, ai, fi, ki, k64i, si, li, hi, one)
                    if has_qi:
                        mask = i_mask[t, first:last] if keep_im else no_mask
                        quantize_into(i, inv_i, qli, qhi, scale_qi, mask, keep_im)
                    if keep_current:
                        current[t, first:last] = i
                    d = drive
                    if norm and has_bias:
                        for k in range(i.shape[0]):
                            drive[k] = g[k] * i[k] + b[k]
                    elif norm:
                        for k in range(i.shape[0]):
                            drive[k] = g[k] * i[k]
                    elif has_bias:
                        for k in range(i.shape[0]):
                            drive[k] = i[k] + b[k]
                    else:
                        d = i  # the current drives the membrane as it is
                else:
                    for r in range(count):
                        xr = x[n0 + r, t, f0:f1]
                        o = r * m
                        if norm and has_bias:
                            for k in range(m):
                                drive[o + k] = g[o + k] * xr[k] + b[o + k]
                        elif norm:
                            for k in range(m):
                                drive[o + k] = g[o + k] * xr[k]
                        elif has_bias:
                            for k in range(m):
                                drive[o + k] = xr[k] + b[o + k]
                        else:
                            drive[o : o + m] = xr
                    d = drive
                # the membrane before the reset, computed where backward reads it
                u_t = v_pre[t, first:last] if need_grad else buf
                decay_into(v, u_t, rule_v, wide_v, av, fv, kv, k64v, sv, lv, hv, one)
                for k in range(u_t.shape[0]):
                    u_t[k] = u_t[k] + d[k]
                if has_qv:
                    mask = v_mask[t, first:last] if keep_vm else no_mask
                    quantize_into(u_t, inv_v, qlv, qhv, scale_qv, mask, keep_vm)
                if spiking:
                    for r in range(count):
                        st = spikes[n0 + r, t, f0:f1]
                        o = r * m
                        for k in range(m):
                            u = u_t[o + k]
                            up = u > h[o + k] if strict else u >= h[o + k]
                            s = one if up else zero
                            st[k] = s
                            if not zero_reset:
                                v[o + k] = u - s * h[o + k]
                            elif has_qv:
                                v[o + k] = u - u * s
                            else:
                                v[o + k] = zero if up else u
                else:
                    v[:] = u_t
                if clamp:
                    for k in range(v.shape[0]):
                        v[k] = maximum(v[k], low)
                if keep_trace:
                    for r in range(count):
                        trace[n0 + r, t, f0:f1] = v[r * m : (r + 1) * m]
            v_final[first:last] = v
            if synaptic:
                i_final[first:last] = i

else:  # pragma: no cover
    forward = None


def grid_forward_kernel():
    """The compiled loop (an ``ImportError`` without Numba)."""
    if numba is None:
        raise ImportError("the compiled loops need Numba: pip install 'aquatic[fast]'")
    return forward
