"""The fused sequence with quantized states and Loihi's orderings, as one autograd function.

:func:`lif_grid_fused` runs :func:`~aquatic.functional.neurons_grid_kernel.grid_forward`
and its hand-written backward pass (equations in
:mod:`aquatic.functional.neurons_grid_kernel`): eagerly as a ``torch.autograd.Function``,
under ``torch.compile`` as the custom operators ``aquatic::lif_grid_sequence`` and
``aquatic::lif_grid_sequence_backward`` (one graph node each, the same loops, so the same
bits). :func:`~aquatic.functional.neurons_spec.neuron_sequence` picks it when every state
operation describes itself (:func:`~aquatic.functional.neurons_grid.grid_rules`).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from aquatic.functional.neuron_types import LIFOutput, LIFState, Options
from aquatic.functional.custom_ops import fake_gradients, op_output
from aquatic.functional.neurons_fused import first_order, surrogate_key, surrogate_of
from aquatic.functional.neurons_grid import GridRules, StateGrid
from aquatic.functional.neurons_grid_backward import grid_backward
from aquatic.functional.neurons_grid_current import quantizer_after_decay_passes
from aquatic.functional.neurons_grid_kernel import grid_forward, keeps_current

__all__ = ["lif_grid_fused"]

_Tensors7 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_Tensors8 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _saved(results, x, tensors, options: Options, rules: GridRules, needs) -> List:
    _, _, current, v_pre, v_mask, i_mask, _, _ = results
    synaptic = tensors[3] is not None
    keep_x = (synaptic and needs[4] and not rules.after_decay) or (
        not synaptic and options.norm_input and needs[3]
    )
    return [v_pre, current, v_mask, i_mask, x if keep_x else None] + list(tensors)


class _GridSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, i0, alpha_mem, alpha_syn, threshold, bias, options, rules, record):
        ctx.set_materialize_grads(False)
        needs = ctx.needs_input_grad[:7]
        need_grad = torch.is_grad_enabled() or any(needs)
        params = (alpha_mem, alpha_syn, threshold, bias)
        grad = any(needs) and need_grad
        keep = keeps_current(options, record, grad, needs)
        results = grid_forward(x, v0, i0, params, options, rules, grad, record, keep)
        output, v_trace, current, _, _, _, v_final, i_final = results
        ctx.options, ctx.rules = options, rules
        if any(needs):
            tensors = (v0, i0, alpha_mem, alpha_syn, threshold, bias)
            ctx.save_for_backward(*_saved(results, x, tensors, options, rules, needs))
        # The loop records the membrane of a non-spiking neuron too: its output, copied.
        v_trace = (v_trace if options.spiking else v_trace.clone()) if record else None
        i_trace = _batch_major(current) if alpha_syn is not None and record else None
        return output, v_trace, i_trace, v_final, i_final

    @staticmethod
    @first_order
    @once_differentiable
    def backward(ctx, g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal):
        grads = grid_backward(
            ctx.options,
            ctx.rules,
            ctx.needs_input_grad[:7],
            ctx.saved_tensors,
            (g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal),
        )
        return grads + (None, None, None)


def _batch_major(current: Tensor) -> Tensor:
    """A time-major current of the forward loop as the layers return it, ``(N, T, *)``."""
    return current.transpose(0, 1).contiguous()


# -- under torch.compile: the same loops as two custom operators ------------------------


def _flat_rules(rules: GridRules) -> Tuple[List[Optional[Tensor]], List[int], str]:
    tensors, ints, names = [], [], []
    for grid in (rules.v_mem, rules.i_syn):
        if grid is None:
            tensors += [None, None, None]
            ints += [0, 0, 0, 0]
            names.append("")
        else:
            tensors += [grid.scale, grid.zero_point, grid.codes]
            ints += [1, grid.quant_min, grid.quant_max, grid.bits]
            names.append(grid.rule)
    flags = [int(rules.strict), int(rules.after_decay), int(rules.delay)]
    return tensors, ints + flags, ",".join(names)


def _rules_of(tensors, ints, names: str) -> GridRules:
    names = names.split(",")
    grids = []
    for k in range(2):
        scale, zero_point, codes = tensors[3 * k : 3 * k + 3]
        has, low, high, bits = ints[4 * k : 4 * k + 4]
        grids.append(
            StateGrid(scale, zero_point, low, high, names[k], bits, codes) if has else None
        )
    return GridRules(grids[0], grids[1], bool(ints[8]), bool(ints[9]), bool(ints[10]))


def _options(settings: List, surrogate: str) -> Options:
    reset, max_spikes, min_v_mem, norm_input, detach_reset, spiking = settings
    return Options(
        reset, surrogate_of(surrogate), max_spikes, min_v_mem, norm_input, detach_reset, spiking
    )


@torch.library.custom_op("aquatic::lif_grid_sequence", mutates_args=())
def _grid_op(
    x: Tensor,
    v0: Tensor,
    i0: Optional[Tensor],
    alpha_mem: Tensor,
    alpha_syn: Optional[Tensor],
    threshold: Tensor,
    bias: Optional[Tensor],
    rule_tensors: List[Optional[Tensor]],
    ints: List[int],
    names: str,
    surrogate: str,
    reset: str,
    max_spikes: int,
    min_v_mem: Optional[float],
    norm_input: bool,
    detach_reset: bool,
    spiking: bool,
    grad: bool,
    record: bool,
    keep_current: bool,
) -> _Tensors8:
    """``grid_forward``'s results, empty tensors for ``None``."""
    options = Options(reset, None, max_spikes, min_v_mem, norm_input, detach_reset, spiking)
    rules = _rules_of(rule_tensors, ints, names)
    params = (alpha_mem, alpha_syn, threshold, bias)
    results = grid_forward(x, v0, i0, params, options, rules, grad, record, keep_current)
    return tuple(op_output(t, x) for t in results)


@_grid_op.register_fake
def _(
    x,
    v0,
    i0,
    alpha_mem,
    alpha_syn,
    threshold,
    bias,
    rule_tensors,
    ints,
    names,
    surrogate,
    reset,
    max_spikes,
    min_v_mem,
    norm_input,
    detach_reset,
    spiking,
    grad,
    record,
    keep_current,
):
    synaptic = alpha_syn is not None
    passes = quantizer_after_decay_passes(_rules_of(rule_tensors, ints, names), x.dtype)
    full = lambda keep: torch.empty_like(x) if keep else x.new_empty(0)  # noqa: E731
    time_major = (x.shape[1], x.shape[0]) + x.shape[2:]
    steps = lambda keep, dtype=None: (  # noqa: E731
        x.new_empty(time_major, dtype=dtype) if keep else x.new_empty(0)
    )
    return (
        full(True),
        full(record or not spiking),
        steps(synaptic and keep_current),
        steps(grad),
        steps(grad and bool(ints[0]), torch.bool),
        steps(grad and bool(ints[4]) and synaptic and not passes, torch.bool),
        v0.new_empty(v0.shape),
        x.new_empty(v0.shape if synaptic else 0),
    )


@torch.library.custom_op("aquatic::lif_grid_sequence_backward", mutates_args=())
def _grid_backward_op(
    saved: List[Optional[Tensor]],
    grads: List[Optional[Tensor]],
    rule_tensors: List[Optional[Tensor]],
    ints: List[int],
    names: str,
    settings_reset: str,
    surrogate: str,
    max_spikes: int,
    min_v_mem: Optional[float],
    norm_input: bool,
    detach_reset: bool,
    spiking: bool,
    needs: List[bool],
) -> _Tensors7:
    """``grid_backward``'s gradients, empty tensors for ``None``."""
    settings = [settings_reset, max_spikes, min_v_mem, norm_input, detach_reset, spiking]
    options = _options(settings, surrogate)
    rules = _rules_of(rule_tensors, ints, names)
    results = grid_backward(options, rules, tuple(needs), tuple(saved), tuple(grads))
    return tuple(op_output(g, saved[0]) for g in results)


@_grid_backward_op.register_fake
def _(
    saved,
    grads,
    rule_tensors,
    ints,
    names,
    reset,
    surrogate,
    max_spikes,
    min_v_mem,
    norm_input,
    detach_reset,
    spiking,
    needs,
):
    v = saved[0]  # time major; the input's gradient is batch major
    like = v.new_empty((v.shape[1], v.shape[0]) + v.shape[2:])
    return fake_gradients(like, saved[5:], needs)


def _none(tensor: Tensor, real: bool) -> Optional[Tensor]:
    return tensor if real else None


def _setup_context(ctx, inputs, output):
    tensors = inputs[:7]
    rule_tensors, ints, names, surrogate = inputs[7:11]
    reset, max_spikes, min_v_mem, norm_input, detach_reset, spiking, grad, record, keep = inputs[
        11:
    ]
    ctx.surrogate = surrogate
    ctx.traced = record or not spiking  # else the trace is an empty tensor
    x = tensors[0]
    synaptic = tensors[4] is not None
    ctx.synaptic = synaptic and keep  # else the current is empty; it is time major
    ctx.settings = (reset, max_spikes, min_v_mem, norm_input, detach_reset, spiking)
    ctx.rules = (ints, names)
    ctx.needs = [t is not None and t.requires_grad for t in tensors]
    ctx.needs[5] = ctx.needs[5] and spiking
    rules = _rules_of(rule_tensors, ints, names)
    passes = quantizer_after_decay_passes(rules, x.dtype)
    results = [
        output[0],
        output[1],
        _none(output[2], synaptic and keep),
        _none(output[3], grad),
        _none(output[4], grad and bool(ints[0])),
        _none(output[5], grad and bool(ints[4]) and synaptic and not passes),
        output[6],
        _none(output[7], synaptic),
    ]
    options = Options(reset, None, max_spikes, min_v_mem, norm_input, detach_reset, spiking)
    saved = _saved(results, x, tensors[1:], options, rules, ctx.needs)
    ctx.saved_count = len(saved)
    ctx.save_for_backward(*saved, *rule_tensors)


def _grid_op_backward(ctx, *grads_out):
    g_out, g_vtrace, g_current, _, _, _, g_vfinal, g_ifinal = grads_out
    g_vtrace = g_vtrace if ctx.traced else None
    g_current = g_current.transpose(0, 1) if ctx.synaptic and g_current is not None else None
    grads = [g_out, g_vtrace, g_current, g_vfinal, g_ifinal]
    reset, max_spikes, min_v_mem, norm_input, detach_reset, spiking = ctx.settings
    saved = list(ctx.saved_tensors)
    count = ctx.saved_count
    results = _grid_backward_op(
        saved[:count],
        grads,
        saved[count:],
        *ctx.rules,
        reset,
        ctx.surrogate,
        max_spikes,
        min_v_mem,
        norm_input,
        detach_reset,
        spiking,
        list(ctx.needs),
    )
    tensor_grads = [g if need else None for g, need in zip(results, ctx.needs)]
    return tuple(tensor_grads) + ([None] * 6,) + (None,) * 12


_grid_op.register_autograd(_grid_op_backward, setup_context=_setup_context)


def lif_grid_fused(
    input: Tensor,
    params: Tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]],
    state: LIFState,
    options: Options,
    rules: GridRules,
    record_states: bool = False,
) -> LIFOutput:
    """A whole sequence with quantized states on fixed grids (arguments as checked by
    :func:`~aquatic.functional.neuron_checks.prepare`; ``rules`` from
    :func:`~aquatic.functional.neurons_grid.grid_rules`).

    The same values as the step-by-step loop with the state quantizers and decays that
    ``rules`` describes, bit for bit; gradients by the loop's rules (straight through the
    state rounding inside its range), equal to the loop's up to rounding.
    """
    alpha_mem, alpha_syn, threshold, bias = params
    if torch.compiler.is_compiling():
        return _compiled(input, params, state, options, rules, record_states)
    output, v_trace, i_trace, v_final, i_final = _GridSequence.apply(
        input,
        state.v_mem,
        state.i_syn,
        alpha_mem,
        alpha_syn,
        threshold,
        bias,
        options,
        rules,
        record_states,
    )
    return LIFOutput(output, LIFState(v_final, i_final), v_trace, i_trace)


def _compiled(input, params, state, options, rules, record) -> LIFOutput:
    tensors = [input, state.v_mem, state.i_syn] + list(params)
    rule_tensors, ints, names = _flat_rules(rules)
    key = surrogate_key(options.surrogate) if options.spiking else ""
    needs = [t is not None and t.requires_grad for t in tensors]
    grad = torch.is_grad_enabled() and any(needs)
    results = _grid_op(
        *tensors,
        rule_tensors,
        ints,
        names,
        key,
        options.reset,
        options.max_spikes,
        options.min_v_mem,
        options.norm_input,
        options.detach_reset,
        options.spiking,
        grad,
        record,
        keeps_current(options, record, grad, needs),
    )
    output, v_trace, current, _, _, _, v_final, i_final = results
    synaptic = params[1] is not None
    state = LIFState(v_final, i_final if synaptic else None)
    v_trace = (v_trace if options.spiking else output.clone()) if record else None
    i_trace = _batch_major(current) if synaptic and record else None
    return LIFOutput(output, state, v_trace, i_trace)
