r"""The backward pass of the fused sequence with quantized states, without autograd.

Forward runs, step by step, the operations of the reference loop
(:func:`~aquatic.functional.neurons_spec.neuron_step`) with the state quantizers and
decays of :class:`~aquatic.functional.neurons_grid.GridRules` in place of the modules,
so it computes the loop's bits. It keeps the membrane before the reset of every step,
the synaptic current, and where each state quantizer saturated (one byte per value;
NumPy multiplies by those masks, where torch would first convert them to a tensor of
the values' dtype; a block of steps whose mask passes every gradient skips them).

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

import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from aquatic.functional.neuron_types import Options
from aquatic.functional import neurons_grid_jit
from aquatic.functional.neurons_grid import GridRules, delayed
from aquatic.functional.neurons_grid_kernel import reset_of, spikes_of
from aquatic.functional.neurons_grid_steps import as_array
from aquatic.functional.neurons_kernel import block_steps
from aquatic.functional.subnormals import flushing

__all__ = ["grid_backward"]


def _add(total: Optional[Tensor], grad: Tensor, like: Tensor) -> Tensor:
    grad = grad.sum_to_size(like.shape)
    return grad if total is None else total + grad


def _masked(values: Tensor, mask: Tensor, out: Tensor) -> Tensor:
    """``values * mask`` (a boolean mask) into ``out`` (may be ``values``)."""
    np.multiply(as_array(values), as_array(mask), out=as_array(out))
    return out


def _passing(mask: Optional[Tensor]) -> Optional[Tensor]:
    """A block of a quantizer's in-range mask, ``None`` where the quantizer passed every
    gradient: multiplying by 1 changes no value (IEEE 754 multiplication by one is exact,
    signed zeros, infinities and NaN included), so the block skips the multiplications.
    A state on a wide grid (Loihi's 24-bit states) rarely saturates."""
    if mask is None or not as_array(mask).all():
        return mask
    return None


def _per_step(alpha: Tensor, like: Tensor) -> Tensor:
    """A decay factor for every step of a block ``like``: a 0-dim one as it is (torch
    multiplies by it a third faster than by its expansion)."""
    return alpha if alpha.dim() == 0 else alpha.expand_as(like)


def _recur(grads: Tensor, start: int, end: int, factors: Tensor) -> None:
    """``grads[t] += grads[t + 1] * factors[t - start]`` from ``t = end - 2`` back to
    ``start`` (``grads`` the time-major buffer of :func:`_gradient_buffer`, ``factors``
    one per step, or 0-dim for all): compiled where it can
    (:func:`~aquatic.functional.neurons_grid_jit.scan`), else a step at a time."""
    if neurons_grid_jit.scan(grads, start, end, factors):
        return
    steps = grads[start:end].unbind(0)
    step_factors = factors.unbind(0) if factors.dim() else (factors,) * len(steps)
    for k in range(len(steps) - 2, -1, -1):
        steps[k].addcmul_(steps[k + 1], step_factors[k])


def _time_major(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.transpose(0, 1)


def _membrane_block(v, threshold, options, rules, g_spikes, out):
    """``B`` of the module docstring (before the recorded gradients) into ``out``, ``C``
    (``None`` where it is 1) and the zero reset's ``R`` (``None`` for the subtract reset)
    for a block of membranes ``v``."""
    if not options.spiking:
        return out.zero_(), None, None
    slope = options.surrogate.derivative_(v - threshold)
    if g_spikes is not None:
        torch.mul(slope, g_spikes, out=out)
    else:
        out.zero_()
    keep = None
    if options.reset == "zero":  # written as 1.0 and 0.0 directly (not via booleans)
        keep = (torch.le if rules.strict else torch.lt)(v, threshold, out=torch.empty_like(v))
    if options.detach_reset:
        return out, keep, keep
    if options.reset == "zero":
        return out, torch.addcmul(keep, slope, v, value=-1, out=slope), keep
    return out, slope.mul_(-threshold).add_(1), keep


def grid_backward(
    options: Options,
    rules: GridRules,
    needs: Tuple[bool, ...],
    saved: Tuple[Optional[Tensor], ...],
    grads: Tuple[Optional[Tensor], ...],
) -> Tuple[Optional[Tensor], ...]:
    """The gradients of :func:`~aquatic.functional.neurons_grid_kernel.grid_forward`'s
    inputs, a block of time steps at a time (from the last back).

    Args:
        options, rules: as forward got them.
        needs: whether each of ``x, v0, i0, alpha_mem, alpha_syn, threshold, bias``
            needs its gradient.
        saved: ``(v_pre, current, v_mask, i_mask, x, v0, i0, alpha_mem, alpha_syn,
            threshold, bias)``, the first four time major ``(T, N, *)`` as forward
            returns them.
        grads: the gradients of ``(output, v_trace, i_trace, v_final, i_final)``
            (``None`` for zero), the first three ``(N, T, *)``.

    Returns:
        The gradients of ``x, v0, i0, alpha_mem, alpha_syn, threshold, bias`` (``None``
        where not needed).
    """
    # subnormal gradients flushed to zero: aquatic.functional.subnormals
    with flushing(saved[5].is_cpu):
        return _grid_backward(options, rules, needs, saved, grads)


def _grid_backward(options, rules, needs, saved, grads):
    v, current, v_mask, i_mask, x, v0, i0, alpha_mem, alpha_syn, threshold, bias = saved
    g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal = grads
    if rules.delay and x is not None:
        x = delayed(x)  # the input the steps read
    g_out, g_vtrace, g_itrace, x = map(_time_major, (g_out, g_vtrace, g_itrace, x))
    spiking, min_v_mem = options.spiking, options.min_v_mem
    g_spikes, g_trace = g_out, g_vtrace
    if not spiking:  # the output is the membrane, and so is a recorded trace
        g_spikes, g_trace = None, g_out if g_vtrace is None else g_out + g_vtrace
    n_steps, block = v.shape[0], block_steps(v[0].numel())
    grad_threshold = spiking and needs[5]
    unclamped = options._replace(min_v_mem=None)
    # G: the gradient of each step's membrane before Q, time major over a batch-major
    # buffer: the input's gradient is read from it without a transposing copy.
    grad_v = _gradient_buffer(v, rules.delay)
    factor_buf = v.new_empty((min(block, n_steps),) + v.shape[1:])  # masked factors
    g_alpha = g_threshold = g_bias = None
    for start in reversed(range(0, n_steps, block)):
        stop = min(start + block, n_steps)
        last = stop == n_steps
        vb = v[start:stop]
        gb, coef, keep = _membrane_block(
            vb,
            threshold,
            options,
            rules,
            g_spikes[start:stop] if g_spikes is not None else None,
            grad_v[start:stop],
        )
        clamp = None
        if min_v_mem is not None:
            reset = reset_of(vb, threshold, unclamped, rules.strict)
            clamp = torch.ge(reset, min_v_mem, out=torch.empty_like(reset))  # 1.0 and 0.0
            coef = clamp if coef is None else coef.mul_(clamp)
        if g_trace is not None:
            gb.add_(g_trace[start:stop] if coef is None else coef * g_trace[start:stop])
        if last and g_vfinal is not None:
            gb[-1].add_(g_vfinal if coef is None else coef[-1] * g_vfinal)
        mask = _passing(v_mask[start:stop]) if v_mask is not None else None
        unmasked = gb.clone() if grad_threshold and mask is not None else None
        if coef is None:
            factors = _per_step(alpha_mem, vb)
        else:  # in place unless the threshold's gradient reads C below
            factors = coef * alpha_mem if grad_threshold else coef.mul_(alpha_mem)
        if mask is not None:
            _masked(gb, mask, gb)
            masked = factor_buf[: stop - start] if coef is None or grad_threshold else factors
            factors = _masked(factors, mask, masked)
        _recur(grad_v, start, min(stop + 1, n_steps), factors)
        del factors
        if grad_threshold:
            # alpha_mem G_{t+1}: the gradient of the reset membrane.
            following = torch.empty_like(gb)
            torch.mul(grad_v[start + 1 : stop + 1], alpha_mem, out=following[: stop - start - last])
            if last:  # the last step has none
                following[-1].zero_()
            # G_t's own terms (below) read it only where the mask kept them apart.
            g_hat = following.clone() if unmasked is not None else following
            if last and g_vfinal is not None:
                g_hat[-1] = g_vfinal
            if g_trace is not None:
                g_hat += g_trace[start:stop]
            if clamp is not None:
                g_hat *= clamp
            # g_t, the gradient of the quantized membrane: G_t where the quantizer passed it.
            g_v = gb
            if unmasked is not None:
                g_v = unmasked.add_(following if coef is None else coef * following)
            if options.reset == "subtract":
                factor = 1 - spikes_of(vb, threshold, options, rules.strict)
            else:
                factor = keep
            g_threshold = _add(g_threshold, g_hat.mul_(factor).sub_(g_v), threshold)
            del following, g_hat, g_v, factor
        if needs[3]:
            # sum_t G_t v_reset[t-1], the state the decay read (v0 first).
            if start == 0:
                g_alpha = _add(g_alpha, gb[0] * v0, alpha_mem)
            first = max(start - 1, 0)
            if stop - 1 > first:
                previous = reset_of(v[first : stop - 1], threshold, options, rules.strict)
                g_alpha = _add(g_alpha, gb[1 if start == 0 else 0 :] * previous, alpha_mem)
            if options.norm_input:
                inflow = (current if current is not None else x)[start:stop]
                g_alpha = _add(g_alpha, -(gb * inflow), alpha_mem)
        if needs[6]:
            g_bias = _add(g_bias, gb, bias)
        del coef, clamp, unmasked, keep
    g_v0 = grad_v[0] * alpha_mem if needs[1] else None
    grad_i = grad_v.mul_(1 - alpha_mem) if options.norm_input else grad_v
    g_x = g_i0 = g_syn = None
    if alpha_syn is None:
        g_x = grad_i if needs[0] else None
        return _batch_major(g_x, rules.delay), g_v0, None, g_alpha, None, g_threshold, g_bias
    if g_itrace is not None:
        grad_i.add_(g_itrace)
    if g_ifinal is not None:
        grad_i[-1].add_(g_ifinal)
    for start in reversed(range(0, n_steps, block)):
        stop = min(start + block, n_steps)
        factors = _per_step(alpha_syn, grad_i[start:stop])
        mask = _passing(i_mask[start:stop]) if i_mask is not None else None
        if mask is not None:
            _masked(grad_i[start:stop], mask, grad_i[start:stop])
            factors = _masked(factors, mask, factor_buf[: stop - start])
        _recur(grad_i, start, min(stop + 1, n_steps), factors)
        if needs[4]:
            # i[t] = alpha_syn (i[t-1] + x[t]) (alpha_syn i[t-1] + x[t] after the decay).
            # Each product formed once, into one buffer (no copy of the states first).
            h = grad_i[start:stop]
            pre = torch.empty_like(h)
            previous = current[max(start - 1, 0) : stop - 1]
            first = 1 if start == 0 else 0
            if rules.after_decay:
                if first:
                    torch.mul(i0, h[0], out=pre[0])
                torch.mul(previous, h[first:], out=pre[first:])
            else:
                if first:
                    torch.add(x[start], i0, out=pre[0])
                torch.add(x[start + first : stop], previous, out=pre[first:])
                pre.mul_(h)
            g_syn = _add(g_syn, pre, alpha_syn)
    if needs[2]:
        g_i0 = grad_i[0] * alpha_syn
    if needs[0]:
        g_x = grad_i if rules.after_decay else grad_i.mul_(alpha_syn)
    return _batch_major(g_x, rules.delay), g_v0, g_i0, g_alpha, g_syn, g_threshold, g_bias


def _gradient_buffer(v: Tensor, delay: bool) -> Tensor:
    """An uninitialised time-major ``(T, N, *)`` tensor like ``v`` whose steps lie batch
    major: ``G[t][n]`` at ``(n T + t) S`` (``S`` elements a step). With ``delay`` the
    storage holds one step more, and :func:`_batch_major` reads the input's gradient
    (step ``t`` of the input reached step ``t + 1``) as the ``(N, T, *)`` tensor from
    offset ``S``: its ``[n, t]`` lies at ``(n T + t + 1) S``, ``G[t + 1][n]`` for
    ``t < T - 1``, and ``G[0][n + 1]`` (or the extra step) for ``t = T - 1``."""
    steps, batch = v.shape[0], v.shape[1]
    if not delay:
        return v.new_empty((batch, steps) + v.shape[2:]).transpose(0, 1)
    size = math.prod(v.shape[2:])  # (v may hold no batch)
    storage = v.new_empty((batch * steps + 1) * size)
    inner = storage[:size].view(v.shape[2:]).stride()
    return storage.as_strided(v.shape, (size, steps * size) + inner, storage.storage_offset())


def _batch_major(t: Optional[Tensor], delay: bool = False) -> Optional[Tensor]:
    """A time-major gradient (of :func:`_gradient_buffer`) batch major, without a copy;
    with ``delay``, that of the input read one step late (the last step reached none).
    It overwrites ``t[0]``: the last use of ``t``."""
    if t is None:
        return None
    if not delay:
        return t.transpose(0, 1).contiguous()
    size = math.prod(t.shape[2:])
    shape = (t.shape[1], t.shape[0]) + t.shape[2:]
    strides = (t.stride(1), t.stride(0)) + t.stride()[2:]
    late = t.as_strided(shape, strides, t.storage_offset() + size)
    late[:, -1] = 0
    return late
