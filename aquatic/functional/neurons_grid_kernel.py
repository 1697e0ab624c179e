r"""The loops of the fused sequence with quantized states: forward and backward, no autograd.

Forward runs, step by step, the operations of the reference loop
(:func:`~aquatic.functional.neurons_spec.neuron_step`) with the state quantizers and
decays of :class:`~aquatic.functional.neurons_grid.GridRules` in place of the modules,
so it computes the loop's bits. It keeps the membrane before the reset of every step,
the synaptic current, and where each state quantizer saturated (one byte per value).

Backward follows the gradient rules of the loop: a state quantizer passes the gradient
straight through inside its range and stops it where it saturated (mask :math:`q_t`);
a decay on a grid has the gradient of :math:`\alpha y`
(:meth:`aquatic.quantizers.DecayQuantizer.decay_state`). With :math:`G_t` the gradient
of the membrane before its quantizer, :math:`u_t` (the notation of
:mod:`aquatic.functional.neurons_fused`, where :math:`G_t = g_t` without a quantizer):

.. math::

    G_t = q_t\,\big(B_t + C_t\, \alpha_{mem}\, G_{t+1}\big), \qquad
    H_t = p_t\,\big(c\, G_t + \partial_{i[t]} L + \alpha_{syn} H_{t+1}\big)

with :math:`B_t` the gradient that reaches :math:`v[t]` from this step's spikes and
recorded values, :math:`C_t = m_t (R_t + \psi_t K_t)` the reset's factor,
:math:`c = 1 - \alpha_{mem}` with ``norm_input`` (else 1), :math:`p_t` the current's
quantizer mask and :math:`H_t` the gradient of the current before its quantizer. The
input gets :math:`\alpha_{syn} H_t` (:math:`H_t` when the input is added after the
decay), :math:`\alpha_{syn}` gets :math:`\sum_t H_t (i[t-1] + x[t])` (:math:`\sum_t H_t
i[t-1]`), :math:`\alpha_{mem}` gets :math:`\sum_t G_t \tilde v[t-1]`. ``strict_threshold``
spikes on :math:`v > \vartheta`; its reset terms follow those spikes.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.neuron_types import Options
from aquatic.functional.neurons_grid import GridRules, StateGrid, decay_on_grid
from aquatic.functional.surrogate import spike_values

__all__ = ["grid_forward", "grid_backward", "grid_decayer", "grid_quantizer"]


def _spikes(v: Tensor, threshold: Tensor, options: Options, strict: bool) -> Tensor:
    if strict:
        return torch.gt(v, threshold).to(v.dtype)
    return spike_values(v, threshold, options.max_spikes)


def _reset(
    v: Tensor, threshold: Tensor, options: Options, strict: bool, spikes: Optional[Tensor] = None
) -> Tensor:
    """The membrane after the reset and the clamp, as forward computes it."""
    if options.spiking:
        if spikes is None:
            spikes = _spikes(v, threshold, options, strict)
        if options.reset == "subtract":
            v = v - threshold * spikes
        else:
            fired = spikes if options.max_spikes == 1 else torch.ge(v, threshold)
            v = torch.where(fired.bool(), torch.zeros((), dtype=v.dtype, device=v.device), v)
    if options.min_v_mem is not None:
        v = torch.clamp(v, min=options.min_v_mem)
    return v


def _rounder(dtype: torch.dtype, bound: float) -> Callable[[Tensor], Tensor]:
    r"""``round_(t)``: round a fresh tensor in place to the nearest integer, ties to even,
    exactly where its values lie within ``bound`` (beyond it, to a value beyond it).

    Below :math:`2^{p-2}` (``p`` significand bits) this adds and subtracts
    :math:`1.5 \cdot 2^{p-1}`: the sum lies where the spacing of floats is 1, and IEEE 754
    addition rounds to nearest, ties to even (Goldberg 1991, "What every computer
    scientist should know about floating-point arithmetic", section 1.2). Two passes
    that torch does not spread over threads, where ``torch.round`` does: on small
    tensors of a busy machine waiting for a second core costs far more than the pass.
    The result may be a zero of the other sign; values are equal.
    """
    bits = {torch.float32: 24, torch.float64: 53}.get(dtype)
    if bits is None or bound + 2 >= 2.0 ** (bits - 2):
        return torch.round_
    magic = 1.5 * 2.0 ** (bits - 1)
    return lambda t: t.add_(magic).sub_(magic)


def grid_decayer(grid: Optional[StateGrid], alpha: Tensor, dtype: torch.dtype) -> Callable:
    """``decay(y)`` for one sequence: the value of
    :func:`~aquatic.functional.neurons_grid.decay_on_grid`, with the rule evaluated in
    floating point where that is exact (integers below :math:`2^{p}`, ``p`` the
    significand bits, and products by powers of two): fewer operations per step."""
    if grid is None or not grid.rule:
        return lambda y: alpha * y
    zero_point = int(grid.zero_point)
    low, high = grid.quant_min - zero_point, grid.quant_max - zero_point
    scale = grid.scale
    exact = 2.0 / torch.finfo(dtype).eps  # 2**p: every integer below it is exact
    if max(abs(low), abs(high)) >= exact:
        return lambda y: decay_on_grid(y, alpha, grid)
    round_ = _rounder(dtype, max(abs(low), abs(high)))
    if grid.rule == "bitshift":
        # x >> dash = floor(x 2**-dash); the decrement is at least 1 toward zero. The
        # floor of x 2**-dash (dash fractional bits) is the nearest integer to
        # x 2**-dash - 1/2 + 2**-(dash + 1), which is never a tie and is exact while
        # |x| < 2**(p - 2).
        factor = torch.exp2(-grid.codes.to(dtype))
        offset = torch.exp2(-grid.codes.to(dtype) - 1) - 0.5

        def bitshift(y: Tensor) -> Tensor:
            codes = round_(y / scale).clamp_(low, high)
            shifted = round_(torch.addcmul(offset, codes, factor))
            return torch.sub(codes, torch.maximum(shifted, codes.clamp(max=1))).mul_(scale)

        def bitshift_wide(y: Tensor) -> Tensor:
            codes = round_(y / scale).clamp_(low, high)
            shifted = torch.floor(codes * factor)
            return torch.sub(codes, torch.maximum(shifted, codes.clamp(max=1))).mul_(scale)

        return bitshift if round_ is not torch.round_ else bitshift_wide
    # (2**bits - d) x >> bits toward zero: exact in float64 below 2**53.
    keep = (2**grid.bits - grid.codes).to(torch.float64)
    shift = 2.0**-grid.bits

    def multiplicative(y: Tensor) -> Tensor:
        codes = round_(y / scale).clamp_(low, high).to(torch.float64)
        return torch.mul(codes, keep).mul_(shift).trunc_().to(y.dtype).mul_(scale)

    return multiplicative


def grid_quantizer(grid: Optional[StateGrid], dtype: torch.dtype) -> Optional[Callable]:
    """``quantize(y) -> (value, in-range mask)``: torch's per-tensor fake quantization.

    The arithmetic of its CPU kernel (``FakeQuantizeCore``: ``q = z + nearbyint(y *
    (1 / s))``, clamped, times ``s`` in float32), written with fewer, vectorized passes;
    the mask is where ``q`` was in range.
    """
    if grid is None:
        return None
    scale = grid.scale
    inverse = torch.reciprocal(scale)  # 1.0f / scale, as the kernel computes it
    zero_point = int(grid.zero_point)
    low, high = grid.quant_min, grid.quant_max
    wide = dtype != torch.float32  # the kernel multiplies the codes by s in float32
    round_ = _rounder(dtype, max(abs(low), abs(high)) + abs(zero_point))

    def quantize(y: Tensor) -> Tuple[Tensor, Tensor]:
        codes = round_(y * inverse)
        if zero_point:
            codes += zero_point
        clamped = torch.clamp(codes, low, high)
        mask = torch.eq(codes, clamped)
        if zero_point:
            clamped -= zero_point
        if wide:
            return clamped.float().mul_(scale).to(dtype), mask
        return clamped.mul_(scale), mask

    return quantize


def grid_forward(
    x: Tensor,
    v0: Tensor,
    i0: Optional[Tensor],
    params: Tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]],
    options: Options,
    rules: GridRules,
    need_grad: bool,
) -> Tuple[Tensor, ...]:
    """The whole sequence, step by step, without autograd.

    Returns:
        ``(output, v_trace, current, v_pre, v_mask, i_mask, v_final, i_final)``: spikes
        (the membrane for a non-spiking neuron), the membrane after each step's reset,
        the current of each step (``None`` without a synaptic state), the membrane
        before each reset (``None`` unless ``need_grad``), the in-range masks of the
        membrane's and the current's quantizers (``None`` without them or a gradient),
        and the final state.
    """
    alpha_mem, alpha_syn, threshold, bias = params
    synaptic = alpha_syn is not None
    spiking = options.spiking
    decay_v = grid_decayer(rules.v_mem, alpha_mem, x.dtype)
    quantize_v = grid_quantizer(rules.v_mem, x.dtype)
    if synaptic:
        decay_i = grid_decayer(rules.i_syn, alpha_syn, x.dtype)
        quantize_i = grid_quantizer(rules.i_syn, x.dtype)
    after, strict = rules.after_decay, rules.strict
    binary = spiking and options.max_spikes == 1
    subtract, min_v_mem = options.reset == "subtract", options.min_v_mem
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    outputs, trace, currents, pres, v_masks, i_masks = [], [], [], [], [], []
    i, state = i0, v0
    for x_t in x.unbind(1):
        if synaptic:
            i = decay_i(i) + x_t if after else decay_i(i + x_t)
            if quantize_i is not None:
                i, mask = quantize_i(i)
                if need_grad:
                    i_masks.append(mask)
            currents.append(i)
            drive = i
        else:
            drive = x_t
        if options.norm_input:
            drive = (1 - alpha_mem) * drive
        if bias is not None:
            drive = drive + bias
        v = decay_v(state) + drive
        if quantize_v is not None:
            v, mask = quantize_v(v)
            if need_grad:
                v_masks.append(mask)
        if need_grad:
            pres.append(v)
        if binary:
            # One comparison decides the spikes and the reset; threshold * s is exact for
            # s in {0, 1}, so v - threshold * s rounds once, fused or not (the loop's bits).
            fired = torch.gt(v, threshold) if strict else torch.ge(v, threshold)
            spikes = fired.to(v.dtype)
            if subtract:
                state = torch.addcmul(v, spikes, threshold, value=-1)
            else:
                state = torch.where(fired, zero, v)
            if min_v_mem is not None:
                state = torch.clamp(state, min=min_v_mem)
        else:
            spikes = _spikes(v, threshold, options, strict) if spiking else None
            state = _reset(v, threshold, options, strict, spikes)
        trace.append(state)
        if spiking:
            outputs.append(spikes)
    stack = lambda items: torch.stack(items, 1) if items else None  # noqa: E731
    v_trace = stack(trace)
    output = stack(outputs) if spiking else v_trace
    v_final = state.clone()
    i_final = i.clone() if synaptic else None
    return (
        output,
        v_trace,
        stack(currents),
        stack(pres),
        stack(v_masks),
        stack(i_masks),
        v_final,
        i_final,
    )


def _plus(a: Optional[Tensor], b: Tensor) -> Tensor:
    return b if a is None else a + b


def _sum(grad: Tensor, like: Optional[Tensor]) -> Optional[Tensor]:
    return None if like is None else grad.sum_to_size(like.shape)


def _membrane_factors(v, threshold, options, rules, g_spikes):
    """``(B, C)`` of the module docstring before the recorded gradients; ``C`` is
    ``None`` where it is 1."""
    if not options.spiking:
        return torch.zeros_like(v), None
    slope = options.surrogate.derivative_(v - threshold)
    gb = slope * g_spikes if g_spikes is not None else torch.zeros_like(v)
    zero_reset = options.reset == "zero"
    keep = None
    if zero_reset:
        keep = (v <= threshold) if rules.strict else (v < threshold)
        keep = keep.to(v.dtype)
    if options.detach_reset:
        coef = keep
    elif zero_reset:
        coef = keep - v * slope
    else:
        coef = 1 - threshold * slope
    return gb, coef


def grid_backward(
    options: Options,
    rules: GridRules,
    needs: Tuple[bool, ...],
    saved: Tuple[Optional[Tensor], ...],
    grads: Tuple[Optional[Tensor], ...],
) -> Tuple[Optional[Tensor], ...]:
    """The gradients of :func:`grid_forward`'s inputs.

    Args:
        options, rules: as forward got them.
        needs: whether each of ``x, v0, i0, alpha_mem, alpha_syn, threshold, bias``
            needs its gradient.
        saved: ``(v_pre, current, v_mask, i_mask, x, v0, i0, alpha_mem, alpha_syn,
            threshold, bias)``.
        grads: the gradients of ``(output, v_trace, i_trace, v_final, i_final)``
            (``None`` for zero).

    Returns:
        The gradients of ``x, v0, i0, alpha_mem, alpha_syn, threshold, bias`` (``None``
        where not needed).
    """
    v, current, v_mask, i_mask, x, v0, i0, alpha_mem, alpha_syn, threshold, bias = saved
    g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal = grads
    spiking, min_v_mem = options.spiking, options.min_v_mem
    g_spikes, g_trace = g_out, g_vtrace
    if not spiking:  # the output is the membrane, and so is a recorded trace
        g_spikes, g_trace = None, g_out if g_vtrace is None else _plus(g_out, g_vtrace)
    n_steps = v.shape[1]

    gb, coef = _membrane_factors(v, threshold, options, rules, g_spikes)
    clamp = None
    if min_v_mem is not None:
        clamp = _reset(v, threshold, options._replace(min_v_mem=None), rules.strict) >= min_v_mem
        clamp = clamp.to(v.dtype)
        coef = clamp if coef is None else coef * clamp
    if g_trace is not None:
        gb = gb + (g_trace if coef is None else coef * g_trace)
    if g_vfinal is not None:
        gb[:, -1] += g_vfinal if coef is None else coef[:, -1] * g_vfinal
    unmasked = gb.clone() if spiking and needs[5] and v_mask is not None else None
    factors = alpha_mem.expand_as(v) if coef is None else coef * alpha_mem
    if v_mask is not None:
        gb.mul_(v_mask)
        factors = factors * v_mask
    steps, step_factors = gb.unbind(1), factors.unbind(1)
    for t in range(n_steps - 2, -1, -1):
        steps[t].addcmul_(steps[t + 1], step_factors[t])
    # gb is now G (the gradient of each step's membrane before its quantizer).

    g_threshold = g_alpha = None
    following = torch.zeros_like(v)  # alpha_mem G_{t+1}: the gradient of the reset membrane
    following[:, :-1] = gb[:, 1:] * alpha_mem
    if spiking and needs[5]:
        g_hat = following.clone()
        if g_vfinal is not None:
            g_hat[:, -1] = g_vfinal
        if g_trace is not None:
            g_hat += g_trace
        if clamp is not None:
            g_hat *= clamp
        # g_t, the gradient of the quantized membrane: G_t where the quantizer passed it.
        g_v = gb
        if unmasked is not None:
            coef_next = 1 if coef is None else coef
            g_v = unmasked + coef_next * following
        if options.reset == "subtract":
            factor = 1 - _spikes(v, threshold, options, rules.strict)
        else:
            factor = (v <= threshold) if rules.strict else (v < threshold)
            factor = factor.to(v.dtype)
        g_threshold = _sum(g_hat * factor - g_v, threshold)
    if needs[3]:
        previous = torch.cat(
            [v0.unsqueeze(1), _reset(v[:, :-1], threshold, options, rules.strict)], 1
        )
        total = gb * previous
        if options.norm_input:
            total = total - gb * (current if current is not None else x)
        g_alpha = _sum(total, alpha_mem)
    g_bias = _sum(gb, bias) if needs[6] else None
    g_v0 = gb[:, 0] * alpha_mem if needs[1] else None

    grad_i = gb * (1 - alpha_mem) if options.norm_input else gb
    g_x = g_i0 = g_syn = None
    if alpha_syn is None:
        return (grad_i if needs[0] else None), g_v0, None, g_alpha, None, g_threshold, g_bias
    if g_itrace is not None:
        grad_i = grad_i + g_itrace
    if g_ifinal is not None:
        grad_i[:, -1] += g_ifinal
    factors = alpha_syn.expand_as(grad_i)
    if i_mask is not None:
        grad_i = grad_i * i_mask
        factors = factors * i_mask
    steps, step_factors = grad_i.unbind(1), factors.unbind(1)
    for t in range(n_steps - 2, -1, -1):
        steps[t].addcmul_(steps[t + 1], step_factors[t])
    if needs[2]:
        g_i0 = grad_i[:, 0] * alpha_syn
    if needs[4]:
        pre = torch.cat([i0.unsqueeze(1), current[:, :-1]], 1)
        if not rules.after_decay:
            pre = pre + x
        g_syn = _sum(grad_i * pre, alpha_syn)
    if needs[0]:
        g_x = grad_i if rules.after_decay else grad_i * alpha_syn
    return g_x, g_v0, g_i0, g_alpha, g_syn, g_threshold, g_bias
