"""The fused LIF sequence as two custom operators, ``aquatic::lif_sequence`` and
``aquatic::lif_sequence_backward``: under ``torch.compile``,
:func:`~aquatic.functional.neurons_fused.lif_fused` runs them, which the compiler keeps
whole (one node each, the loops of :mod:`aquatic.functional.neurons_kernel` and
:mod:`aquatic.functional.neurons_kernel_backward`, so the same bits as eagerly) instead
of tracing thousands of small in-place steps."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.custom_ops import fake_gradients, op_output
from aquatic.functional.neuron_types import LIFOutput, LIFState, Options
from aquatic.functional.neurons_kernel import sequence_forward
from aquatic.functional.neurons_kernel_backward import sequence_backward
from aquatic.functional.surrogate import Surrogate

__all__ = ["kept_inputs", "planned_forward", "sequence_op", "surrogate_key", "surrogate_of"]


def kept_inputs(
    options: Options, synaptic: bool, record: bool, needs, checkpoint: Optional[int] = None
) -> Tuple[bool, bool]:
    """Whether forward keeps the current of every step, and whether it keeps the input
    (with ``checkpoint``, backward recomputes the currents from the input)."""
    if checkpoint is not None:
        return synaptic and record, True
    keep_current = synaptic and (record or needs[4] or (options.norm_input and needs[3]))
    keep_x = (synaptic and needs[4]) or (not synaptic and options.norm_input and needs[3])
    return keep_current, keep_x


#: Surrogates by key: the operators take a string where the function takes an object.
_SURROGATES: Dict[str, Surrogate] = {}

_Tensors7 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_Tensors8 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.compiler.assume_constant_result
def surrogate_key(surrogate: Surrogate) -> str:
    """A string that names ``surrogate`` for the custom operators (:func:`surrogate_of`).

    Runs while a graph is traced; the key is a constant of the graph (another surrogate
    object makes torch.compile trace again).
    """
    cls = type(surrogate)
    try:
        args = repr(surrogate._args())
    except NotImplementedError:  # a subclass without _args: this very object
        args = f"@{id(surrogate)}"
    key = f"{cls.__module__}.{cls.__qualname__}{args}"
    _SURROGATES[key] = surrogate
    return key


def surrogate_of(key: str) -> Optional[Surrogate]:
    """The surrogate that :func:`surrogate_key` named ``key`` (``None`` for ``""``)."""
    return _SURROGATES[key] if key else None


def _op_options(reset, surrogate, max_spikes, min_v_mem, norm_input, detach_reset, spiking):
    surrogate = _SURROGATES[surrogate] if surrogate else None
    return Options(reset, surrogate, max_spikes, min_v_mem, norm_input, detach_reset, spiking)


def _op_plan(options: Options, synaptic: bool, record, grad, needs, checkpoint):
    """``(need_grad, checkpoint, keep_current, keep_x, keep_v)`` of the operators: what
    forward keeps for backward (``keep_v``: the membranes, unless they are the output
    or recomputed from checkpoints)."""
    need_grad = grad and any(needs)
    checkpoint = checkpoint if need_grad else None
    keep_current, keep_x = kept_inputs(options, synaptic, record, needs, checkpoint)
    shared = not options.spiking and options.min_v_mem is None
    keep_v = need_grad and checkpoint is None and not shared
    return need_grad, checkpoint, keep_current, keep_x, keep_v


def planned_forward(
    x, v0, i0, alpha_mem, alpha_syn, threshold, bias, options, record, grad, needs, checkpoint,
    slopes=None,
):  # fmt: skip
    """:func:`sequence_forward`, keeping what backward reads given ``needs`` (whether each
    of ``x, v0, i0, alpha_mem, alpha_syn, threshold, bias`` needs its gradient), and the
    surrogate's slopes instead of the membranes with ``slopes`` (its form, from
    :func:`~aquatic.functional.neurons_jit_backward.kept_slopes`).

    Returns:
        ``(results, plan)``: ``sequence_forward``'s results and
        ``(need_grad, checkpoint, keep_current, keep_x, keep_v)``.
    """
    plan = _op_plan(options, alpha_syn is not None, record, grad, needs, checkpoint)
    need_grad, checkpoint, keep_current = plan[:3]
    results = sequence_forward(
        x, v0, i0, alpha_mem, alpha_syn, threshold, bias, options, record,
        need_grad and checkpoint is None, keep_current, checkpoint, slopes,
    )  # fmt: skip
    return results, plan


@torch.library.custom_op("aquatic::lif_sequence", mutates_args=())
def _sequence_op(
    x: Tensor,
    v0: Tensor,
    i0: Optional[Tensor],
    alpha_mem: Tensor,
    alpha_syn: Optional[Tensor],
    threshold: Tensor,
    bias: Optional[Tensor],
    reset: str,
    surrogate: str,
    max_spikes: int,
    min_v_mem: Optional[float],
    norm_input: bool,
    detach_reset: bool,
    spiking: bool,
    record: bool,
    grad: bool,
    needs: List[bool],
    checkpoint: Optional[int] = None,
) -> _Tensors8:
    """``(output, v_trace, current, v_pre, v_final, i_final, v_states, i_states)`` of
    ``sequence_forward``; empty tensors stand for ``None`` (and ``v_pre`` is empty when
    it is ``output``)."""
    options = Options(reset, None, max_spikes, min_v_mem, norm_input, detach_reset, spiking)
    results, plan = planned_forward(
        x, v0, i0, alpha_mem, alpha_syn, threshold, bias, options, record, grad, needs, checkpoint
    )
    output, v_trace, current, v_pre, v_final, i_final, v_states, i_states = results
    keep_v = plan[4]
    v_pre = v_pre if keep_v else None
    finals = (v_final.contiguous(), None if i_final is None else i_final.contiguous())
    kept = (output, v_trace, current, v_pre) + finals + (v_states, i_states)
    return tuple(op_output(t, x) for t in kept)


@_sequence_op.register_fake
def _(
    x,
    v0,
    i0,
    alpha_mem,
    alpha_syn,
    threshold,
    bias,
    reset,
    surrogate,
    max_spikes,
    min_v_mem,
    norm_input,
    detach_reset,
    spiking,
    record,
    grad,
    needs,
    checkpoint=None,
):
    options = Options(reset, None, max_spikes, min_v_mem, norm_input, detach_reset, spiking)
    synaptic = alpha_syn is not None
    _, checkpoint, keep_current, _, keep_v = _op_plan(
        options, synaptic, record, grad, needs, checkpoint
    )
    full = [True, spiking and record, keep_current]
    outputs = [torch.empty_like(x) if f else x.new_empty(0) for f in full]
    outputs.append(x.new_empty(x.shape if keep_v else (0,)))
    outputs += [v0.new_empty(v0.shape), x.new_empty(v0.shape if synaptic else 0)]
    count = -(-x.shape[1] // checkpoint) if checkpoint is not None else 0
    states = (count,) + tuple(v0.shape)
    outputs.append(x.new_empty(states if count else (0,)))
    outputs.append(x.new_empty(states if count and synaptic else (0,)))
    return tuple(outputs)


@torch.library.custom_op("aquatic::lif_sequence_backward", mutates_args=())
def _sequence_backward_op(
    saved: List[Optional[Tensor]],
    grads: List[Optional[Tensor]],
    reset: str,
    surrogate: str,
    max_spikes: int,
    min_v_mem: Optional[float],
    norm_input: bool,
    detach_reset: bool,
    spiking: bool,
    needs: List[bool],
    checkpoint: Optional[int] = None,
) -> _Tensors7:
    """The gradients of ``sequence_backward``; empty tensors stand for ``None``."""
    options = _op_options(
        reset, surrogate, max_spikes, min_v_mem, norm_input, detach_reset, spiking
    )
    results = sequence_backward(options, tuple(needs), tuple(saved), tuple(grads), checkpoint)
    return tuple(op_output(g, saved[3]) for g in results)


@_sequence_backward_op.register_fake
def _(
    saved,
    grads,
    reset,
    surrogate,
    max_spikes,
    min_v_mem,
    norm_input,
    detach_reset,
    spiking,
    needs,
    checkpoint=None,
):
    v, _, x, v0, i0, alpha_mem, alpha_syn, threshold, bias = saved[:9]
    n_steps = x.shape[1] if checkpoint is not None else v.shape[1]
    like_x = v0.new_empty((v0.shape[0], n_steps) + tuple(v0.shape[1:]))
    return tuple(fake_gradients(like_x, (v0, i0, alpha_mem, alpha_syn, threshold, bias), needs))


def _setup_context(ctx, inputs, output):
    x, v0, i0, alpha_mem, alpha_syn, threshold, bias = inputs[:7]
    ctx.options_args = inputs[7:14]
    record, grad, needs, checkpoint = inputs[14:]
    options = Options(*inputs[7:14])
    # A neuron that does not spike never reads its threshold: no gradient, as eagerly.
    ctx.needs = [need and (k != 5 or options.spiking) for k, need in enumerate(needs)]
    # Outputs that stand for None get no gradient (the compiler may pass empty ones).
    synaptic = alpha_syn is not None
    ctx.real = (options.spiking and record, synaptic and record, synaptic)
    _, checkpoint, keep_current, keep_x, keep_v = _op_plan(
        options, synaptic, record, grad, needs, checkpoint
    )
    ctx.checkpoint = checkpoint
    _, _, current, v_pre, _, _, v_states, i_states = output
    if checkpoint is None and not keep_v:  # the membrane is the output
        v_pre = output[0]
    ctx.save_for_backward(
        v_pre,
        current if keep_current and checkpoint is None else None,
        x if keep_x else None,
        v0,
        i0,
        alpha_mem,
        alpha_syn,
        threshold,
        bias,
        v_states if checkpoint is not None else None,
        i_states if checkpoint is not None and synaptic else None,
    )


def _backward(ctx, g_out, g_vtrace, g_current, g_vpre, g_vfinal, g_ifinal, g_vs, g_is):
    # current is the recorded i_trace (or internal, then without a gradient)
    traced, recorded, synaptic = ctx.real
    grads = [
        g_out,
        g_vtrace if traced else None,
        g_current if recorded else None,
        g_vfinal,
        g_ifinal if synaptic else None,
    ]
    results = _sequence_backward_op(
        list(ctx.saved_tensors), grads, *ctx.options_args, list(ctx.needs), ctx.checkpoint
    )
    grads = tuple(g if need else None for g, need in zip(results, ctx.needs))
    return grads + (None,) * 11


_sequence_op.register_autograd(_backward, setup_context=_setup_context)


def sequence_op(input, state, params, options, record, checkpoint=None) -> LIFOutput:
    """:func:`~aquatic.functional.neurons_fused.lif_fused` (its checked arguments) as the
    custom operator ``aquatic::lif_sequence``."""
    alpha_mem, alpha_syn, threshold, bias = params
    tensors = (input, state.v_mem, state.i_syn, alpha_mem, alpha_syn, threshold, bias)
    needs = [t is not None and t.requires_grad for t in tensors]
    key = surrogate_key(options.surrogate) if options.spiking else ""
    output, v_trace, current, _, v_final, i_final, _, _ = _sequence_op(
        *tensors,
        options.reset,
        key,
        options.max_spikes,
        options.min_v_mem,
        options.norm_input,
        options.detach_reset,
        options.spiking,
        record,
        torch.is_grad_enabled(),
        needs,
        checkpoint,
    )
    synaptic = alpha_syn is not None
    state = LIFState(v_final, i_final if synaptic else None)
    v_trace = v_trace if options.spiking and record else None
    return LIFOutput(output, state, v_trace, current if synaptic and record else None)
