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

The loops themselves are in :mod:`aquatic.functional.neurons_kernel`. Eagerly they
run as one ``torch.autograd.Function``; under ``torch.compile`` as the custom operators
``aquatic::lif_sequence`` and ``aquatic::lif_sequence_backward``, which the compiler
keeps whole (one node each, the same loops, so the same bits as eagerly) instead of
tracing thousands of small in-place steps.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from aquatic.functional.custom_ops import fake_gradients, op_output
from aquatic.functional.neuron_checks import prepare
from aquatic.functional.neuron_types import LIFOutput, LIFState, Number, Options
from aquatic.functional.neurons_kernel import sequence_backward, sequence_forward
from aquatic.functional.surrogate import Surrogate

__all__ = ["lif_fused", "surrogate_key", "surrogate_of"]


def _keeps(options: Options, synaptic: bool, record: bool, needs) -> Tuple[bool, bool]:
    """Whether forward keeps the current of every step, and whether it keeps the input."""
    keep_current = synaptic and (record or needs[4] or (options.norm_input and needs[3]))
    keep_x = (synaptic and needs[4]) or (not synaptic and options.norm_input and needs[3])
    return keep_current, keep_x


class _LIFSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, i0, alpha_mem, alpha_syn, threshold, bias, options, record, grad):
        ctx.set_materialize_grads(False)
        needs = ctx.needs_input_grad
        need_grad = grad and any(needs[:7])  # nothing is kept for inference
        keep_current, keep_x = _keeps(options, alpha_syn is not None, record, needs)
        output, v_trace, current, v_pre, v_final, i_final = sequence_forward(
            x,
            v0,
            i0,
            alpha_mem,
            alpha_syn,
            threshold,
            bias,
            options,
            record,
            need_grad,
            keep_current,
        )
        ctx.options = options
        if need_grad:
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
        i_trace = current if alpha_syn is not None and record else None
        return output, v_trace, i_trace, v_final, i_final

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal):
        grads = sequence_backward(
            ctx.options,
            ctx.needs_input_grad[:7],
            ctx.saved_tensors,
            (g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal),
        )
        return grads + (None, None, None)


# -- under torch.compile: the same loops as two custom operators ------------------------

#: Surrogates by key: the operators take a string where the function takes an object.
_SURROGATES: Dict[str, Surrogate] = {}

_Tensors6 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_Tensors7 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


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


_surrogate_key = surrogate_key  # the former name


def surrogate_of(key: str) -> Optional[Surrogate]:
    """The surrogate that :func:`surrogate_key` named ``key`` (``None`` for ``""``)."""
    return _SURROGATES[key] if key else None


def _op_options(reset, surrogate, max_spikes, min_v_mem, norm_input, detach_reset, spiking):
    surrogate = _SURROGATES[surrogate] if surrogate else None
    return Options(reset, surrogate, max_spikes, min_v_mem, norm_input, detach_reset, spiking)


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
) -> _Tensors6:
    """``(output, v_trace, current, v_pre, v_final, i_final)`` of ``sequence_forward``;
    empty tensors stand for ``None`` (and ``v_pre`` is empty when it is ``output``)."""
    options = Options(reset, None, max_spikes, min_v_mem, norm_input, detach_reset, spiking)
    keep_current = _keeps(options, alpha_syn is not None, record, needs)[0]
    results = sequence_forward(
        x,
        v0,
        i0,
        alpha_mem,
        alpha_syn,
        threshold,
        bias,
        options,
        record,
        grad and any(needs),
        keep_current,
    )
    output, v_trace, current, v_pre, v_final, i_final = results
    v_pre = None if v_pre is output else v_pre
    finals = (v_final.contiguous(), None if i_final is None else i_final.contiguous())
    return tuple(op_output(t, x) for t in (output, v_trace, current, v_pre) + finals)


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
):
    options = Options(reset, None, max_spikes, min_v_mem, norm_input, detach_reset, spiking)
    keep_current = _keeps(options, alpha_syn is not None, record, needs)[0]
    keep_v = grad and any(needs) and (spiking or min_v_mem is not None)
    full = [True, spiking and record, keep_current, keep_v]
    finals = [v0.new_empty(v0.shape), x.new_empty(v0.shape if alpha_syn is not None else 0)]
    return tuple(torch.empty_like(x) if f else x.new_empty(0) for f in full) + tuple(finals)


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
) -> _Tensors7:
    """The gradients of ``sequence_backward``; empty tensors stand for ``None``."""
    options = _op_options(
        reset, surrogate, max_spikes, min_v_mem, norm_input, detach_reset, spiking
    )
    results = sequence_backward(options, tuple(needs), tuple(saved), tuple(grads))
    return tuple(op_output(g, saved[0]) for g in results)


@_sequence_backward_op.register_fake
def _(
    saved, grads, reset, surrogate, max_spikes, min_v_mem, norm_input, detach_reset, spiking, needs
):
    v, _, _, v0, i0, alpha_mem, alpha_syn, threshold, bias = saved
    return tuple(fake_gradients(v, (v0, i0, alpha_mem, alpha_syn, threshold, bias), needs))


def _setup_context(ctx, inputs, output):
    x, v0, i0, alpha_mem, alpha_syn, threshold, bias = inputs[:7]
    ctx.options_args = inputs[7:14]
    record, grad, needs = inputs[14:]
    options = Options(*inputs[7:14])
    # A neuron that does not spike never reads its threshold: no gradient, as eagerly.
    ctx.needs = [need and (k != 5 or options.spiking) for k, need in enumerate(needs)]
    # Outputs that stand for None get no gradient (the compiler may pass empty ones).
    ctx.real = (options.spiking and record, alpha_syn is not None and record, alpha_syn is not None)
    keep_current, keep_x = _keeps(options, alpha_syn is not None, record, needs)
    _, _, current, v_pre, _, _ = output
    v_pre = output[0] if not options.spiking and options.min_v_mem is None else v_pre
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


def _backward(ctx, g_out, g_vtrace, g_current, g_vpre, g_vfinal, g_ifinal):
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
        list(ctx.saved_tensors), grads, *ctx.options_args, list(ctx.needs)
    )
    grads = tuple(g if need else None for g, need in zip(results, ctx.needs))
    return grads + (None,) * 10


_sequence_op.register_autograd(_backward, setup_context=_setup_context)


def _compiled(input, state, params, options, record) -> LIFOutput:
    alpha_mem, alpha_syn, threshold, bias = params
    tensors = (input, state.v_mem, state.i_syn, alpha_mem, alpha_syn, threshold, bias)
    needs = [t is not None and t.requires_grad for t in tensors]
    key = surrogate_key(options.surrogate) if options.spiking else ""
    output, v_trace, current, _, v_final, i_final = _sequence_op(
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
    )
    synaptic = alpha_syn is not None
    state = LIFState(v_final, i_final if synaptic else None)
    v_trace = v_trace if options.spiking and record else None
    return LIFOutput(output, state, v_trace, current if synaptic and record else None)


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
    if torch.compiler.is_compiling():
        return _compiled(input, state, params, options, record_states)
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
