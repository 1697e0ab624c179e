"""The types the neuron functions of :mod:`aquatic.functional.neurons` take and return.

:class:`LIFState`, :class:`LIFOutput`, :class:`NeuronSpec` and :class:`StateOps` are
public (re-exported by :mod:`aquatic.functional.neurons` and :mod:`aquatic.functional`);
:class:`Options` bundles a neuron's non-tensor options for the step and sequence
functions.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

from torch import Tensor

from aquatic.functional.surrogate import Surrogate

__all__ = [
    "LIFState",
    "LIFOutput",
    "NeuronSpec",
    "Options",
    "StateOps",
    "RESET_MODES",
    "METHODS",
    "Number",
    "StateTransform",
    "StateDecay",
    "TAU_MIN",
]

#: Reset modes: subtract the threshold per spike, or set the membrane to zero.
RESET_MODES = ("subtract", "zero")
#: Implementations :func:`~aquatic.functional.neurons.lif` can run.
METHODS = ("auto", "loop", "fused")

#: Smallest time constant (in steps) that forward uses: :math:`e^{-1/\tau}` is 0 in
#: float32 below it anyway, and :math:`d\alpha/d\tau = \alpha/\tau^2` would be
#: :math:`0 \cdot \infty`.
TAU_MIN = 1e-3

Number = Union[float, Tensor]
#: ``transform(state) -> state``: a state quantizer's forward (:math:`Q_v`, :math:`Q_i`).
StateTransform = Optional[Callable[[Tensor], Tensor]]
#: ``decay(state, alpha) -> decayed state``, replacing ``alpha * state``.
StateDecay = Optional[Callable[[Tensor, Tensor], Tensor]]


class LIFState(NamedTuple):
    """Neuron state after a step, each ``(N, *)``.

    Attributes:
        v_mem: membrane potential after the reset.
        i_syn: synaptic current (``None`` without a synaptic state).
        spikes: the last spikes (recurrent layers only, ``None`` otherwise).
    """

    v_mem: Tensor
    i_syn: Optional[Tensor] = None
    spikes: Optional[Tensor] = None


class LIFOutput(NamedTuple):
    """Result of a whole sequence.

    Attributes:
        output: spikes ``(N, T, *)``; for :func:`exp_leak` the membrane trace.
        state: the final :class:`LIFState`.
        v_mem: the membrane after each step's reset, ``(N, T, *)``, when recorded.
        i_syn: the synaptic current of each step, ``(N, T, *)``, when recorded.
    """

    output: Tensor
    state: LIFState
    v_mem: Optional[Tensor] = None
    i_syn: Optional[Tensor] = None


class Options(NamedTuple):
    """The non-tensor options of a neuron, as the step and sequence functions take them."""

    reset: str
    surrogate: Surrogate
    max_spikes: int
    min_v_mem: Optional[float]
    norm_input: bool
    detach_reset: bool
    spiking: bool


class StateOps(NamedTuple):
    """What a step does to its state besides the float arithmetic (``None``: nothing).

    Attributes:
        quantize_v_mem: :math:`Q_v`, applied to the membrane after the integration,
            before the spike decision and the reset (``QConfig.state``).
        quantize_i_syn: :math:`Q_i`, applied to the synaptic current after its update.
        decay_v_mem: ``decay(v, alpha_mem)`` in place of ``alpha_mem * v`` (a chip's
            integer leak on the state's grid, see :mod:`aquatic.nn.grid_decay`).
        decay_i_syn: the same for the synaptic current, applied to ``i[t-1] + x[t]``.
    """

    quantize_v_mem: StateTransform = None
    quantize_i_syn: StateTransform = None
    decay_v_mem: StateDecay = None
    decay_i_syn: StateDecay = None

    def any(self) -> bool:
        """Whether any operation is given (then only the step-by-step loop runs them)."""
        return any(op is not None for op in self)


class NeuronSpec(NamedTuple):
    """Everything that defines what a layer of neurons computes, as one value.

    :meth:`aquatic.nn.NeuronModule.spec` builds it from a layer (quantized values, once
    per forward); :func:`~aquatic.functional.neurons.neuron_sequence`,
    :func:`~aquatic.functional.neurons.neuron_step` and
    :func:`~aquatic.functional.neurons.lif_recurrent` run it; the integer conversion,
    NIR and the hardware exports read it. The symbols are those of the equations in
    :mod:`aquatic.functional.neurons`.

    Attributes:
        alpha_mem: membrane decay :math:`\\alpha_{mem}` per step in ``[0, 1]`` (a number,
            or a tensor broadcasting to the neurons); ``1.0`` for neurons without leak
            (``IAF``).
        alpha_syn: synaptic decay :math:`\\alpha_{syn}`; ``None``: no synaptic state
            (:math:`i[t] = x[t]`).
        threshold: firing threshold :math:`\\vartheta > 0`; ``None`` for neurons that
            do not spike.
        bias: constant input :math:`b` per step, or ``None``.
        reset: ``"subtract"`` (the threshold per spike) or ``"zero"``.
        surrogate: the spike's surrogate gradient (``None``: the default,
            :class:`~aquatic.nn.SingleExponential`).
        max_spikes: most spikes per neuron and step (1: binary spikes).
        min_v_mem: lower bound :math:`v_{min}` of the membrane after the reset, or ``None``.
        norm_input: scale the input by :math:`1 - \\alpha_{mem}`.
        detach_reset: no gradient through the spikes in the reset term.
        spiking: ``False`` for a leaky integrator (``ExpLeak``): no spikes and no reset;
            the output is the membrane. ``reset`` to ``detach_reset`` then do nothing.
        state_ops: the state quantizers :math:`Q_v, Q_i` and decay functions
            (:class:`StateOps`; all ``None`` by default).
        strict_threshold: spike when :math:`v > \\vartheta` rather than
            :math:`v \\ge \\vartheta` (Loihi's test; binary spikes only).
        input_after_decay: add the input to the synaptic current after its decay,
            :math:`i[t] = Q_i(\\alpha_{syn} \\odot i[t-1] + x[t])` (Loihi's CUBA order),
            rather than decaying it in its arrival step.
        input_delay: the neurons receive the input one step late, :math:`x[t-1]` at
            step :math:`t` (zero at step 0), as a Loihi connection delivers it.

    A recurrent layer's weight is not part of the spec: it connects neurons, and
    :func:`~aquatic.functional.neurons.lif_recurrent` takes it as an argument.

    Example:
        >>> spec = NeuronSpec(alpha_mem=0.5, threshold=1.0, max_spikes=2)
        >>> spec.synaptic, spec.max_spikes, spec.state_ops.any()
        (False, 2, False)
    """

    alpha_mem: Number
    alpha_syn: Optional[Number] = None
    threshold: Optional[Number] = 1.0
    bias: Optional[Number] = None
    reset: str = "subtract"
    surrogate: Optional[Surrogate] = None
    max_spikes: int = 1
    min_v_mem: Optional[float] = None
    norm_input: bool = False
    detach_reset: bool = False
    spiking: bool = True
    state_ops: StateOps = StateOps()
    strict_threshold: bool = False
    input_after_decay: bool = False
    input_delay: bool = False

    @property
    def synaptic(self) -> bool:
        """Whether the neurons have a synaptic current state (``alpha_syn`` given)."""
        return self.alpha_syn is not None

    def options(self) -> Options:
        """The non-tensor options, as the step and sequence functions check them."""
        return Options(
            self.reset,
            self.surrogate,
            self.max_spikes,
            self.min_v_mem,
            self.norm_input,
            self.detach_reset,
            self.spiking,
        )


def __getattr__(name: str):
    # The former name of StateTransform; hw.loihi.StateQuantizer is a quantizer class.
    if name == "StateQuantizer":
        import warnings

        warnings.warn(
            "aquatic.functional.neuron_types.StateQuantizer is deprecated; use StateTransform",
            DeprecationWarning,
            stacklevel=2,
        )
        return StateTransform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
