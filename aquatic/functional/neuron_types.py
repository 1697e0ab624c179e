"""The types the neuron functions of :mod:`aquatic.functional.neurons` take and return.

:class:`LIFState` and :class:`LIFOutput` are public (re-exported by
:mod:`aquatic.functional.neurons` and :mod:`aquatic.functional`); :class:`Options` and
:class:`StateOps` bundle a neuron's non-tensor options and state operations for the
step and sequence functions.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

from torch import Tensor

from aquatic.functional.surrogate import Surrogate

__all__ = [
    "LIFState",
    "LIFOutput",
    "Options",
    "StateOps",
    "RESET_MODES",
    "METHODS",
    "Number",
    "StateQuantizer",
    "StateDecay",
]

#: Reset modes: subtract the threshold per spike, or set the membrane to zero.
RESET_MODES = ("subtract", "zero")
#: Implementations :func:`~aquatic.functional.neurons.lif` can run.
METHODS = ("auto", "loop", "fused")

Number = Union[float, Tensor]
StateQuantizer = Optional[Callable[[Tensor], Tensor]]
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
    """What a step does to its state besides the float arithmetic (``None``: nothing)."""

    quantize_v_mem: StateQuantizer = None
    quantize_i_syn: StateQuantizer = None
    decay_v_mem: StateDecay = None
    decay_i_syn: StateDecay = None

    def any(self) -> bool:
        return any(op is not None for op in self)
