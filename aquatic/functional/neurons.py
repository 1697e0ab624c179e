r"""Leaky integrate-and-fire neurons as pure functions (no state is kept here).

Every neuron in this module follows one set of equations, with the input decaying in
the step it arrives (the sinabs, rockpool and Xylo convention). For a time step
:math:`t` and input :math:`x[t]`:

.. math::

    i[t] &= \begin{cases}
        Q_i\big(\alpha_{syn} \odot (i[t-1] + x[t])\big) & \text{with a synaptic state }
            (\tau_{syn}) \\
        x[t] & \text{without}
    \end{cases} \\
    d[t] &= \begin{cases}
        (1 - \alpha_{mem})\, i[t] + b & \text{with } \texttt{norm\_input} \\
        i[t] + b & \text{without}
    \end{cases} \\
    v[t] &= Q_v\big(\alpha_{mem} \odot \tilde v[t-1] + d[t]\big) \\
    s[t] &= H(v[t] - \vartheta)
        \quad\text{or, with } s_{max} > 1,\quad
        \min(\max(\lfloor v[t] / \vartheta \rfloor, 0),\, s_{max}) \\
    \tilde v[t] &= \max\big(v[t] - \vartheta\, s[t],\; v_{min}\big)
        \quad\text{(subtract) or}\quad
        \max\big(v[t]\,(1 - H(v[t] - \vartheta)),\; v_{min}\big) \quad\text{(zero)}

with decays :math:`\alpha = e^{-1/\tau}` (:math:`\tau` in time steps), threshold
:math:`\vartheta > 0`, bias :math:`b` and floor :math:`v_{min}` (``min_v_mem``; none by
default). :math:`H(0) = 1`. The state carried to the next step is
:math:`(\tilde v[t], i[t])`, the membrane *after* the reset; recorded membrane traces
are :math:`\tilde v`. Spikes get the surrogate gradient of
:mod:`aquatic.functional.surrogate`, also where they enter the reset (unless
``detach_reset=True``). A non-spiking neuron (:func:`exp_leak`) skips :math:`s` and the
reset and returns :math:`\tilde v`.

Quantized state (``QConfig.state``). :math:`Q_v` and :math:`Q_i` are the state
quantizers (``quantize_v_mem``, ``quantize_i_syn``; the identity when not given). The
membrane is quantized after the integration (decay, input and bias) and *before* the
spike decision and the reset, so the spikes are decided on the quantized membrane, as a
chip decides them on its integer (saturated) membrane; subtracting a threshold on the
same grid keeps :math:`\tilde v` on the grid. The synaptic current is quantized after
its update, before it feeds the membrane.

Decays. :math:`\alpha \odot y` is the product :math:`\alpha y`, unless a decay
function (``decay_v_mem``, ``decay_i_syn``) is given: then it is ``decay(y, alpha)``.
The layers pass one when the decay quantizer knows the chip's integer rule and the
state has a grid (:meth:`aquatic.quantizers.BitShiftDecay.decay_state`:
:math:`s \cdot \mathrm{rule}(y / s)` with the gradient of :math:`\alpha y`); a bit-shift
decay then computes Xylo's ``y - max(y >> dash, 1)`` on the state's integer grid
rather than :math:`\alpha y` rounded to the nearest point.

Loihi's conventions. Three :class:`NeuronSpec` fields (off by default; ``LIF`` takes
them as arguments, :func:`aquatic.hw.loihi.neuron_options` sets them) change the
equations to Loihi's CUBA neuron as lava-nc computes it: ``strict_threshold`` spikes on
:math:`v[t] > \vartheta`; ``input_after_decay`` adds the input after the current's
decay, :math:`i[t] = Q_i(\alpha_{syn} \odot i[t-1] + x[t])`; ``input_delay`` feeds
:math:`x[t-1]` at step :math:`t` (zero at step 0). The fused sequence runs them
(:mod:`aquatic.functional.neurons_grid_fused`).

Relation to snnTorch's ``Leaky`` (default ``reset_delay=True``): snnTorch computes
:math:`U[t] = \beta U[t-1] + x[t] - \vartheta\, S[t-1]` with :math:`S[t] = H(U[t] -
\vartheta)` (strictly above the threshold) and returns the membrane before the reset.
Here the reset happens in the step of the spike and is then decayed with the membrane,
so after a spike the two membranes differ by :math:`\vartheta (1 - \alpha)` per spike
(decaying). They coincide for :math:`\alpha = \beta = 1` (integrate-and-fire) and, for any
decay, up to and including the first spike. The surrogate gradient also differs:
snnTorch never propagates through the reset (``detach_reset=True`` here).

Two implementations compute the same thing: :func:`lif_loop` calls :func:`lif_step`
once per step under autograd (the reference; runs state quantizers and decay
functions), and :func:`lif_fused` runs the whole sequence in one autograd function with
a hand-written backward pass (about twice as fast as the loop, with less memory; see
``benchmarks/lif_speed.py``), without state quantizers or decay functions. :func:`lif`
picks the fused one unless state quantizers or decay functions are given; those that
describe a fixed grid and a chip's integer rule (the layers' quantizers, see
:mod:`aquatic.functional.neurons_grid`) run in a fused sequence of their own
(:mod:`aquatic.functional.neurons_grid_fused`), the others in the loop.

Two ways to call them. The keyword functions here (:func:`lif`, :func:`lif_step`,
:func:`lif_loop`, :func:`exp_leak`) take each parameter and option as an argument.
They build a :class:`NeuronSpec` (one value holding all of them, as
:meth:`aquatic.nn.NeuronModule.spec` returns for a layer) and run it with
:func:`neuron_sequence` or :func:`neuron_step` (in
:mod:`aquatic.functional.neurons_spec`), which the layers call directly;
:func:`lif_recurrent` runs a spec with recurrent weights.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch  # the examples use it
from torch import Tensor

from aquatic.functional.neuron_types import (
    METHODS,
    RESET_MODES,
    LIFOutput,
    LIFState,
    NeuronSpec,
    Number,
    StateDecay,
    StateOps,
    StateTransform,
)
from aquatic.functional.neurons_spec import lif_recurrent, neuron_sequence, neuron_step
from aquatic.functional.surrogate import Surrogate

__all__ = [
    "LIFState",
    "LIFOutput",
    "RESET_MODES",
    "METHODS",
    "lif_step",
    "lif_loop",
    "lif",
    "exp_leak",
    "NeuronSpec",
    "StateOps",
    "neuron_step",
    "neuron_sequence",
    "lif_recurrent",
]


def lif_step(
    input: Tensor,
    state: Optional[LIFState],
    alpha_mem: Number,
    alpha_syn: Optional[Number] = None,
    threshold: Number = 1.0,
    *,
    reset: str = "subtract",
    surrogate: Optional[Surrogate] = None,
    max_spikes: int = 1,
    min_v_mem: Optional[float] = None,
    norm_input: bool = False,
    bias: Optional[Number] = None,
    detach_reset: bool = False,
    spiking: bool = True,
    quantize_v_mem: StateTransform = None,
    quantize_i_syn: StateTransform = None,
    decay_v_mem: StateDecay = None,
    decay_i_syn: StateDecay = None,
) -> Tuple[Tensor, LIFState]:
    """One time step of the equations in the module docstring, under autograd.

    Args:
        input: input current :math:`x[t]`, shape ``(N, *)``.
        state: the previous :class:`LIFState`, or ``None`` for zeros.
        alpha_mem: membrane decay :math:`\\alpha_{mem}` in ``[0, 1]`` (number, or a tensor
            that broadcasts to ``*``).
        alpha_syn: synaptic decay, or ``None`` for no synaptic state.
        threshold: firing threshold :math:`\\vartheta > 0`.
        reset: ``"subtract"`` or ``"zero"``.
        surrogate: surrogate gradient (default :class:`~aquatic.nn.SingleExponential`).
        max_spikes: most spikes per step (1: binary spikes).
        min_v_mem: lower bound of the membrane after the reset, or ``None``.
        norm_input: scale the input by :math:`1 - \\alpha_{mem}`.
        bias: constant input :math:`b` added every step, or ``None``.
        detach_reset: stop gradients through the spikes in the reset term.
        spiking: ``False`` for a leaky integrator (no spikes, no reset; returns the membrane).
        quantize_v_mem: applied to the membrane after the integration, before the spike
            decision and the reset (``QConfig.state``).
        quantize_i_syn: applied to the synaptic current after its update.
        decay_v_mem: ``decay(v, alpha_mem)`` in place of ``alpha_mem * v`` (e.g. a chip's
            integer leak on the state's grid; see the module docstring), or ``None``.
        decay_i_syn: the same for the synaptic current, applied to ``i[t-1] + x[t]``.

    Returns:
        ``(spikes, new_state)``; without spiking ``(membrane, new_state)``.

    Example:
        >>> s, state = lif_step(torch.tensor([[0.6, 1.2]]), None, alpha_mem=0.5)
        >>> s, state.v_mem
        (tensor([[0., 1.]]), tensor([[0.6000, 0.2000]]))
        >>> s, state = lif_step(torch.tensor([[0.6, 0.0]]), state, alpha_mem=0.5)
        >>> s, state.v_mem
        (tensor([[0., 0.]]), tensor([[0.9000, 0.1000]]))
    """
    spec = NeuronSpec(
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
        StateOps(quantize_v_mem, quantize_i_syn, decay_v_mem, decay_i_syn),
    )
    return neuron_step(input, spec, state)


def lif_loop(
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
    quantize_v_mem: StateTransform = None,
    quantize_i_syn: StateTransform = None,
    decay_v_mem: StateDecay = None,
    decay_i_syn: StateDecay = None,
) -> LIFOutput:
    """A whole sequence ``(N, T, *)``, one :func:`lif_step` per time step (the reference).

    Arguments as :func:`lif_step`, plus ``state`` (the initial state, zeros when
    ``None``) and ``record_states`` (return the membrane and synaptic traces).

    Example:
        >>> out = lif_loop(torch.tensor([[[0.8], [0.8], [0.8]]]), alpha_mem=0.5)
        >>> out.output.flatten(), out.state.v_mem
        (tensor([0., 1., 0.]), tensor([[0.9000]]))
    """
    spec = NeuronSpec(
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
        StateOps(quantize_v_mem, quantize_i_syn, decay_v_mem, decay_i_syn),
    )
    return neuron_sequence(input, spec, state=state, record_states=record_states, method="loop")


def lif(
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
    quantize_v_mem: StateTransform = None,
    quantize_i_syn: StateTransform = None,
    decay_v_mem: StateDecay = None,
    decay_i_syn: StateDecay = None,
    method: str = "auto",
    checkpoint: Optional[int] = None,
) -> LIFOutput:
    """A whole sequence ``(N, T, *)`` of LIF neurons, by the fastest applicable method.

    ``method="auto"`` runs :func:`lif_fused` unless a state quantizer or a decay function
    is given (they are arbitrary modules and functions, run step by step under
    autograd), in which case it runs :func:`lif_loop`. ``"loop"`` and ``"fused"`` force
    one; ``"fused"`` with state quantizers or decay functions is an error.
    ``checkpoint`` (the fused sequence only) trades time for memory on long sequences,
    see :func:`lif_fused`.

    Arguments otherwise as :func:`lif_loop`. It builds a :class:`NeuronSpec` from them
    and runs :func:`neuron_sequence`, which runs a spec as given (e.g. ``layer.spec()``
    of an :mod:`aquatic.nn` neuron layer).

    Example:
        >>> x = torch.tensor([[[0.8], [0.8], [0.8]]])
        >>> lif(x, alpha_mem=0.5).output.flatten()
        tensor([0., 1., 0.])
        >>> lif(x, 0.5, method="loop").output.flatten()
        tensor([0., 1., 0.])
    """
    spec = NeuronSpec(
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
        StateOps(quantize_v_mem, quantize_i_syn, decay_v_mem, decay_i_syn),
    )
    return neuron_sequence(
        input,
        spec,
        state=state,
        record_states=record_states,
        method=method,
        checkpoint=checkpoint,
    )


def exp_leak(
    input: Tensor,
    alpha_mem: Number,
    *,
    state: Optional[LIFState] = None,
    norm_input: bool = False,
    bias: Optional[Number] = None,
    min_v_mem: Optional[float] = None,
    quantize_v_mem: StateTransform = None,
    decay_v_mem: StateDecay = None,
    method: str = "auto",
) -> LIFOutput:
    """A leaky integrator :math:`v[t] = Q_v(\\alpha v[t-1] + x[t] + b)`, no spikes.

    Returns a :class:`LIFOutput` whose ``output`` is the membrane trace ``(N, T, *)``.
    Arguments as :func:`lif` (``quantize_v_mem`` runs after the integration, before
    the ``min_v_mem`` floor).

    Example:
        >>> exp_leak(torch.tensor([[[1.0], [0.0], [1.0]]]), alpha_mem=0.5).output.flatten()
        tensor([1.0000, 0.5000, 1.2500])
    """
    spec = NeuronSpec(
        alpha_mem,
        None,
        None,
        bias,
        min_v_mem=min_v_mem,
        norm_input=norm_input,
        spiking=False,
        state_ops=StateOps(quantize_v_mem=quantize_v_mem, decay_v_mem=decay_v_mem),
    )
    return neuron_sequence(input, spec, state=state, method=method)
