"""The forward loop of the fused LIF sequence, without autograd.

:mod:`aquatic.functional.neurons_fused` runs it and the backward pass
(:mod:`aquatic.functional.neurons_kernel_backward`) as one autograd function (eagerly)
or as one custom operator (under ``torch.compile``); the equations are in its module
docstring. Both run exactly these functions, so a compiled layer computes the bits of
an eager one.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from aquatic.functional import cpu_heap, neurons_jit
from aquatic.functional.neuron_types import Options
from aquatic.functional.surrogate import spike_values

__all__ = ["sequence_forward", "block_steps", "spikes_into", "currents_into", "BLOCK_ELEMENTS"]

#: Elements per block of time steps. Work on whole blocks keeps the per-step Python
#: overhead low; bounding their size keeps the backward pass's temporaries small.
BLOCK_ELEMENTS = 1 << 18


def block_steps(step_numel: int) -> int:
    """The steps of a block of about :data:`BLOCK_ELEMENTS` elements (at least one)."""
    return max(1, BLOCK_ELEMENTS // max(step_numel, 1))


def spikes_into(out: Tensor, v: Tensor, threshold: Tensor, max_spikes: int) -> None:
    """The spike counts of the membranes ``v`` into ``out``."""
    if max_spikes == 1:
        torch.ge(v, threshold, out=out)
    else:
        out.copy_(spike_values(v, threshold, max_spikes))


def currents_into(
    i: Tensor, inputs: Sequence[Tensor], targets: Sequence[Tensor], alpha_syn: Tensor, buf
) -> Tensor:
    """The synaptic currents ``i[t] = alpha_syn (i[t-1] + x[t])`` of the steps
    ``inputs`` into ``targets``, from ``i`` before the first; returns the last."""
    for x_t, cur_t in zip(inputs, targets):
        torch.add(i, x_t, out=buf)
        torch.mul(buf, alpha_syn, out=cur_t)
        i = cur_t
    return i


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
    checkpoint: Optional[int] = None,
    slopes: Optional[Tuple[int, float, float]] = None,
) -> Tuple[Optional[Tensor], ...]:
    """The whole sequence, step by step, without autograd.

    ``need_grad``: keep what backward reads (the membranes before the reset);
    ``keep_current``: keep the synaptic current of every step (recorded, or read by
    backward; a neuron without a synaptic current has none, and gets ``None``);
    ``checkpoint``: keep the state that enters every ``checkpoint``-th step (steps
    ``0, K, 2K, ...``), from which :func:`sequence_backward` recomputes the rest;
    ``slopes``: the surrogate's form where ``v_pre`` keeps its slopes at the membranes
    instead of them
    (:func:`~aquatic.functional.neurons_jit_backward.kept_slopes`).

    The membranes before the reset are kept batch first, as the input: the compiled
    loop then writes each job's steps as one stream (written time first, with rows of
    a step far apart, its forward pass took 1.5 times as long), and backward reads a
    block of steps at a time in the gradient's layout.

    Returns:
        ``(output, v_trace, current, v_pre, v_final, i_final, v_states, i_states)``:
        spikes (the membrane for a non-spiking neuron), the recorded membrane (spiking
        neurons only), the current of every step, the membranes before the reset
        ``(N, T, *)`` kept for backward (``None`` when not needed; ``output`` itself
        for a non-spiking neuron without a clamp), the final state, and the
        checkpointed states ``(S, N, *)`` (``None`` without ``checkpoint``).

    Runs on the compiled loop of :mod:`aquatic.functional.neurons_jit` where it applies
    (the same bits).
    """
    cpu_heap.settle(x)
    if neurons_jit.forward_ok(x, options, v0, i0, alpha_mem, alpha_syn, threshold, bias):
        return neurons_jit.sequence_forward(
            x, v0, i0, alpha_mem, alpha_syn, threshold, bias, options, record, need_grad,
            keep_current, checkpoint, slopes,
        )  # fmt: skip
    n_steps = x.shape[1]
    block = min(block_steps(x[:, 0].numel()), n_steps)
    synaptic = alpha_syn is not None
    spiking = options.spiking
    min_v_mem = options.min_v_mem
    # A non-spiking neuron without a floor: its output is the membrane backward reads.
    shared = not spiking and min_v_mem is None

    output = torch.empty_like(x)
    trace = torch.empty_like(x) if spiking and record else None
    current = torch.empty_like(x) if keep_current and synaptic else None
    v_pre = x.new_empty(x.shape) if need_grad and not shared else None
    if synaptic and current is None:  # the currents of one block, time first
        syn_block = x.new_empty((block,) + tuple(v0.shape))
    step_v = torch.empty_like(v0) if v_pre is None and not shared else None
    post = torch.empty_like(v0) if trace is None else None
    buf = torch.empty_like(v0)
    if spiking and options.reset == "zero":
        fired = torch.empty(v0.shape, dtype=torch.bool, device=v0.device)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
    v_states = i_states = None
    if checkpoint is not None:
        count = -(-n_steps // checkpoint)
        v_states = x.new_empty((count,) + tuple(v0.shape))
        i_states = x.new_empty((count,) + tuple(v0.shape)) if synaptic else None
    i, state = i0, v0
    subtract = spiking and options.reset == "subtract"
    binary = options.max_spikes == 1
    for start in range(0, n_steps, block):
        stop = min(start + block, n_steps)
        n = stop - start
        # Views of every step of the block at once (unbind): cheaper than indexing each;
        # cur: the block's currents (its inputs without a synaptic state), time first.
        if synaptic:
            cur = current[:, start:stop].transpose(0, 1) if current is not None else syn_block[:n]
            # the current entering each checkpointed step of the block (i may be a
            # slot of syn_block, which the block overwrites)
            if i_states is not None and start % checkpoint == 0:
                i_states[start // checkpoint].copy_(i)
            i = currents_into(i, x[:, start:stop].unbind(1), cur.unbind(0), alpha_syn, buf)
            if i_states is not None:
                for t in range((start // checkpoint + 1) * checkpoint, stop, checkpoint):
                    i_states[t // checkpoint].copy_(cur[t - start - 1])
        else:
            cur = x[:, start:stop].transpose(0, 1)
        drive = (1 - alpha_mem) * cur if options.norm_input else cur
        if bias is not None:
            drive = drive + bias
        outs = output[:, start:stop].unbind(1)
        if v_pre is not None:
            pres = v_pre[:, start:stop].unbind(1)
        else:
            pres = outs if shared else (step_v,) * n
        targets = trace[:, start:stop].unbind(1) if trace is not None else (post,) * n
        for k, (v, drive_t, target, out) in enumerate(zip(pres, drive.unbind(0), targets, outs)):
            if v_states is not None and (start + k) % checkpoint == 0:
                v_states[(start + k) // checkpoint].copy_(state)
            torch.mul(state, alpha_mem, out=buf)
            torch.add(buf, drive_t, out=v)
            if spiking:
                spikes_into(out, v, threshold, options.max_spikes)
                if subtract and binary:
                    # s is 0 or 1, so threshold * s is exact and v - threshold * s
                    # rounds once, fused multiply-add or not: the loop's bits, one
                    # operation fewer.
                    torch.addcmul(v, out, threshold, value=-1, out=target)
                elif subtract:
                    torch.mul(threshold, out, out=buf)
                    torch.sub(v, buf, out=target)
                else:
                    torch.ge(v, threshold, out=fired)
                    torch.where(fired, zero, v, out=target)
                if min_v_mem is not None:
                    target.clamp_(min=min_v_mem)
                state = target
            elif min_v_mem is not None:
                torch.clamp(v, min=min_v_mem, out=out)
                state = out
            else:
                state = v
    v_final = state.clone()
    i_final = i.clone() if synaptic else None
    if shared and need_grad:
        v_pre = output
    if slopes is not None and v_pre is not None:  # (kept_slopes asks the compiled loop)
        v_pre = options.surrogate.derivative_(v_pre.sub_(threshold))
    return output, trace, current, v_pre, v_final, i_final, v_states, i_states
