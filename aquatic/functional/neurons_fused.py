r"""The fused LIF sequence: one autograd function with a hand-written backward pass.

Autograd through :func:`~aquatic.functional.neurons.lif_loop` records about ten small
operations per time step and keeps their inputs alive. Here the forward pass runs the
time loop without autograd and keeps only the membrane *before* the reset, :math:`v[t]`,
for every step (plus the synaptic current when a decay or synaptic gradient needs it);
where backward reads nothing else of it, the compiled loop keeps the surrogate's slopes
:math:`\psi_t` instead (:func:`~aquatic.functional.neurons_jit_backward.kept_slopes`).
The backward pass recomputes spikes, surrogate slopes and reset membranes from
:math:`v` for a block of steps at once, so that only one linear recursion is left to
run step by step. With ``checkpoint=K`` forward keeps the input and the state entering
every ``K``-th step instead, and backward recomputes :math:`v` one segment of ``K``
steps at a time (from the last) by the same forward loop.

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

The loops themselves are in :mod:`aquatic.functional.neurons_kernel` (forward) and
:mod:`aquatic.functional.neurons_kernel_backward` (with Numba, compiled loops of both:
:mod:`aquatic.functional.neurons_jit` and
:mod:`aquatic.functional.neurons_jit_backward`). Eagerly they run as one
``torch.autograd.Function``; under ``torch.compile`` as the custom operators of
:mod:`aquatic.functional.neurons_fused_op`, which the compiler keeps whole (one node
each, the same loops, so the same bits as eagerly) instead of tracing thousands of
small in-place steps.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from aquatic.functional import neurons_jit_backward
from aquatic.functional.neuron_checks import check_checkpoint, prepare
from aquatic.functional.neuron_types import LIFOutput, LIFState, Number, Options
from aquatic.functional.neurons_fused_op import (
    planned_forward,
    sequence_op,
    surrogate_key,
    surrogate_of,
)
from aquatic.functional.neurons_kernel_backward import sequence_backward
from aquatic.functional.surrogate import Surrogate

__all__ = ["first_order", "lif_fused", "surrogate_key", "surrogate_of"]


def first_order(backward):
    """A fused sequence's ``backward``, refusing a graph of itself (``create_graph=True``).

    The fused backward passes are computed without autograd, so a second derivative
    through them would miss the slopes' own dependence on the membrane: where the
    incoming gradient does not itself need a gradient, PyTorch would not even say so.
    The reference loop computes it.

    Example:
        >>> from aquatic.nn import LIF
        >>> x = torch.randn(2, 5, 3, requires_grad=True)
        >>> spikes = LIF(tau_mem=5.0)(x)
        >>> torch.autograd.grad(spikes.sum(), x, create_graph=True)
        Traceback (most recent call last):
        ...
        RuntimeError: a fused spiking sequence has no second derivative ...
    """

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "a fused spiking sequence has no second derivative (backward with "
                "create_graph=True, torch.autograd.grad(..., create_graph=True)); run "
                "the layer step by step for that: layer.method = 'loop' (or "
                "neuron_sequence(..., method='loop'))"
            )
        return backward(ctx, *grads)

    return checked


class _LIFSequence(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x, v0, i0, alpha_mem, alpha_syn, threshold, bias, options, record, grad, checkpoint
    ):
        ctx.set_materialize_grads(False)
        tensors = (x, v0, i0, alpha_mem, alpha_syn, threshold, bias)
        needs = ctx.needs_input_grad[:7]
        slopes = None
        if grad and any(needs):
            slopes = neurons_jit_backward.kept_slopes(options, needs, record, checkpoint, *tensors)
        results, plan = planned_forward(  # nothing is kept for inference
            *tensors, options, record, grad, needs, checkpoint, slopes
        )
        output, v_trace, current, v_pre, v_final, i_final, v_states, i_states = results
        need_grad, checkpoint, keep_current, keep_x, _ = plan
        ctx.options, ctx.checkpoint, ctx.slopes = options, checkpoint, slopes is not None
        if need_grad:
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
                v_states,
                i_states,
            )
        i_trace = current if alpha_syn is not None and record else None
        return output, v_trace, i_trace, v_final, i_final

    @staticmethod
    @first_order
    @once_differentiable
    def backward(ctx, g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal):
        grads = sequence_backward(
            ctx.options,
            ctx.needs_input_grad[:7],
            ctx.saved_tensors,
            (g_out, g_vtrace, g_itrace, g_vfinal, g_ifinal),
            ctx.checkpoint,
            ctx.slopes,
        )
        return grads + (None, None, None, None)


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
    checkpoint: Optional[int] = None,
) -> LIFOutput:
    """A whole LIF sequence ``(N, T, *)`` as one autograd function (the fast path).

    Same arguments and results as :func:`~aquatic.functional.neurons.lif_loop` except
    state quantizers and decay functions, which it does not run (with them, the loop is
    the implementation: :func:`~aquatic.functional.neurons.lif` picks it, and the layers
    follow). Without them the state quantizers :math:`Q` of the equations are the
    identity and every decay is a product, so the two compute the same bits. Not twice
    differentiable.

    ``checkpoint=K`` trades time for memory on long sequences: forward keeps the state
    that enters every ``K``-th step (and the input) instead of the membrane of every step,
    and backward recomputes the membranes one segment of ``K`` steps at a time, from
    the last. The gradients are those without it (the same operations recompute the
    same bits); backward then runs about one more forward pass, and what it holds besides
    the gradient it returns is ``T / K + K`` steps of state instead of ``T``
    (``K`` near :math:`\\sqrt{T}` holds the least). Sequences above
    :data:`~aquatic.functional.neurons_jit_backward.RECOMPUTE_ABOVE` bytes take such
    checkpoints by themselves where the compiled backward recomputes the membranes in
    its loop (:func:`~aquatic.functional.neurons_jit_backward.own_checkpoint`).

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
    check_checkpoint(checkpoint)
    if checkpoint is None and torch.is_grad_enabled():
        checkpoint = neurons_jit_backward.own_checkpoint(input, options)
    if torch.compiler.is_compiling():
        return sequence_op(input, state, params, options, record_states, checkpoint)
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
        checkpoint,
    )
    return LIFOutput(output, LIFState(v_final, i_final), v_trace, i_trace)
