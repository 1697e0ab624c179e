"""The loops of the fused LIF sequence: forward and backward passes without autograd.

:mod:`aquatic.functional.neurons_fused` runs them as one autograd function (eagerly)
or as one custom operator (under ``torch.compile``); the equations are in its module
docstring. Both run exactly these functions, so a compiled layer computes the bits of
an eager one.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.neuron_types import Options
from aquatic.functional.surrogate import spike_values

__all__ = ["sequence_forward", "sequence_backward", "BLOCK_ELEMENTS", "block_steps"]

#: Elements per block of time steps. Work on whole blocks keeps the per-step Python
#: overhead low; bounding their size keeps the backward pass's temporaries small.
BLOCK_ELEMENTS = 1 << 18


def block_steps(x: Tensor) -> int:
    """The time steps of a block of ``x`` (``(N, T, *)``): :data:`BLOCK_ELEMENTS` values."""
    step_numel = max(x[:, 0].numel(), 1)
    return max(1, BLOCK_ELEMENTS // step_numel)


def _spikes_into(out: Tensor, v: Tensor, threshold: Tensor, max_spikes: int) -> None:
    if max_spikes == 1:
        torch.ge(v, threshold, out=out)
    else:
        out.copy_(spike_values(v, threshold, max_spikes))


def _counts(v: Tensor, threshold: Tensor, max_spikes: int) -> Tensor:
    out = torch.empty_like(v)
    _spikes_into(out, v, threshold, max_spikes)
    return out


def _reset(v: Tensor, threshold: Tensor, options, counts: Optional[Tensor] = None) -> Tensor:
    """The membrane after the reset and before the clamp (as the forward pass computes it)."""
    if not options.spiking:
        return v
    if options.reset == "subtract":
        if counts is None:
            counts = _counts(v, threshold, options.max_spikes)
        return v - threshold * counts
    return torch.where(v >= threshold, torch.zeros((), dtype=v.dtype, device=v.device), v)


def _add(total: Optional[Tensor], grad: Tensor, like: Tensor) -> Tensor:
    grad = grad.sum_to_size(like.shape)
    return grad if total is None else total + grad


def sequence_forward(
    x: Tensor,
    v0: Tensor,
    i0: Optional[Tensor],
    alpha_mem: Tensor,
    alpha_syn: Optional[Tensor],
    threshold: Tensor,
    bias: Optional[Tensor],
    options: Options,
    record: bool,
    need_grad: bool,
    keep_current: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor], Tensor, Optional[Tensor]]:
    """The whole sequence, step by step, without autograd.

    ``need_grad``: keep what backward reads (the membranes before the reset);
    ``keep_current``: keep the synaptic current of every step (recorded, or read by
    backward).

    Returns:
        ``(output, v_trace, current, v_pre, v_final, i_final)``: spikes (the membrane
        for a non-spiking neuron), the recorded membrane (spiking neurons only), the
        current of every step, the membranes before the reset kept for backward (``None``
        when not needed; ``output`` itself for a non-spiking neuron without a clamp),
        and the final state.
    """
    n_steps = x.shape[1]
    block = block_steps(x)
    synaptic = alpha_syn is not None
    spiking = options.spiking
    min_v_mem = options.min_v_mem

    current = torch.empty_like(x) if keep_current else None
    # trace: membrane after reset (and clamp), kept when recorded and as the output of
    # a non-spiking neuron; v_pre: membrane before the reset, kept for backward.
    trace = torch.empty_like(x) if record or not spiking else None
    if not spiking and min_v_mem is None:
        v_pre = trace
    else:
        v_pre = torch.empty_like(x) if need_grad else None
    spikes = torch.empty_like(x) if spiking else None
    step_v = torch.empty_like(v0) if v_pre is None else None
    post = torch.empty_like(v0) if trace is None else None
    buf = torch.empty_like(v0)
    if synaptic:
        syn_block = None if keep_current else x.new_empty((x.shape[0], block) + x.shape[2:])
    if spiking and options.reset == "zero":
        fired = torch.empty(v0.shape, dtype=torch.bool, device=v0.device)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
    i, state = i0, v0
    subtract = spiking and options.reset == "subtract"
    binary = options.max_spikes == 1
    for start in range(0, n_steps, block):
        stop = min(start + block, n_steps)
        # The views of every step of the block at once (unbind): cheaper than indexing
        # each step.
        if synaptic:
            cur = current[:, start:stop] if keep_current else syn_block[:, : stop - start]
            for x_t, cur_t in zip(x[:, start:stop].unbind(1), cur.unbind(1)):
                torch.add(i, x_t, out=buf)
                torch.mul(buf, alpha_syn, out=cur_t)
                i = cur_t
        else:
            cur = x[:, start:stop]
        drive = (1 - alpha_mem) * cur if options.norm_input else cur
        if bias is not None:
            drive = drive + bias
        n = stop - start
        pres = v_pre[:, start:stop].unbind(1) if v_pre is not None else (step_v,) * n
        targets = trace[:, start:stop].unbind(1) if trace is not None else (post,) * n
        steps = spikes[:, start:stop].unbind(1) if spiking else (None,) * n
        for v, drive_t, target, s in zip(pres, drive.unbind(1), targets, steps):
            torch.mul(state, alpha_mem, out=buf)
            torch.add(buf, drive_t, out=v)
            if spiking:
                _spikes_into(s, v, threshold, options.max_spikes)
                if subtract and binary:
                    # s is 0 or 1, so threshold * s is exact and v - threshold * s
                    # rounds once, fused multiply-add or not: the loop's bits, one
                    # operation fewer.
                    torch.addcmul(v, s, threshold, value=-1, out=target)
                elif subtract:
                    torch.mul(threshold, s, out=buf)
                    torch.sub(v, buf, out=target)
                else:
                    torch.ge(v, threshold, out=fired)
                    torch.where(fired, zero, v, out=target)
                if min_v_mem is not None:
                    target.clamp_(min=min_v_mem)
                state = target
            elif min_v_mem is not None:
                torch.clamp(v, min=min_v_mem, out=target)
                state = target
            else:
                state = v
    v_final = state.clone()
    i_final = i.clone() if synaptic else None

    output = spikes if spiking else trace
    v_trace = trace if spiking and record else None
    return output, v_trace, current, v_pre, v_final, i_final


def sequence_backward(
    options: Options,
    needs: Tuple[bool, ...],
    saved: Tuple[Optional[Tensor], ...],
    grads: Tuple[Optional[Tensor], ...],
) -> Tuple[Optional[Tensor], ...]:
    """The gradients of :func:`sequence_forward`'s inputs.

    Args:
        options: the neuron's options.
        needs: whether each of ``x, v0, i0, alpha_mem, alpha_syn, threshold, bias``
            needs its gradient.
        saved: ``(v_pre, current, x, v0, i0, alpha_mem, alpha_syn, threshold, bias)``
            (``current`` and ``x`` may be ``None`` when no gradient reads them).
        grads: the gradients of ``(output, v_trace, i_trace, v_final, i_final)``
            (``None`` for zero).

    Returns:
        The gradients of ``x, v0, i0, alpha_mem, alpha_syn, threshold, bias`` (``None``
        where not needed).
    """
    v, current, x, v0, i0, alpha_mem, alpha_syn, threshold, bias = saved
    g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal = grads
    n_steps = v.shape[1]
    spiking, reset, min_v_mem = options.spiking, options.reset, options.min_v_mem
    g_spikes, g_trace = (g_out, g_vtrace) if spiking else (None, g_out)
    grad_threshold = spiking and needs[5]
    grad_v = torch.empty_like(v)
    g_alpha = g_threshold = g_bias = None

    # Blocks of steps from the last one back: everything nonlinear is computed for a
    # whole block at once, then the linear scan g_t = A_t alpha g_{t+1} + B_t runs
    # step by step (see the module docstring).
    block = block_steps(v)
    for start in reversed(range(0, n_steps, block)):
        stop = min(start + block, n_steps)
        vb = v[:, start:stop]
        gb = grad_v[:, start:stop]
        counts = v_reset = clamp_mask = None
        if spiking and reset == "subtract" and (grad_threshold or min_v_mem is not None):
            counts = _counts(vb, threshold, options.max_spikes)
        if min_v_mem is not None:
            v_reset = _reset(vb, threshold, options, counts)
            clamp_mask = v_reset >= min_v_mem
            del v_reset
        keep = (vb < threshold) if spiking and reset == "zero" else None  # R_t

        # B_t, then A_t = m_t (R_t + psi_t K_t) in the same buffer (None stands for 1).
        coef = None
        if spiking:
            slope = options.surrogate.derivative_(vb - threshold)
            if g_spikes is not None:
                torch.mul(slope, g_spikes[:, start:stop], out=gb)
            else:
                gb.zero_()
            if options.detach_reset:
                coef = keep.to(v.dtype) if keep is not None else None
            elif reset == "subtract":
                coef = slope.mul_(-threshold).add_(1)
            else:
                coef = slope.mul_(vb).neg_().add_(keep)
            del slope
        else:
            gb.zero_()
        if clamp_mask is not None:
            coef = clamp_mask.to(v.dtype) if coef is None else coef.mul_(clamp_mask)
        if g_trace is not None:
            if coef is None:
                gb.add_(g_trace[:, start:stop])
            else:
                gb.addcmul_(coef, g_trace[:, start:stop])
        if stop == n_steps and g_vfinal is not None:
            gb[:, -1].add_(g_vfinal if coef is None else coef[:, -1] * g_vfinal)
        if coef is None:
            factors = [alpha_mem] * (stop - start)
        else:
            coef.mul_(alpha_mem)
            factors = coef.unbind(1)
        steps = grad_v[:, start : min(stop + 1, n_steps)].unbind(1)
        for k in range(len(steps) - 2, -1, -1):
            steps[k].addcmul_(steps[k + 1], factors[k])
        del coef, factors

        if grad_threshold:
            # dL/d(reset membrane) g_hat, then sum((R - s_sub) g_hat - g).
            g_hat = torch.empty_like(gb)
            torch.mul(
                grad_v[:, start + 1 : stop + 1], alpha_mem, out=g_hat[:, : n_steps - 1 - start]
            )
            if stop == n_steps:
                g_hat[:, -1] = 0 if g_vfinal is None else g_vfinal
            if g_trace is not None:
                g_hat.add_(g_trace[:, start:stop])
            if clamp_mask is not None:
                g_hat.mul_(clamp_mask)
            factor = counts.neg_().add_(1) if reset == "subtract" else keep
            g_threshold = _add(g_threshold, g_hat.mul_(factor).sub_(gb), threshold)
            del g_hat, factor
        if needs[3]:
            # sum_t g_t v_post[t-1]: the membranes after the previous steps' resets.
            if start == 0:
                g_alpha = _add(g_alpha, gb[:, 0] * v0, alpha_mem)
            prev = v[:, max(start - 1, 0) : stop - 1]
            if prev.shape[1]:
                v_post = _reset(prev, threshold, options)
                if min_v_mem is not None:
                    v_post = v_post.clamp(min=min_v_mem)
                first = 1 if start == 0 else 0
                g_alpha = _add(g_alpha, gb[:, first:] * v_post, alpha_mem)
                del v_post
            if options.norm_input:
                inflow = (current if current is not None else x)[:, start:stop]
                g_alpha = _add(g_alpha, -(gb * inflow), alpha_mem)
        if needs[6]:
            g_bias = _add(g_bias, gb, bias)
        del counts, clamp_mask, keep

    g_x = g_v0 = g_i0 = g_syn = None
    if needs[1]:
        g_v0 = grad_v[:, 0] * alpha_mem
    grad_i = grad_v.mul_(1 - alpha_mem) if options.norm_input else grad_v
    if alpha_syn is None:
        g_x = grad_i if needs[0] else None
    else:
        if g_itrace is not None:
            grad_i.add_(g_itrace)
        if g_ifinal is not None:
            grad_i[:, -1].add_(g_ifinal)
        steps = grad_i.unbind(1)
        for t in range(n_steps - 2, -1, -1):
            steps[t].addcmul_(steps[t + 1], alpha_syn)
        if needs[2]:
            g_i0 = grad_i[:, 0] * alpha_syn
        if needs[4]:
            # i[t] = alpha_syn (i[t-1] + x[t]): the factor is the sum before the decay.
            for start in range(0, n_steps, block):
                stop = min(start + block, n_steps)
                pre = x[:, start:stop].clone()
                if start == 0:
                    pre[:, 0].add_(i0)
                    pre[:, 1:].add_(current[:, : stop - 1])
                else:
                    pre.add_(current[:, start - 1 : stop - 1])
                g_syn = _add(g_syn, pre.mul_(grad_i[:, start:stop]), alpha_syn)
        if needs[0]:
            g_x = grad_i.mul_(alpha_syn)
    return g_x, g_v0, g_i0, g_alpha, g_syn, g_threshold, g_bias
