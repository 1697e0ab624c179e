"""The backward pass of the fused LIF sequence, without autograd (the equations are in
:mod:`aquatic.functional.neurons_fused`), and its recomputation of checkpointed
segments. Where Numba's compiled loop applies
(:func:`aquatic.functional.neurons_jit_backward.backward_ok`) each segment's membrane
gradients and parameter sums come from it instead of the blocks of PyTorch operations
here."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional import neurons_jit_backward
from aquatic.functional.neuron_types import Options
from aquatic.functional.neurons_kernel import (
    block_steps,
    currents_into,
    sequence_forward,
    spikes_into,
)
from aquatic.functional.subnormals import flushing

__all__ = ["sequence_backward"]


def _counts(v: Tensor, threshold: Tensor, max_spikes: int) -> Tensor:
    out = torch.empty_like(v)
    spikes_into(out, v, threshold, max_spikes)
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


def _batch_first(buffer: Tensor, like: Tensor) -> Tensor:
    """The start of a flat ``buffer`` as a contiguous tensor of ``like``'s shape."""
    return buffer[: like.numel()].view(like.shape)


def _keeps_graph() -> bool:
    """Whether the backward pass running now keeps the graph (``retain_graph``), so
    that its saved tensors are read again (``True`` where PyTorch does not say)."""
    keeps = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keeps is None else bool(keeps())


def _add(total: Optional[Tensor], grad: Tensor, like: Tensor) -> Tensor:
    grad = grad.sum_to_size(like.shape)
    return grad if total is None else total + grad


def _segments(saved, options: Options, checkpoint: Optional[int], keep_current: bool):
    """``(start, stop, v_pre, current, v_before, i_before)`` for the segments of the
    sequence from the last: the membranes before the reset and the currents of steps
    ``start:stop`` ``(N, S, *)``, and the state that enters step ``start``.

    Without ``checkpoint`` one segment, what forward kept; with it, each segment is
    recomputed from its checkpointed state by :func:`sequence_forward` (the same
    operations, so the same bits).
    """
    v, current, x, v0, i0, alpha_mem, alpha_syn, threshold, bias, v_states, i_states = saved
    if checkpoint is None:
        yield 0, v.shape[1], v, current, v0, i0
        return
    n_steps = x.shape[1]
    for index in reversed(range(v_states.shape[0])):
        start, stop = index * checkpoint, min((index + 1) * checkpoint, n_steps)
        i_before = i_states[index] if i_states is not None else None
        results = sequence_forward(
            x[:, start:stop],
            v_states[index],
            i_before,
            alpha_mem,
            alpha_syn,
            threshold,
            bias,
            options,
            False,
            True,
            keep_current,
        )
        yield start, stop, results[3], results[2], v_states[index], i_before


def sequence_backward(
    options: Options,
    needs: Tuple[bool, ...],
    saved: Tuple[Optional[Tensor], ...],
    grads: Tuple[Optional[Tensor], ...],
    checkpoint: Optional[int] = None,
    slopes: bool = False,
) -> Tuple[Optional[Tensor], ...]:
    """The gradients of :func:`sequence_forward`'s inputs.

    Args:
        options: the neuron's options.
        needs: whether each of ``x, v0, i0, alpha_mem, alpha_syn, threshold, bias``
            needs its gradient.
        saved: ``(v_pre, current, x, v0, i0, alpha_mem, alpha_syn, threshold, bias,
            v_states, i_states)``: the membranes before the reset and the currents
            ``(N, T, *)`` (``current`` and ``x`` may be ``None``
            when no gradient reads them); with ``checkpoint``, ``v_pre`` and
            ``current`` are ``None`` and ``x`` and the checkpointed states are given
            (``v_states``, and ``i_states`` with a synaptic current; ``None`` otherwise).
        grads: the gradients of ``(output, v_trace, i_trace, v_final, i_final)``
            (``None`` for zero).
        checkpoint: the steps between checkpointed states, or ``None``.
        slopes: ``v_pre`` holds the surrogate's slopes at the membranes instead of them
            (:func:`~aquatic.functional.neurons_jit_backward.kept_slopes`).

    Returns:
        The gradients of ``x, v0, i0, alpha_mem, alpha_syn, threshold, bias`` (``None``
        where not needed).
    """
    # subnormal gradients flushed to zero: aquatic.functional.subnormals
    with flushing(saved[3].is_cpu):
        return _sequence_backward(options, needs, saved, grads, checkpoint, slopes)


def _sequence_backward(options, needs, saved, grads, checkpoint, slopes=False):
    v, current, x, v0, i0, alpha_mem, alpha_syn, threshold, bias = saved[:9]
    synaptic = alpha_syn is not None
    if slopes and not neurons_jit_backward.slopes_suffice(options, needs, synaptic, checkpoint):
        raise RuntimeError("the membranes were not kept, and this backward pass reads them")
    g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal = grads
    n_steps = v.shape[1] if checkpoint is None else x.shape[1]
    spiking, reset, min_v_mem = options.spiking, options.reset, options.min_v_mem
    g_spikes, g_trace = (g_out, g_vtrace) if spiking else (None, g_out)
    grad_threshold = spiking and needs[5]
    grad_v = None
    g_alpha = g_threshold = g_bias = None
    block = block_steps(v0.numel())
    keep_current = synaptic and options.norm_input and needs[3]
    compiled = neurons_jit_backward.backward_ok(
        options, n_steps if checkpoint is None else min(checkpoint, n_steps), v0, v,
        alpha_mem, alpha_syn, threshold, bias,
    )  # fmt: skip
    # Kept slopes that nothing reads after this pass: the compiled loop's plainest steps
    # write the gradient over them (one array fewer to fill).
    if slopes and compiled and g_spikes is not None and g_trace is None and g_vfinal is None:
        if not options.detach_reset and not _keeps_graph():
            grad_v = v
    if grad_v is None:
        grad_v = v0.new_empty((v0.shape[0], n_steps) + tuple(v0.shape[1:]))
    # With a synaptic current the compiled loop writes the current's gradient into
    # grad_v and hands the membrane's gradient from segment to segment here.
    carry = torch.zeros_like(v0) if compiled and synaptic else None
    # Checkpointed segments: the compiled loop recomputes them itself, in one call.
    states = None
    if compiled and checkpoint is not None and neurons_jit_backward.recomputes(options):
        states = (x, saved[9], saved[10], bias, checkpoint)
        segments = [(0, n_steps, None, None, v0, i0)]
    else:
        segments = _segments(saved, options, checkpoint, keep_current)
    if not compiled:
        one = torch.ones((), dtype=v0.dtype, device=v0.device)
        minus_threshold = -threshold if spiking else None
        # A block's temporaries, batch first like the gradient, each a contiguous view
        # of one buffer (the surrogate then runs one flat loop, for a block of any
        # length).
        work = v0.new_empty(min(block, n_steps) * v0.numel())
        # R_t of a block as 0/1 in the gradient's dtype (adding a bool tensor is slow)
        kept = torch.empty_like(work) if spiking and options.reset == "zero" else None

    # Segments from the last one back, each on the compiled loop or in blocks of steps
    # from the last one back: everything nonlinear is computed for a whole block at
    # once, then the linear scan g_t = A_t alpha g_{t+1} + B_t runs step by step (see
    # the module docstring).
    for first, last, v_seg, cur_seg, v_before, _ in segments:
        if compiled:
            inflow = None
            if needs[3] and options.norm_input and states is None:
                inflow = cur_seg if synaptic else x[:, first:last]
            sums = neurons_jit_backward.segment_backward(
                options, first, last, v_seg, v_before, inflow, alpha_mem, threshold,
                g_spikes, g_trace, g_vfinal, grad_v, (needs[3], grad_threshold, needs[6]),
                None if carry is None else (alpha_syn, g_itrace, g_ifinal, carry), states,
                slopes,
            )  # fmt: skip
            if sums[0] is not None:
                g_alpha = _add(g_alpha, sums[0], alpha_mem)
            if sums[1] is not None:
                g_threshold = _add(g_threshold, sums[1], threshold)
            if sums[2] is not None:
                g_bias = _add(g_bias, sums[2], bias)
            continue
        for start in reversed(range(first, last, block)):
            stop = min(start + block, last)
            final = stop == n_steps and g_vfinal is not None
            vb = v_seg[:, start - first : stop - first]
            gb = grad_v[:, start:stop]
            counts = v_reset = clamp_mask = None
            if spiking and reset == "subtract" and (grad_threshold or min_v_mem is not None):
                counts = _counts(vb, threshold, options.max_spikes)
            if min_v_mem is not None:
                v_reset = _reset(vb, threshold, options, counts)
                clamp_mask = v_reset >= min_v_mem
                del v_reset
            keep = None  # R_t
            if spiking and reset == "zero":
                keep = torch.lt(vb, threshold, out=_batch_first(kept, vb))

            # B_t, then A_t alpha = m_t (R_t + psi_t K_t) alpha in the same buffer
            # (None stands for 1).
            coef = None
            if spiking:
                # v - threshold written batch first (the layout of the gradient), so
                # that every later operation of the block runs on matching strides.
                if slopes:  # kept by forward
                    slope = _batch_first(work, vb).copy_(vb)
                else:
                    slope = options.surrogate.derivative_(
                        torch.sub(vb, threshold, out=_batch_first(work, vb))
                    )
                if g_spikes is not None:
                    torch.mul(slope, g_spikes[:, start:stop], out=gb)
                else:
                    gb.zero_()
                if options.detach_reset:
                    coef = keep.clone() if keep is not None else None  # scaled below
                elif reset == "subtract":
                    # 1 - threshold psi (a multiply and an add: addcmul with a 0-d
                    # tensor for 1 takes a slow broadcasting path)
                    coef = slope.mul_(minus_threshold).add_(one)
                else:
                    coef = slope.mul_(vb).neg_().add_(keep)
                del slope
            else:
                gb.zero_()
            if clamp_mask is not None:
                coef = clamp_mask.to(v0.dtype) if coef is None else coef.mul_(clamp_mask)
            if g_trace is not None:
                if coef is None:
                    gb.add_(g_trace[:, start:stop])
                else:
                    gb.addcmul_(coef, g_trace[:, start:stop])
            if final:
                gb[:, -1].add_(g_vfinal if coef is None else coef[:, -1] * g_vfinal)
            if coef is None:
                factors = [alpha_mem] * (stop - start)
            else:
                factors = coef.mul_(alpha_mem).unbind(1)
            steps = grad_v[:, start : min(stop + 1, n_steps)].unbind(1)
            for k in range(len(steps) - 2, -1, -1):
                steps[k].addcmul_(steps[k + 1], factors[k])
            del coef, factors

            if grad_threshold:
                # dL/d(reset membrane) g_hat, then sum((R - s_sub) g_hat - g).
                g_hat = torch.empty_like(gb)
                torch.mul(
                    grad_v[:, start + 1 : stop + 1],
                    alpha_mem,
                    out=g_hat[:, : n_steps - 1 - start],
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
                if start == first:
                    g_alpha = _add(g_alpha, gb[:, 0] * v_before, alpha_mem)
                prev = v_seg[:, max(start - 1, first) - first : stop - 1 - first]
                if prev.shape[1]:
                    v_post = _reset(prev, threshold, options)
                    if min_v_mem is not None:
                        v_post = v_post.clamp(min=min_v_mem)
                    skip = 1 if start == first else 0
                    g_alpha = _add(g_alpha, gb[:, skip:] * v_post, alpha_mem)
                    del v_post
                if options.norm_input:
                    if synaptic:
                        inflow = cur_seg[:, start - first : stop - first]
                    else:
                        inflow = x[:, start:stop]
                    g_alpha = _add(g_alpha, -(gb * inflow), alpha_mem)
            if needs[6]:
                g_bias = _add(g_bias, gb, bias)
            del counts, clamp_mask, keep, vb
        del v_seg, cur_seg

    g_x = g_v0 = g_i0 = g_syn = None
    if needs[1]:
        g_v0 = (grad_v[:, 0] if carry is None else carry) * alpha_mem
    if carry is not None:  # grad_v holds the current's gradient already
        grad_i = grad_v
    else:
        grad_i = grad_v.mul_(1 - alpha_mem) if options.norm_input else grad_v
    if not synaptic:
        g_x = grad_i if needs[0] else None
    else:
        if carry is None:
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
            g_syn = _synaptic_decay_gradient(saved, grad_i, block, checkpoint)
        if needs[0]:
            g_x = grad_i.mul_(alpha_syn)
    return g_x, g_v0, g_i0, g_alpha, g_syn, g_threshold, g_bias


def _synaptic_decay_gradient(saved, grad_i: Tensor, block: int, checkpoint: Optional[int]):
    """``sum_t (i[t-1] + x[t]) dL/di[t]``: ``i[t] = alpha_syn (i[t-1] + x[t])``, the
    factor of the decay is the sum before it (currents recomputed per segment with
    ``checkpoint``)."""
    _, current, x, _, i0, _, alpha_syn, _, _, _, i_states = saved
    n_steps = x.shape[1]
    if checkpoint is None:
        segments = [(0, n_steps, current, i0)]
    else:
        segments = [
            (start, min(start + checkpoint, n_steps), None, i_states[index])
            for index, start in enumerate(range(0, n_steps, checkpoint))
        ]
    g_syn = None
    for first, last, cur, i_before in segments:
        if cur is None:
            cur = torch.empty_like(x[:, first:last])
            steps = x[:, first:last].unbind(1)
            currents_into(i_before, steps, cur.unbind(1), alpha_syn, torch.empty_like(i_before))
            offset = first
        else:
            offset = 0
        for start in range(first, last, block):
            stop = min(start + block, last)
            pre = x[:, start:stop].clone()
            if start == first:
                pre[:, 0].add_(i_before)
                pre[:, 1:].add_(cur[:, start - offset : stop - 1 - offset])
            else:
                pre.add_(cur[:, start - 1 - offset : stop - 1 - offset])
            g_syn = _add(g_syn, pre.mul_(grad_i[:, start:stop]), alpha_syn)
        del cur
    return g_syn
