r"""The forward loop of the fused sequence with quantized states, without autograd.

It runs, step by step, the operations of the reference loop
(:func:`~aquatic.functional.neurons_spec.neuron_step`) with the state quantizers and
decays of :class:`~aquatic.functional.neurons_grid.GridRules` in place of the modules
(:mod:`aquatic.functional.neurons_grid_steps`), so it computes the loop's bits. As the
float kernel (:mod:`aquatic.functional.neurons_kernel`) it works in blocks of time
steps: the synaptic current of a whole block first, then the membrane, every step
written into preallocated time-major buffers (each step contiguous); the drive from
the current is computed for a whole block at once. It keeps the membrane before the
reset of every step, the synaptic current, and where each state quantizer saturated
(one byte per value), for :func:`~aquatic.functional.neurons_grid_backward.grid_backward`.

Per step it runs no ``torch.round`` (see :mod:`~aquatic.functional.neurons_grid_steps`),
and a decay reads the integer codes the quantizer before it wrote where that is exact
(Loihi's current; the membrane after a zero reset or a subtract reset by a threshold
on the grid) instead of rounding the state again. Where the current is the membrane's
whole drive, on the membrane's scale, and its quantizer passes its decay (Xylo), the
membrane's quantizer takes the sum of the two states' codes (see ``_sums_codes``).

A quantizer after a grid decay on its own grid (the synaptic current without
``input_after_decay``) passes the decayed state unchanged: the decay's codes lie in the
range, and their value divided by the scale rounds back to them (exact codes,
:class:`~aquatic.functional.neurons_grid_steps.StepQuantizer`); for float32 states it
is skipped and keeps no mask (:func:`quantizer_after_decay_passes`).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.neuron_types import Options
from aquatic.functional.neurons_grid import GridRules, StateGrid
from aquatic.functional.neurons_grid_steps import StepDecay, StepQuantizer
from aquatic.functional.neurons_kernel import block_steps
from aquatic.functional.surrogate import spike_values

__all__ = [
    "grid_forward",
    "grid_decayer",
    "grid_quantizer",
    "quantizer_after_decay_passes",
    "spikes_of",
    "reset_of",
]


def spikes_of(v: Tensor, threshold: Tensor, options: Options, strict: bool) -> Tensor:
    """The spikes of the membrane ``v`` (before the reset), as forward computes them."""
    if strict:
        return torch.gt(v, threshold).to(v.dtype)
    return spike_values(v, threshold, options.max_spikes)


def reset_of(
    v: Tensor, threshold: Tensor, options: Options, strict: bool, spikes: Optional[Tensor] = None
) -> Tensor:
    """The membrane after the reset and the clamp, as forward computes it."""
    if options.spiking:
        if spikes is None:
            spikes = spikes_of(v, threshold, options, strict)
        if options.reset == "subtract":
            v = v - threshold * spikes
        else:
            fired = spikes if options.max_spikes == 1 else torch.ge(v, threshold)
            v = torch.where(fired.bool(), torch.zeros((), dtype=v.dtype, device=v.device), v)
    if options.min_v_mem is not None:
        v = torch.clamp(v, min=options.min_v_mem)
    return v


def grid_decayer(grid: Optional[StateGrid], alpha: Tensor, dtype: torch.dtype) -> Callable:
    """``decay(y)``: the value of :func:`~aquatic.functional.neurons_grid.decay_on_grid`
    as the fused loop computes it (:class:`~aquatic.functional.neurons_grid_steps.StepDecay`)."""

    def decay(y: Tensor) -> Tensor:
        shapes = [y.shape, alpha.shape] + ([grid.codes.shape] if grid and grid.rule else [])
        like = y.to(dtype).expand(torch.broadcast_shapes(*shapes))
        step = StepDecay(grid, alpha, like)
        codes = like.new_empty(like.shape, dtype=step.dtype or dtype)
        return step(like, codes, torch.empty_like(like))

    return decay


def grid_quantizer(grid: Optional[StateGrid], dtype: torch.dtype) -> Optional[Callable]:
    """``quantize(y) -> (value, in-range mask)``: torch's per-tensor fake quantization as
    the fused loop computes it (:class:`~aquatic.functional.neurons_grid_steps.StepQuantizer`)."""
    if grid is None:
        return None
    step = StepQuantizer(grid, dtype)

    def quantize(y: Tensor) -> Tuple[Tensor, Tensor]:
        y = y.to(dtype)
        z, codes = (y.new_empty(y.shape, dtype=step.dtype) for _ in range(2))
        mask = torch.empty_like(y, dtype=torch.bool)
        return step(y, z, codes, torch.empty_like(y), mask), mask

    return quantize


def quantizer_after_decay_passes(rules: GridRules, dtype: torch.dtype) -> bool:
    """Whether the current's quantizer passes its input unchanged (float32 states, no
    ``input_after_decay``, a decay rule on the quantizer's grid whose codes span fewer
    than :math:`2^{20}` values): then forward skips it and keeps no mask."""
    grid = rules.i_syn
    if grid is None or not grid.rule or rules.after_decay or dtype != torch.float32:
        return False
    return grid.quant_max - grid.quant_min < 2**20


def _reads_codes(decay: StepDecay, quantize: Optional[StepQuantizer]) -> bool:
    """Whether ``decay`` can read the codes ``quantize`` wrote instead of its value."""
    return (
        quantize is not None
        and quantize.exact_codes
        and bool(decay.rule)
        and decay.dtype == quantize.dtype
    )


def _subtract_stays_in_range(quantize: StepQuantizer, threshold_codes: Tensor) -> bool:
    r"""Whether the codes :math:`q - k s_t` of a subtract reset (:math:`q` the clamped
    membrane codes, :math:`k` the threshold's from :meth:`StepQuantizer.codes_of`,
    :math:`s_t` the spike) always lie in the quantizer's range, so that clamping them
    again changes nothing.

    They do when :math:`k \ge 0` and the range holds 0. Without a spike they are
    :math:`q`. With one, :math:`q - k \le q \le q_{max}`; and the spike means
    :math:`\mathrm{fl}(q s) \ge \vartheta \ge (k - 2^{-12}) s` with :math:`|q| < 2^{20}`,
    so :math:`q > k - 1`, hence :math:`q - k \ge 0 \ge q_{min}`.
    """
    return quantize.low <= 0 and bool(threshold_codes.min() >= 0)


def _sums_codes(rules: GridRules, options: Options, bias, quantize_v, decay_i) -> bool:
    r"""Whether the membrane's quantizer can take the sum of the codes of its two terms:
    the decayed membrane's :math:`R` (read from codes) and the current's :math:`I`
    (the codes of its decay, its quantizer passing them) on the same scale :math:`s`,
    with the current as the whole drive (no ``norm_input``, no bias).

    Then :math:`\mathrm{fl}(\mathrm{fl}(\mathrm{fl}(R s) + \mathrm{fl}(I s)) \cdot
    \mathrm{fl}(1/s))` (four roundings to float32 at most, each of relative error
    :math:`2^{-24}`) lies within :math:`(|R| + |I|)\, 2^{-22}(1 + 2^{-21}) < 1/2` of
    :math:`R + I` when :math:`|R| + |I| < 2^{20}`, so it rounds to :math:`R + I`: the
    quantizer's codes without the two products, the sum and the rounding.
    """
    if options.norm_input or bias is not None or rules.after_decay or decay_i is None:
        return False
    grid_i, grid_v = rules.i_syn, rules.v_mem
    if grid_i is None or grid_v is None or not grid_i.rule or decay_i.dtype != quantize_v.dtype:
        return False
    bound_i = max(abs(decay_i.low), abs(decay_i.high))
    same_scale = bool(torch.equal(grid_i.scale, grid_v.scale))
    return same_scale and bound_i + quantize_v.bound < 2**20


def grid_forward(
    x: Tensor,
    v0: Tensor,
    i0: Optional[Tensor],
    params: Tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]],
    options: Options,
    rules: GridRules,
    need_grad: bool,
    record: bool = True,
) -> Tuple[Tensor, ...]:
    """The whole sequence, block by block, without autograd.

    Returns:
        ``(output, v_trace, current, v_pre, v_mask, i_mask, v_final, i_final)``: spikes
        (the membrane for a non-spiking neuron) and, when ``record``, the membrane after
        each step's reset, both ``(N, T, *)``; then, time major ``(T, N, *)``: the
        current of each step (``None`` without a synaptic state), the membrane before
        each reset (``None`` unless ``need_grad``) and the in-range masks of the
        membrane's and the current's quantizers (``None`` without them or a gradient,
        and for a current's quantizer that passes its input); and the final state.
    """
    alpha_mem, alpha_syn, threshold, bias = params
    synaptic, spiking = alpha_syn is not None, options.spiking
    n_steps, block = x.shape[1], block_steps(x[:, 0].numel())
    step_shape = (x.shape[0],) + x.shape[2:]
    # Time major, so that every step is contiguous (steps of a batch-major tensor lie
    # at one stride, which maps them onto the same cache sets).
    new = lambda steps, dtype=None: x.new_empty((steps,) + step_shape, dtype=dtype)  # noqa: E731
    decay_v = StepDecay(rules.v_mem, alpha_mem, new(1)[0])
    quantize_v = StepQuantizer(rules.v_mem, x.dtype) if rules.v_mem is not None else None
    keep_trace = record or not spiking
    trace = new(n_steps if keep_trace else 1)
    spikes = new(n_steps) if spiking else None
    v_pre = new(n_steps if need_grad else 1)
    v_mask = None
    if quantize_v is not None:
        zv, v_codes = new(2, quantize_v.dtype)
        v_mask = new(n_steps, torch.bool) if need_grad else None
    d_buf, dv_codes = new(1)[0], new(1, decay_v.dtype)[0]
    current = i_mask = None
    if synaptic:
        decay_i = StepDecay(rules.i_syn, alpha_syn, d_buf)
        quantize_i = None
        if rules.i_syn is not None and not quantizer_after_decay_passes(rules, x.dtype):
            quantize_i = StepQuantizer(rules.i_syn, x.dtype)
            zi, i_codes = new(2, quantize_i.dtype)
            i_mask = new(n_steps, torch.bool) if need_grad else None
        current, di_codes = new(n_steps), new(1, decay_i.dtype)[0]
        # Loihi's order: the state the decay reads is the quantizer's, codes known.
        reuse = rules.after_decay and _reads_codes(decay_i, quantize_i)
    binary = spiking and options.max_spikes == 1
    fast_zero = binary and options.reset == "zero" and quantize_v is not None
    # The codes of the reset membrane, from the quantizer's (one rounding fewer): the
    # zero reset keeps them or zeroes them; the subtract reset subtracts those of a
    # threshold on the grid.
    reset_codes = None
    if binary and options.min_v_mem is None and _reads_codes(decay_v, quantize_v):
        if fast_zero and quantize_v.low <= 0 <= quantize_v.high:
            reset_codes = "zero"
        elif options.reset == "subtract":
            threshold_codes = quantize_v.codes_of(threshold)
            reset_codes = "subtract" if threshold_codes is not None else None
            clamp_reset = reset_codes is not None and not _subtract_stays_in_range(
                quantize_v, threshold_codes
            )
        # A zero reset leaves the codes as they are and zeroes the decay of those that
        # fired (the decay of 0 is 0): one float32 product, no float64 copy of the spikes.
        state_codes = v_codes if reset_codes == "zero" else torch.empty_like(v_codes)
    # The current's codes per step of a block, when the membrane's quantizer sums them.
    sum_codes = None
    if reset_codes == "subtract" and synaptic and quantize_i is None:
        if _sums_codes(rules, options, bias, quantize_v, decay_i):
            sum_codes = new(min(block, n_steps), decay_i.dtype)
    compare = torch.gt if rules.strict else torch.ge
    i, state, known, known_v, fired_before = i0, v0, False, False, None
    for start in range(0, n_steps, block):
        stop = min(start + block, n_steps)
        n = stop - start
        if synaptic:
            masks = i_mask[start:stop] if i_mask is not None else (None,) * n
            codes_i = sum_codes[:n].unbind(0) if sum_codes is not None else (di_codes,) * n
            steps = zip(x[:, start:stop].unbind(1), current[start:stop], masks, codes_i)
            for x_t, i_t, mask, di_codes in steps:
                if rules.after_decay:
                    if known:
                        decay_i.from_codes(i_codes, di_codes, d_buf)
                    else:
                        decay_i(i, di_codes, d_buf)
                    torch.add(d_buf, x_t, out=i_t)
                else:
                    decay_i(torch.add(i, x_t, out=d_buf), di_codes, i_t)
                if quantize_i is not None:
                    quantize_i(i_t, zi, i_codes, i_t, mask)
                    known = reuse
                i = i_t
            cur = current[start:stop]
        else:
            cur = x[:, start:stop].transpose(0, 1)
        drive = (1 - alpha_mem) * cur if options.norm_input else cur
        if bias is not None:
            drive = drive + bias
        masks = v_mask[start:stop] if v_mask is not None else (None,) * n
        fired = spikes[start:stop].unbind(0) if spiking else (None,) * n
        pres = v_pre[start:stop].unbind(0) if need_grad else (v_pre[0],) * n
        # Without a trace one buffer serves: a step reads the state before it writes it.
        targets = trace[start:stop].unbind(0) if keep_trace else (trace[0],) * n
        codes_i = sum_codes[:n].unbind(0) if sum_codes is not None else (None,) * n
        steps = zip(pres, drive.unbind(0), targets, fired, masks, codes_i)
        for v, drive_t, target, s, mask, code_i in steps:
            if known_v and code_i is not None:
                torch.add(decay_v.rule_codes(state_codes, dv_codes), code_i, out=zv)
                quantize_v.finish(zv, v_codes, v, mask)
            else:
                if known_v:
                    decay_v.from_codes(state_codes, dv_codes, d_buf)
                    if reset_codes == "zero":
                        torch.addcmul(d_buf, d_buf, fired_before, value=-1, out=d_buf)
                else:
                    decay_v(state, dv_codes, d_buf)
                torch.add(d_buf, drive_t, out=v)
                if quantize_v is not None:
                    quantize_v(v, zv, v_codes, v, mask)
            if binary:
                compare(v, threshold, out=s)
                if options.reset == "subtract":
                    # s is 0 or 1, so threshold * s is exact and v - threshold * s
                    # rounds once, fused multiply-add or not: the loop's bits.
                    torch.addcmul(v, s, threshold, value=-1, out=target)
                elif fast_zero:  # finite v: v - v s is v or 0
                    torch.addcmul(v, v, s, value=-1, out=target)
                else:
                    zero = torch.zeros((), dtype=v.dtype, device=v.device)
                    torch.where(compare(v, threshold), zero, v, out=target)
                if options.min_v_mem is not None:
                    target.clamp_(min=options.min_v_mem)
                if reset_codes == "zero":
                    fired_before = s
                elif reset_codes == "subtract":
                    torch.addcmul(v_codes, s, threshold_codes, value=-1, out=state_codes)
                    if clamp_reset:
                        state_codes.clamp_(quantize_v.low, quantize_v.high)
                known_v = reset_codes is not None
            elif spiking:
                s.copy_(spikes_of(v, threshold, options, rules.strict))
                target.copy_(reset_of(v, threshold, options, rules.strict, s))
            else:
                target.copy_(reset_of(v, threshold, options, rules.strict))
            state = target
    batch_major = lambda t: t.transpose(0, 1).contiguous()  # noqa: E731
    v_trace = batch_major(trace) if keep_trace else None
    output = batch_major(spikes) if spiking else v_trace
    i_final = i.clone() if synaptic else None
    v_pre = v_pre if need_grad else None
    return output, v_trace, current, v_pre, v_mask, i_mask, state.clone(), i_final
