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

Per step it runs NumPy ufuncs on views of the buffers (see
:mod:`~aquatic.functional.neurons_grid_steps`), ``out=`` every time, spikes and the
recorded membrane written into the batch-major outputs directly; a decay reads the
integer codes the quantizer before it wrote where that is exact
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

import numpy as np
import torch
from torch import Tensor

from aquatic.functional import cpu_heap, neurons_grid_jit
from aquatic.functional.neuron_types import Options
from aquatic.functional.neurons_grid import GridRules, StateGrid, delayed
from aquatic.functional.neurons_grid_current import (
    CurrentSteps,
    quantizer_after_decay_passes,
    reads_codes,
)
from aquatic.functional.neurons_grid_steps import (
    StepDecay,
    SIGNIFICAND,
    StepQuantizer,
    as_array,
    clip,
    constant,
    power_of_two,
)
from aquatic.functional.neurons_kernel import block_steps
from aquatic.functional.surrogate import spike_values

__all__ = [
    "grid_forward",
    "keeps_current",
    "grid_decayer",
    "grid_quantizer",
    "quantizer_after_decay_passes",
    "spikes_of",
    "reset_of",
]


def spikes_of(v: Tensor, threshold: Tensor, options: Options, strict: bool) -> Tensor:
    """The spikes of the membrane ``v`` (before the reset), as forward computes them."""
    if strict or options.max_spikes == 1:
        # spike_values' v >= threshold for one spike, written as 1.0 and 0.0 directly
        # (a boolean's conversion is slow).
        out = v.new_empty(torch.broadcast_shapes(v.shape, threshold.shape))
        return (torch.gt if strict else torch.ge)(v, threshold, out=out)
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
            fired = spikes.bool() if options.max_spikes == 1 else torch.ge(v, threshold)
            v = _zeroed(v, fired)
    if options.min_v_mem is not None:
        v = torch.clamp(v, min=options.min_v_mem)
    return v


def _zeroed(v: Tensor, fired: Tensor) -> Tensor:
    """``torch.where(fired, 0, v)``: a copy of ``v`` with +0 where ``fired``; on the CPU
    two NumPy copies (a few times faster than torch's ``where``)."""
    if v.device.type != "cpu" or fired.shape != v.shape or v.dtype not in SIGNIFICAND:
        return torch.where(fired, torch.zeros((), dtype=v.dtype, device=v.device), v)
    out = torch.empty_like(v, memory_format=torch.contiguous_format)
    np.copyto(as_array(out), as_array(v))
    np.copyto(as_array(out), 0, where=as_array(fired))
    return out


def grid_decayer(grid: Optional[StateGrid], alpha: Tensor, dtype: torch.dtype) -> Callable:
    """``decay(y)``: the value of :func:`~aquatic.functional.neurons_grid.decay_on_grid`
    as the fused loop computes it (:class:`~aquatic.functional.neurons_grid_steps.StepDecay`)."""

    def decay(y: Tensor) -> Tensor:
        shapes = [y.shape, alpha.shape] + ([grid.codes.shape] if grid and grid.rule else [])
        like = y.to(dtype).expand(torch.broadcast_shapes(*shapes)).contiguous()
        step = StepDecay(grid, alpha, like)
        out = torch.empty_like(like)
        step(as_array(like), as_array(torch.empty_like(like)), as_array(out))
        return out

    return decay


def grid_quantizer(grid: Optional[StateGrid], dtype: torch.dtype) -> Optional[Callable]:
    """``quantize(y) -> (value, in-range mask)``: torch's per-tensor fake quantization as
    the fused loop computes it (:class:`~aquatic.functional.neurons_grid_steps.StepQuantizer`)."""
    if grid is None:
        return None
    step = StepQuantizer(grid, dtype)

    def quantize(y: Tensor) -> Tuple[Tensor, Tensor]:
        y = y.to(dtype)
        out, mask = torch.empty_like(y), torch.empty_like(y, dtype=torch.bool)
        z, codes = (as_array(torch.empty_like(y)) for _ in range(2))
        step(as_array(y), z, codes, as_array(out), as_array(mask))
        return out, mask

    return quantize


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


def _sums_codes(rules: GridRules, options: Options, bias, quantize_v, current) -> bool:
    r"""Whether the membrane's quantizer can take the sum of the codes of its two terms:
    the decayed membrane's :math:`R` (read from codes) and the current's :math:`I`
    (known codes: :class:`~aquatic.functional.neurons_grid_current.CurrentSteps`) on
    the same scale :math:`s`, with the current as the whole drive (no ``norm_input``, no
    bias).

    Then :math:`\mathrm{fl}(\mathrm{fl}(\mathrm{fl}(R s) + \mathrm{fl}(I s)) \cdot
    \mathrm{fl}(1/s))` (four roundings to float32 at most, each of relative error
    :math:`2^{-24}`) lies within :math:`(|R| + |I|)\, 2^{-22}(1 + 2^{-21}) < 1/2` of
    :math:`R + I` when :math:`|R| + |I| < 2^{20}`, so it rounds to :math:`R + I`: the
    quantizer's codes without the two products, the sum and the rounding. On a grid
    whose step is a power of two every one of those operations is exact while
    :math:`|R| + |I| < 2^{p}` (``p`` significand bits; Loihi's two 24-bit states).
    """
    if options.norm_input or bias is not None or current is None or not current.known:
        return False
    grid_i, grid_v = rules.i_syn, rules.v_mem
    if grid_i is None or grid_v is None or not torch.equal(grid_i.scale, grid_v.scale):
        return False
    bound = current.bound + quantize_v.bound
    significand = np.finfo(quantize_v.dtype).nmant + 1
    exact = power_of_two(grid_v.scale) and bound < 2.0**significand
    return bound < 2**20 or exact


def grid_forward(
    x: Tensor,
    v0: Tensor,
    i0: Optional[Tensor],
    params: Tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]],
    options: Options,
    rules: GridRules,
    need_grad: bool,
    record: bool = True,
    keep_current: bool = True,
) -> Tuple[Tensor, ...]:
    """The whole sequence, block by block, without autograd (CPU, float32 or float64:
    :func:`~aquatic.functional.neurons_grid.grid_runs`). ``keep_current``: return the
    current of every step (recorded, or read by backward: :func:`keeps_current`).

    Returns:
        ``(output, v_trace, current, v_pre, v_mask, i_mask, v_final, i_final)``: spikes
        (the membrane for a non-spiking neuron) and, when ``record``, the membrane after
        each step's reset, both ``(N, T, *)``; then, time major ``(T, N, *)``: the
        current of each step (``None`` without a synaptic state or ``keep_current``),
        the membrane before each reset (``None`` unless ``need_grad``) and the in-range
        masks of the membrane's and the current's quantizers (``None`` without them or a
        gradient, and for a current's quantizer that passes its input); and the final
        state.

    Runs on the compiled loop of :mod:`aquatic.functional.neurons_grid_jit` where it
    applies (the same bits).
    """
    cpu_heap.settle(x)
    alpha_mem, alpha_syn, threshold, bias = params
    synaptic, spiking = alpha_syn is not None, options.spiking
    if rules.delay and not synaptic:  # the current reads the input late itself
        x = delayed(x)
    decays = neurons_grid_jit.grid_jit_decays(options, rules, params, v0, i0)
    if decays is not None:
        return neurons_grid_jit.grid_forward(
            x, v0, i0, params, options, rules, need_grad, record, keep_current, decays
        )
    n_steps, block = x.shape[1], block_steps(x[:, 0].numel())
    step_shape = (x.shape[0],) + x.shape[2:]
    # Time major, so that every step is contiguous (steps of a batch-major tensor lie
    # at one stride, which maps them onto the same cache sets).
    new = lambda steps, dtype=None: x.new_empty((steps,) + step_shape, dtype=dtype)  # noqa: E731
    scratch = lambda: as_array(new(1)[0])  # noqa: E731
    xs = as_array(x)
    decay_v = StepDecay(rules.v_mem, alpha_mem, v0)
    quantize_v = StepQuantizer(rules.v_mem, x.dtype) if rules.v_mem is not None else None
    keep_trace = record or not spiking
    # The outputs batch major, written a step at a time (rows of the step's neurons).
    trace = torch.empty_like(x) if keep_trace else new(1)[0].unsqueeze(1)
    spikes = torch.empty_like(x) if spiking else None
    v_pre = new(n_steps if need_grad else 1)
    v_mask = None
    if quantize_v is not None:
        zv, v_codes = scratch(), scratch()
        v_mask = new(n_steps, torch.bool) if need_grad else None
    d_buf, dv_codes = scratch(), scratch()
    current = None
    if synaptic:
        rows = None if keep_current else min(block, n_steps)
        current = CurrentSteps(x, i0, alpha_syn, rules, need_grad, rows)
    binary = spiking and options.max_spikes == 1
    # The codes of the reset membrane, from the quantizer's (one rounding fewer), in
    # place: the zero reset zeroes those that fired (the decay of 0 is 0); the subtract
    # reset subtracts those of a threshold on the grid from them.
    reset_codes = None
    if binary and options.min_v_mem is None and reads_codes(decay_v, quantize_v):
        if options.reset == "zero" and quantize_v.low <= 0 <= quantize_v.high:
            reset_codes = "zero"
        elif options.reset == "subtract":
            threshold_codes = quantize_v.codes_of(threshold)
            reset_codes = "subtract" if threshold_codes is not None else None
            clamp_reset = reset_codes is not None and not _subtract_stays_in_range(
                quantize_v, threshold_codes
            )
    # The current's codes per step of a block, when the membrane's quantizer sums them.
    sums = reset_codes is not None and _sums_codes(rules, options, bias, quantize_v, current)
    if sums:
        current.keep_codes(min(block, n_steps))
    compare = np.greater if rules.strict else np.greater_equal
    values = xs.dtype.type
    zero, thr = values(0), constant(threshold, xs.dtype)
    arrays = [as_array(t) if t is not None else None for t in (v_pre, trace, spikes)]
    pre_np, trace_np, spikes_np = arrays
    v_mask_np = as_array(v_mask) if v_mask is not None else None
    state, known_v = as_array(v0), False
    # IEEE 754 overflow and invalid operations give infinities and NaNs, as torch's do,
    # without NumPy's warnings.
    with np.errstate(all="ignore"):
        for start in range(0, n_steps, block):
            stop = min(start + block, n_steps)
            n = stop - start
            if synaptic:
                current.run(xs, start, stop)
                cur = current.steps(start, stop)
            else:
                cur = x[:, start:stop].transpose(0, 1)
            drive = (1 - alpha_mem) * cur if options.norm_input else cur
            if bias is not None:
                drive = drive + bias
            drive = as_array(drive)
            for k in range(n):
                t = start + k
                v = pre_np[t] if need_grad else pre_np[0]
                # Without a trace one buffer serves: a step reads the state, then writes it.
                target = trace_np[:, t] if keep_trace else trace_np[:, 0]
                mask = v_mask_np[t] if v_mask_np is not None else None
                if known_v and sums:
                    np.add(decay_v.rule_codes(v_codes, dv_codes), current.codes[k], out=zv)
                    quantize_v.finish(zv, v_codes, v, mask)
                else:
                    if known_v:
                        decay_v.from_codes(v_codes, dv_codes, d_buf)
                    else:
                        decay_v(state, dv_codes, d_buf)
                    np.add(d_buf, drive[k], out=v)
                    if quantize_v is not None:
                        quantize_v(v, zv, v_codes, v, mask)
                if binary:
                    s = compare(v, thr, out=spikes_np[:, t])
                    # The reset membrane: read by the next step unless its codes are
                    # known, and the final state after the last step.
                    if keep_trace or reset_codes is None or t == n_steps - 1:
                        if options.reset == "subtract":
                            # s is 0 or 1: threshold * s is exact, the loop's v - threshold s.
                            np.subtract(v, np.multiply(s, thr, out=target), out=target)
                        elif quantize_v is not None:  # finite v: v - v s is v or 0
                            np.subtract(v, np.multiply(v, s, out=target), out=target)
                        else:
                            np.copyto(target, v)
                            np.copyto(target, zero, where=s.astype(bool))
                        if options.min_v_mem is not None:
                            np.maximum(target, values(options.min_v_mem), out=target)
                    # zv is free: codes - codes s, or codes - k s (k the threshold's codes).
                    if reset_codes == "zero":
                        np.subtract(v_codes, np.multiply(v_codes, s, out=zv), out=v_codes)
                    elif reset_codes == "subtract":
                        np.subtract(v_codes, np.multiply(s, threshold_codes, out=zv), out=v_codes)
                        if clamp_reset:
                            clip(v_codes, quantize_v.code_low, quantize_v.code_high, out=v_codes)
                    known_v = reset_codes is not None
                else:
                    _reset_step(
                        v, target, spikes_np[:, t] if spiking else None, threshold, options, rules
                    )
                state = target
    v_trace = trace if keep_trace else None
    output = spikes if spiking else v_trace
    v_pre = v_pre if need_grad else None
    v_final = torch.from_numpy(state.copy())
    if not synaptic:
        return output, v_trace, None, v_pre, v_mask, None, v_final, None
    i_final = torch.from_numpy(current.state.copy())
    currents = current.current if keep_current else None
    return output, v_trace, currents, v_pre, v_mask, current.mask, v_final, i_final


def keeps_current(options: Options, record: bool, need_grad: bool, needs) -> bool:
    """Whether :func:`grid_forward` returns the current of every step: recorded, or read
    by backward (the gradient of ``alpha_syn``, or of ``alpha_mem`` with ``norm_input``;
    ``needs`` as :func:`~aquatic.functional.neurons_grid_backward.grid_backward` takes)."""
    return record or (need_grad and (needs[4] or (options.norm_input and needs[3])))


def _reset_step(v, target, s, threshold: Tensor, options: Options, rules: GridRules) -> None:
    """Spike counts (into ``s`` for a spiking neuron) and the reset of one step, with
    torch's operations (multiple spikes, a non-spiking neuron)."""
    v = torch.from_numpy(v)
    if s is not None:
        spikes = torch.from_numpy(s)
        spikes.copy_(spikes_of(v, threshold, options, rules.strict))
        reset = reset_of(v, threshold, options, rules.strict, spikes)
    else:
        reset = reset_of(v, threshold, options, rules.strict)
    torch.from_numpy(target).copy_(reset)
