"""Running a :class:`~aquatic.functional.neuron_types.NeuronSpec`: one step, a sequence,
a recurrent sequence.

The equations are those of :mod:`aquatic.functional.neurons`, whose keyword functions
(:func:`~aquatic.functional.neurons.lif`, ...) build a spec and call these. The layers
of :mod:`aquatic.nn` call these with their own :meth:`~aquatic.nn.NeuronModule.spec`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as torch_functional

from aquatic.functional.neuron_checks import (
    check_finite_input,
    check_input,
    check_method,
    prepare,
)
from aquatic.functional.neuron_values import check_steps
from aquatic.functional.neuron_types import LIFOutput, LIFState, NeuronSpec, StateOps
from aquatic.functional.neurons_fused import lif_fused
from aquatic.functional.neurons_grid import delayed, grid_rules, grid_runs
from aquatic.functional.neurons_grid_fused import lif_grid_fused
from aquatic.functional.surrogate import spike

__all__ = ["check_spec", "neuron_step", "neuron_sequence", "lif_recurrent"]


def check_spec(spec: NeuronSpec) -> NeuronSpec:
    """``spec`` if it is a :class:`NeuronSpec` a neuron function can run.

    Raises:
        TypeError: ``spec`` is not a :class:`NeuronSpec`.
        ValueError: a spiking spec without a threshold.
    """
    if not isinstance(spec, NeuronSpec):
        raise TypeError(
            f"spec must be a NeuronSpec (e.g. layer.spec() of an aquatic.nn neuron layer), "
            f"got {type(spec).__name__}"
        )
    if spec.spiking and spec.threshold is None:
        raise ValueError(
            "a spiking NeuronSpec needs a threshold, got threshold=None; give one, or "
            "spiking=False for a leaky integrator"
        )
    if spec.strict_threshold and spec.max_spikes != 1:
        raise ValueError(
            f"strict_threshold decides binary spikes (v > threshold); got max_spikes="
            f"{spec.max_spikes}: use max_spikes=1 or strict_threshold=False"
        )
    return spec


def _params(spec: NeuronSpec) -> Tuple:
    # A leaky integrator never reads its threshold; 1.0 keeps the fused function's
    # arguments tensors.
    threshold = 1.0 if spec.threshold is None else spec.threshold
    return spec.alpha_mem, spec.alpha_syn, threshold, spec.bias


def _step(x, state, params, options, ops: StateOps, strict=False, after_decay=False):
    # Without state ops, the order of operations here is the one lif_fused uses, so both
    # give the same bits.
    alpha_mem, alpha_syn, threshold, bias = params
    reset, surrogate, max_spikes, min_v_mem, norm_input, detach_reset, spiking = options
    if alpha_syn is not None:
        # Loihi decays the current, then adds the input; the default decays both.
        total = state.i_syn if after_decay else state.i_syn + x
        if ops.decay_i_syn is None:
            i_syn = alpha_syn * total
        else:
            i_syn = ops.decay_i_syn(total, alpha_syn)
        if after_decay:
            i_syn = i_syn + x
        if ops.quantize_i_syn is not None:
            i_syn = ops.quantize_i_syn(i_syn)
    else:
        i_syn = x
    drive = (1 - alpha_mem) * i_syn if norm_input else i_syn
    if bias is not None:
        drive = drive + bias
    if ops.decay_v_mem is None:
        v = alpha_mem * state.v_mem + drive
    else:
        v = ops.decay_v_mem(state.v_mem, alpha_mem) + drive
    # The state quantizer runs before the spike decision: spikes are decided on the
    # quantized membrane, as a chip decides them on its integer one.
    if ops.quantize_v_mem is not None:
        v = ops.quantize_v_mem(v)
    if spiking:
        out = spike(v, threshold, surrogate, max_spikes)
        if strict:
            # v > threshold: no spike where v equals it (the surrogate gradient stays).
            out = out - (v == threshold).to(out.dtype).detach()
        if reset == "subtract":
            v = v - threshold * (out.detach() if detach_reset else out)
        else:
            fired = out if max_spikes == 1 else spike(v, threshold, surrogate, 1)
            v = v * (1 - (fired.detach() if detach_reset else fired))
    if min_v_mem is not None:
        v = torch.clamp(v, min=min_v_mem)
    if not spiking:
        out = v
    return out, LIFState(v, i_syn if alpha_syn is not None else None)


def neuron_step(
    input: Tensor, spec: NeuronSpec, state: Optional[LIFState] = None
) -> Tuple[Tensor, LIFState]:
    """One time step of the neurons ``spec`` describes, under autograd.

    Args:
        input: input current :math:`x[t]`, shape ``(N, *)``.
        spec: the neurons (e.g. ``layer.spec()``).
        state: the previous :class:`LIFState`, or ``None`` for zeros.

    Returns:
        ``(spikes, new_state)``; for a spec with ``spiking=False`` ``(membrane, new_state)``.

    Example:
        >>> spec = NeuronSpec(alpha_mem=0.5)
        >>> s, state = neuron_step(torch.tensor([[0.6, 1.2]]), spec)
        >>> s, state.v_mem
        (tensor([[0., 1.]]), tensor([[0.6000, 0.2000]]))
    """
    check_spec(spec)
    if spec.input_delay:
        raise ValueError(
            "input_delay delays the input by one step of a sequence; run the spec with "
            "neuron_sequence, or delay the input yourself and use input_delay=False"
        )
    check_input(input, 2, "(N, *)")
    check_finite_input(input, spec.state_ops.any())
    return _checked_step(input, spec, state, True)


def _checked_step(input: Tensor, spec: NeuronSpec, state, values: bool):
    params, state, options = prepare(
        input, state, _params(spec), spec.options(), sequence=False, values=values
    )
    return _step(input, state, params, options, spec.state_ops, *_order(spec))


def _order(spec: NeuronSpec) -> Tuple[bool, bool]:
    return spec.strict_threshold, spec.input_after_decay


def _loop(input: Tensor, spec: NeuronSpec, state, record_states: bool) -> LIFOutput:
    params, state, options = prepare(input, state, _params(spec), spec.options())
    order = _order(spec)
    outputs, v_trace, i_trace = [], [], []
    # unbind, not input[:, t]: one backward node for all steps instead of one full-size
    # zero-filled gradient per step.
    for x in input.unbind(1):
        out, state = _step(x, state, params, options, spec.state_ops, *order)
        outputs.append(out)
        if record_states:
            v_trace.append(state.v_mem)
            i_trace.append(state.i_syn)
    v_mem = torch.stack(v_trace, 1) if record_states else None
    i_syn = torch.stack(i_trace, 1) if record_states and params[1] is not None else None
    return LIFOutput(torch.stack(outputs, 1), state, v_mem, i_syn)


def neuron_sequence(
    input: Tensor,
    spec: NeuronSpec,
    *,
    state: Optional[LIFState] = None,
    record_states: bool = False,
    method: str = "auto",
    checkpoint: Optional[int] = None,
) -> LIFOutput:
    """A whole sequence ``(N, T, *)`` of the neurons ``spec`` describes.

    ``method="auto"`` runs :func:`~aquatic.functional.neurons_fused.lif_fused`. With
    state quantizers or decay functions in ``spec.state_ops``, or ``strict_threshold``
    or ``input_after_decay``, it runs
    :func:`~aquatic.functional.neurons_grid_fused.lif_grid_fused` when every state
    operation describes itself as a fixed grid and an integer rule (a layer's quantizers
    with a fixed range: :mod:`aquatic.functional.neurons_grid`) and the input is a CPU
    tensor of float32 or float64, else one step at a time under autograd (arbitrary
    modules and functions). ``"loop"`` and ``"fused"`` force one; ``"fused"`` with state
    operations that do not describe themselves, or another input, is an error.
    ``input_delay`` shifts the input one step along time before either runs.

    Args:
        input: ``(N, T, *)``, batch first, then time.
        spec: the neurons (e.g. ``layer.spec()``).
        state: the initial :class:`LIFState`, or ``None`` for zeros.
        record_states: also return the membrane and synaptic traces.
        method: ``"auto"``, ``"loop"`` or ``"fused"``.
        checkpoint: keep the state every this many steps for backward and recompute
            the rest (:func:`~aquatic.functional.neurons_fused.lif_fused`), or
            ``None``. Only the fused float sequence takes it; a spec that runs another
            way is a ``ValueError`` with it.

    Example:
        >>> x = torch.tensor([[[0.8], [0.8], [0.8]]])
        >>> neuron_sequence(x, NeuronSpec(alpha_mem=0.5)).output.flatten()
        tensor([0., 1., 0.])
    """
    check_method(method)
    check_spec(spec)
    check_input(input, 3, "(N, T, *)")  # before the device and dtype choose the way
    check_finite_input(input, spec.state_ops.any())
    quantized = spec.state_ops.any() or any(_order(spec))
    rules = None
    if quantized and method != "loop":
        rules = grid_rules(spec.state_ops, spec.alpha_mem, spec.alpha_syn, *_order(spec))
    if rules is not None and not grid_runs(input):
        if method == "fused":
            raise ValueError(
                "the fused method runs quantized states on CPU tensors of float32 or float64, "
                f"got {input.dtype} on {input.device}; use method='loop' or 'auto'"
            )
        rules = None
    if method == "fused" and quantized and rules is None:
        raise ValueError(
            "the fused method runs state quantizers and decay functions only on fixed grids (a "
            "layer's quantizers with a fixed range, see aquatic.functional.neurons_grid), "
            "not arbitrary functions; use method='loop' or 'auto'"
        )
    if spec.input_delay and rules is not None:
        rules = rules._replace(delay=True)  # the fused sequence reads the input late
    elif spec.input_delay and input.dim() >= 2:
        input = delayed(input)
    if checkpoint is not None and (rules is not None or method == "loop" or quantized):
        how = "on its state grids" if rules is not None else "one step at a time"
        raise ValueError(
            f"checkpoint={checkpoint!r} applies to the fused float sequence; these neurons "
            f"run {how} (method={method!r}, state operations or Loihi's orderings), which "
            "keeps what it keeps: use checkpoint=None"
        )
    if rules is not None:
        params, state, options = prepare(input, state, _params(spec), spec.options())
        return lif_grid_fused(input, params, state, options, rules, record_states)
    if method == "loop" or quantized:
        return _loop(input, spec, state, record_states)
    alpha_mem, alpha_syn, threshold, bias = _params(spec)
    return lif_fused(
        input,
        alpha_mem,
        alpha_syn,
        threshold,
        state=state,
        record_states=record_states,
        reset=spec.reset,
        surrogate=spec.surrogate,
        max_spikes=spec.max_spikes,
        min_v_mem=spec.min_v_mem,
        norm_input=spec.norm_input,
        bias=bias,
        detach_reset=spec.detach_reset,
        spiking=spec.spiking,
        checkpoint=checkpoint,
    )


def lif_recurrent(
    input: Tensor,
    spec: NeuronSpec,
    rec_weight: Tensor,
    *,
    state: Optional[LIFState] = None,
    record_states: bool = False,
) -> LIFOutput:
    """A sequence of neurons that also receive their own previous spikes.

    The input of step :math:`t` is :math:`x[t] + W s[t-1]` (before the synaptic
    current), then one :func:`neuron_step`; :math:`s[-1]` is ``state.spikes`` (zeros
    when ``None``). It runs step by step under autograd (each step's input depends on
    the previous step's spikes).

    Args:
        input: ``(N, T, C)``.
        spec: the neurons (e.g. ``layer.spec()``).
        rec_weight: the (quantized) recurrent weight :math:`W`, ``(C, C)``: row ``i``
            holds the weights into neuron ``i``, as in ``torch.nn.Linear``.
        state: the initial :class:`LIFState` (with ``spikes``, the spikes of the step
            before the first), or ``None`` for zeros.
        record_states: also return the membrane and synaptic traces.

    Returns:
        A :class:`LIFOutput` whose final state holds the last spikes in ``spikes``.

    Example:
        >>> w = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # neuron 1 feeds neuron 0
        >>> x = torch.tensor([[[0.0, 1.2], [0.0, 0.0]]])
        >>> lif_recurrent(x, NeuronSpec(alpha_mem=0.5), w).output[0]
        tensor([[0., 1.],
                [1., 0.]])
    """
    check_spec(spec)
    if spec.input_delay:
        raise ValueError(
            "lif_recurrent does not delay its input (input_delay=True); give a spec with "
            "input_delay=False"
        )
    if not isinstance(input, Tensor) or input.dim() != 3:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"lif_recurrent expects input of shape (N, T, C), got {shape}")
    check_steps(input)
    check_finite_input(input, spec.state_ops.any())
    neurons = input.shape[2]
    if not isinstance(rec_weight, Tensor) or tuple(rec_weight.shape) != (neurons, neurons):
        shape = tuple(rec_weight.shape) if isinstance(rec_weight, Tensor) else rec_weight
        raise ValueError(
            f"rec_weight must be a ({neurons}, {neurons}) tensor for input with {neurons} "
            f"neurons, got {shape!r}"
        )
    weight = rec_weight.to(input.dtype)
    previous = input.new_zeros(input[:, 0].shape)
    if isinstance(state, tuple) and len(state) > 2 and state[2] is not None:
        spikes = state[2]
        if tuple(spikes.shape) != tuple(previous.shape):
            raise ValueError(
                f"state.spikes has shape {tuple(spikes.shape)}, but this input needs "
                f"{tuple(previous.shape)} (batch, neurons)"
            )
        previous = spikes.to(input.dtype)
    outputs, v_trace, i_trace = [], [], []
    for step, x in enumerate(input.unbind(1)):
        # the parameters' values are checked at the first step only: they do not change
        current = x + torch_functional.linear(previous, weight)
        previous, state = _checked_step(current, spec, state, step == 0)
        outputs.append(previous)
        if record_states:
            v_trace.append(state.v_mem)
            i_trace.append(state.i_syn)
    v_mem = torch.stack(v_trace, 1) if record_states else None
    i_syn = torch.stack(i_trace, 1) if record_states and spec.synaptic else None
    final = LIFState(state.v_mem, state.i_syn, previous)
    return LIFOutput(torch.stack(outputs, 1), final, v_mem, i_syn)
