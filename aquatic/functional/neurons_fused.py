r"""The fused LIF sequence: one autograd function with a hand-written backward pass.

Autograd through :func:`~aquatic.functional.neurons.lif_loop` records about ten small
operations per time step and keeps their inputs alive. Here the forward pass runs the
time loop without autograd and keeps only the membrane *before* the reset, :math:`v[t]`,
for every step (plus the synaptic current when a decay or synaptic gradient needs it).
The backward pass recomputes spikes, surrogate slopes and reset membranes from
:math:`v` for the whole sequence at once, so that only one linear recursion is left to
run step by step.

With :math:`g_t = \partial L / \partial v[t]` (total), :math:`\tilde g_t = \partial L /
\partial \tilde v[t]` and :math:`\hat g_t` the same before the ``min_v_mem`` clamp
(:math:`m_t = [\,v_{reset}[t] \ge v_{min}]`):

.. math::

    \tilde g_t &= \alpha_{mem}\, g_{t+1} + \partial_{\tilde v[t]} L_{direct}, \qquad
    \hat g_t = m_t\, \tilde g_t \\
    g_t &= R_t\, \hat g_t + \psi_t\,\big(\partial_{s[t]} L + K_t\, \hat g_t\big)
    \;=\; A_t\, \alpha_{mem}\, g_{t+1} + B_t

where :math:`\psi_t = \psi(v[t] - \vartheta)`; for the subtract reset :math:`R_t = 1`,
:math:`K_t = -\vartheta`; for the zero reset :math:`R_t = 1 - H(v[t] - \vartheta)`,
:math:`K_t = -v[t]`; ``detach_reset`` sets :math:`K_t = 0`. :math:`A_t` and
:math:`B_t` are computed for all steps at once; the scan over :math:`t` is one fused
multiply-add per step. Parameter gradients are then sums over batch and time:
:math:`\partial L/\partial\alpha_{mem} = \sum_t g_t \tilde v[t-1]` (minus
:math:`\sum_t g_t i[t]` with ``norm_input``), :math:`\partial L / \partial \vartheta =
\sum_t (R_t - s_t^{sub}) \hat g_t - g_t` with :math:`s_t^{sub}` the spikes for the
subtract reset and 0 for the zero reset, and the synaptic current runs its own linear
scan :math:`\partial L/\partial i[t] = (1-\alpha_{mem})^{[norm]} g_t +
\alpha_{syn}\, \partial L/\partial i[t+1]`.

The forward values are bit for bit those of the loop (the same operations in the same
order); gradients agree to rounding. State quantizers and decay functions
(``QConfig.state`` and a chip's integer decay rule) are not run here: with them the
loop runs, one step at a time under autograd.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from aquatic.functional.neuron_checks import prepare
from aquatic.functional.neuron_types import LIFOutput, LIFState, Number, Options
from aquatic.functional.surrogate import spike_values, Surrogate

__all__ = ["lif_fused"]


#: Elements per block of time steps. Work on whole blocks keeps the per-step Python
#: overhead low; bounding their size keeps the backward pass's temporaries small.
BLOCK_ELEMENTS = 1 << 18


def _block_steps(x: Tensor) -> int:
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


class _LIFSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, i0, alpha_mem, alpha_syn, threshold, bias, options, record, grad):
        ctx.set_materialize_grads(False)
        n_steps = x.shape[1]
        block = _block_steps(x)
        needs = ctx.needs_input_grad
        need_grad = grad and any(needs[:7])  # nothing is kept for inference
        synaptic = alpha_syn is not None
        spiking = options.spiking
        min_v_mem = options.min_v_mem

        keep_current = synaptic and (record or needs[4] or (options.norm_input and needs[3]))
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
        for start in range(0, n_steps, block):
            stop = min(start + block, n_steps)
            if synaptic:
                cur = current[:, start:stop] if keep_current else syn_block[:, : stop - start]
                for t in range(start, stop):
                    torch.add(i, x[:, t], out=buf)
                    torch.mul(buf, alpha_syn, out=cur[:, t - start])
                    i = cur[:, t - start]
            else:
                cur = x[:, start:stop]
            drive = (1 - alpha_mem) * cur if options.norm_input else cur
            if bias is not None:
                drive = drive + bias
            for t in range(start, stop):
                v = v_pre[:, t] if v_pre is not None else step_v
                torch.mul(state, alpha_mem, out=buf)
                torch.add(buf, drive[:, t - start], out=v)
                target = trace[:, t] if trace is not None else post
                if spiking:
                    s = spikes[:, t]
                    _spikes_into(s, v, threshold, options.max_spikes)
                    if options.reset == "subtract":
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

        ctx.options = options
        if need_grad:
            keep_x = (synaptic and needs[4]) or (not synaptic and options.norm_input and needs[3])
            ctx.save_for_backward(
                v_pre,
                current if keep_current else None,
                x if keep_x else None,
                v0,
                i0,
                alpha_mem,
                alpha_syn,
                threshold,
                bias,
            )
        output = spikes if spiking else trace
        v_trace = trace if spiking and record else None
        i_trace = current if synaptic and record else None
        return output, v_trace, i_trace, v_final, i_final

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal):
        v, current, x, v0, i0, alpha_mem, alpha_syn, threshold, bias = ctx.saved_tensors
        options = ctx.options
        needs = ctx.needs_input_grad
        n_steps = v.shape[1]
        spiking, reset, min_v_mem = options.spiking, options.reset, options.min_v_mem
        g_spikes, g_trace = (g_out, g_vtrace) if spiking else (None, g_out)
        grad_threshold = spiking and needs[5]
        grad_v = torch.empty_like(v)
        g_alpha = g_threshold = g_bias = None

        # Blocks of steps from the last one back: everything nonlinear is computed for a
        # whole block at once, then the linear scan g_t = A_t alpha g_{t+1} + B_t runs
        # step by step (see the module docstring).
        block = _block_steps(v)
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
            for t in range(min(stop, n_steps - 1) - 1, start - 1, -1):
                grad_v[:, t].addcmul_(grad_v[:, t + 1], factors[t - start])
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
            for t in range(n_steps - 2, -1, -1):
                grad_i[:, t].addcmul_(grad_i[:, t + 1], alpha_syn)
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
        return g_x, g_v0, g_i0, g_alpha, g_syn, g_threshold, g_bias, None, None, None


def lif_fused(
    input: Tensor,
    alpha_mem: Number,
    alpha_syn: Optional[Number] = None,
    threshold: Number = 1.0,
    *,
    state: Optional[LIFState] = None,
    record_states: bool = False,
    reset: str = "subtract",
    surrogate: Optional[Surrogate] = None,
    max_spikes: int = 1,
    min_v_mem: Optional[float] = None,
    norm_input: bool = False,
    bias: Optional[Number] = None,
    detach_reset: bool = False,
    spiking: bool = True,
) -> LIFOutput:
    """A whole LIF sequence ``(N, T, *)`` as one autograd function (the fast path).

    Same arguments and results as :func:`~aquatic.functional.neurons.lif_loop` except
    state quantizers and decay functions, which it does not run (with them, the loop is
    the implementation: :func:`~aquatic.functional.neurons.lif` picks it, and the layers
    follow). Without them the state quantizers :math:`Q` of the equations are the
    identity and every decay is a product, so the two compute the same bits. Not twice
    differentiable.

    Example:
        >>> x = torch.tensor([[[0.8], [0.8], [0.8]]], requires_grad=True)
        >>> out = lif_fused(x, alpha_mem=0.5)
        >>> out.output.flatten()
        tensor([0., 1., 0.], grad_fn=<ViewBackward0>)
        >>> out.output.sum().backward(); x.grad.flatten()
        tensor([0.8031, 0.8053, 0.8187])
    """
    params, state, options = prepare(
        input,
        state,
        (alpha_mem, alpha_syn, threshold, bias),
        Options(reset, surrogate, max_spikes, min_v_mem, norm_input, detach_reset, spiking),
    )
    alpha_mem, alpha_syn, threshold, bias = params
    output, v_trace, i_trace, v_final, i_final = _LIFSequence.apply(
        input,
        state.v_mem,
        state.i_syn,
        alpha_mem,
        alpha_syn,
        threshold,
        bias,
        options,
        record_states,
        torch.is_grad_enabled(),
    )
    return LIFOutput(output, LIFState(v_final, i_final), v_trace, i_trace)
