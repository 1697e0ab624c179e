r"""Leaky integrate-and-fire layers: ``LIF`` (sequences), ``LIFCell`` (one step) and
``LIFRecurrent`` (with recurrent weights).

For input :math:`x[t]` (time step :math:`t`), decays :math:`\alpha = e^{-1/\tau}`
(:math:`\tau` in time steps), threshold :math:`\vartheta` and bias :math:`b`, following
the sinabs, rockpool and Xylo convention (the input decays in the step it arrives):

.. math::

    i[t] &= Q_i\big(\alpha_{syn} \odot (i[t-1] + x[t])\big)
        \quad\text{(with } \tau_{syn}\text{; otherwise } i[t] = x[t]) \\
    v[t] &= Q_v\big(\alpha_{mem} \odot v[t-1]
        + \big((1 - \alpha_{mem})\big)^{[\texttt{norm\_input}]}\, i[t] + b\big) \\
    s[t] &= H(v[t] - \vartheta)
        \quad\text{or}\quad \min(\max(\lfloor v[t]/\vartheta \rfloor, 0), s_{max}) \\
    v[t] &\leftarrow \max(v[t] - \vartheta\, s[t],\ v_{min})
        \quad\text{or}\quad \max(v[t]\,(1 - H(v[t] - \vartheta)),\ v_{min})

:math:`Q_v`, :math:`Q_i` are the ``QConfig.state`` quantizers (the identity without
one): the membrane is quantized after its integration and *before* the spike decision,
so spikes are decided on the quantized membrane, as on a chip. :math:`\alpha \odot y`
is :math:`\alpha y`, or, when the decay's quantizer knows the chip's integer rule
(``BitShiftDecay``, ``UniformDecay``) and the state is quantized, that rule applied on
the state's integer grid with the gradient of :math:`\alpha y` (see
:mod:`aquatic.nn.grid_decay`). The spike's gradient is a surrogate
(:mod:`aquatic.functional.surrogate`). See :mod:`aquatic.functional.neurons` for the
details, including how this differs from snnTorch's ``Leaky`` (reset timing).

Which implementation runs: ``LIF`` uses the fused whole-sequence autograd function
(:func:`~aquatic.functional.neurons_fused.lif_fused`); with ``QConfig.state`` on a fixed
grid (the hardware presets) the fused sequence with quantized states
(:mod:`aquatic.functional.neurons_grid`: the same values as the loop, bit for bit).
A state quantizer whose grid may move during a sequence (an observer, a learned scale)
or ``method="loop"`` runs one step at a time under autograd. ``LIFRecurrent`` always runs step by step (its input depends on its
previous spikes).

Each forward builds the layer's :class:`~aquatic.functional.NeuronSpec` once
(:meth:`~aquatic.nn.NeuronModule.spec`: the quantized decays, threshold and bias, the
options and the state operations) and runs it with
:func:`~aquatic.functional.neurons.neuron_sequence`,
:func:`~aquatic.functional.neurons.neuron_step` (``LIFCell``) or
:func:`~aquatic.functional.neurons.lif_recurrent`.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.functional.neurons import (
    LIFState,
    lif_recurrent,
    neuron_sequence,
    neuron_step,
)
from aquatic.functional.surrogate import Surrogate
from aquatic.nn.neuron_base import NeuronModule
from aquatic.nn.neuron_options import Bias, Value, document_neuron_args
from aquatic.qconfig import QConfig

__all__ = ["LIF", "LIFCell", "LIFRecurrent"]


@document_neuron_args()
class LIF(NeuronModule):
    """Leaky integrate-and-fire neurons, optionally current-based (``tau_syn``).

    Args:
        %(neuron_args)s

    Shape:
        - Input: ``(N, T, *)``, batch first, then time, then any neuron shape.
        - Output: spikes, ``(N, T, *)``.

    Attributes:
        v_mem, i_syn: the state after the last step of the last forward (``(N, *)``,
            detached); ``None`` before the first forward.
        recordings: ``{"v_mem": ..., "i_syn": ...}`` traces ``(N, T, *)`` when
            ``record_states``.

    Example:
        >>> lif = LIF(tau_mem=10.0, threshold=1.0)
        >>> spikes = lif(torch.full((1, 4, 2), 0.6))
        >>> spikes[0, :, 0]
        tensor([0., 1., 0., 1.])
        >>> lif.v_mem
        tensor([[0.2599, 0.2599]])
    """

    def __init__(
        self,
        tau_mem: Optional[Value] = None,
        tau_syn: Optional[Value] = None,
        threshold: Value = 1.0,
        reset: str = "subtract",
        *,
        alpha_mem: Optional[Value] = None,
        alpha_syn: Optional[Value] = None,
        surrogate: Optional[Surrogate] = None,
        max_spikes: int = 1,
        min_v_mem: Optional[float] = None,
        norm_input: bool = False,
        bias: Bias = None,
        train_decay: bool = False,
        train_threshold: bool = False,
        detach_reset: bool = False,
        persistent_state: bool = False,
        record_states: bool = False,
        method: str = "auto",
        checkpoint: Optional[int] = None,
        strict_threshold: bool = False,
        input_after_decay: bool = False,
        input_delay: bool = False,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__()
        self.strict_threshold = bool(strict_threshold)
        self.input_after_decay = bool(input_after_decay)
        self.input_delay = bool(input_delay)
        if self.input_delay and persistent_state:
            raise ValueError(
                "input_delay drops the last input step of each forward, which "
                "persistent_state would need in the next one; use one of them"
            )
        if self.strict_threshold and max_spikes != 1:
            raise ValueError(
                f"strict_threshold decides binary spikes; got max_spikes={max_spikes!r}, "
                "use max_spikes=1"
            )
        self._setup_neuron(
            tau_mem=tau_mem,
            tau_syn=tau_syn,
            threshold=threshold,
            reset=reset,
            alpha_mem=alpha_mem,
            alpha_syn=alpha_syn,
            surrogate=surrogate,
            max_spikes=max_spikes,
            min_v_mem=min_v_mem,
            norm_input=norm_input,
            bias=bias,
            train_decay=train_decay,
            train_threshold=train_threshold,
            detach_reset=detach_reset,
            persistent_state=persistent_state,
            record_states=record_states,
            method=method,
            checkpoint=checkpoint,
            qconfig=qconfig,
        )

    def forward(self, input: Tensor, state: Optional[LIFState] = None) -> Tensor:
        """Spikes for ``input`` ``(N, T, *)``, from ``state`` (a :class:`LIFState`) if given."""
        result = neuron_sequence(
            input,
            self.spec(),
            state=self._initial_state(input, state),
            record_states=self.record_states,
            method=self.method,
            checkpoint=self.checkpoint,
        )
        self._store(result)
        return result.output


@document_neuron_args()
class LIFCell(NeuronModule):
    """One time step of :class:`LIF`, with the state passed in and returned explicitly.

    Arguments as :class:`LIF`, without the options about sequences. The cell keeps no
    state.

    Args:
        %(neuron_args)s

    Shape:
        - Input: ``(N, *)``; state: a :class:`~aquatic.functional.neurons.LIFState` of
          ``(N, *)`` tensors, or ``None`` for zeros.
        - Output: ``(spikes, new_state)``.

    Example:
        >>> cell = LIFCell(alpha_mem=0.5)
        >>> s, state = cell(torch.tensor([[0.8]]))
        >>> s, state.v_mem
        (tensor([[0.]]), tensor([[0.8000]]))
        >>> s, state = cell(torch.tensor([[0.8]]), state)
        >>> s, state.v_mem
        (tensor([[1.]]), tensor([[0.2000]]))
    """

    _sequence = False

    def __init__(
        self,
        tau_mem: Optional[Value] = None,
        tau_syn: Optional[Value] = None,
        threshold: Value = 1.0,
        reset: str = "subtract",
        *,
        alpha_mem: Optional[Value] = None,
        alpha_syn: Optional[Value] = None,
        surrogate: Optional[Surrogate] = None,
        max_spikes: int = 1,
        min_v_mem: Optional[float] = None,
        norm_input: bool = False,
        bias: Bias = None,
        train_decay: bool = False,
        train_threshold: bool = False,
        detach_reset: bool = False,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__()
        self._setup_neuron(
            tau_mem=tau_mem,
            tau_syn=tau_syn,
            threshold=threshold,
            reset=reset,
            alpha_mem=alpha_mem,
            alpha_syn=alpha_syn,
            surrogate=surrogate,
            max_spikes=max_spikes,
            min_v_mem=min_v_mem,
            norm_input=norm_input,
            bias=bias,
            train_decay=train_decay,
            train_threshold=train_threshold,
            detach_reset=detach_reset,
            qconfig=qconfig,
        )

    def forward(self, input: Tensor, state: Optional[LIFState] = None) -> Tuple[Tensor, LIFState]:
        """Spikes and the new state after one step with input ``(N, *)``."""
        return neuron_step(input, self.spec(), state)


@document_neuron_args(
    num_neurons="number of neurons ``C``; ``rec_weight`` is ``(C, C)``.",
    qconfig="quantizers for ``tau``, ``alpha``, ``threshold``, ``bias``, ``state`` and "
    "``weight`` (``rec_weight``).",
)
class LIFRecurrent(LIF):
    """:class:`LIF` neurons that also receive their own previous spikes through weights.

    The input of step :math:`t` is :math:`x[t] + W s[t-1]` (before the synaptic
    current), with the recurrent weight :math:`W` (``rec_weight``, quantized by
    ``QConfig.weight``) initialized like ``torch.nn.Linear``. It runs step by step
    under autograd (:func:`~aquatic.functional.neurons.lif_recurrent`).

    Args:
        %(neuron_args)s

    Shape:
        - Input: ``(N, T, C)``.
        - Output: spikes, ``(N, T, C)``.

    Example:
        >>> layer = LIFRecurrent(3, tau_mem=5.0)
        >>> layer.rec_weight.shape
        torch.Size([3, 3])
        >>> layer(torch.zeros(2, 4, 3)).shape
        torch.Size([2, 4, 3])
    """

    _quantized_params = {**NeuronModule._quantized_params, "rec_weight": "weight"}

    def __init__(
        self,
        num_neurons: int,
        tau_mem: Optional[Value] = None,
        tau_syn: Optional[Value] = None,
        threshold: Value = 1.0,
        reset: str = "subtract",
        *,
        alpha_mem: Optional[Value] = None,
        alpha_syn: Optional[Value] = None,
        surrogate: Optional[Surrogate] = None,
        max_spikes: int = 1,
        min_v_mem: Optional[float] = None,
        norm_input: bool = False,
        bias: Bias = None,
        train_decay: bool = False,
        train_threshold: bool = False,
        detach_reset: bool = False,
        persistent_state: bool = False,
        record_states: bool = False,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        if isinstance(num_neurons, bool) or not isinstance(num_neurons, int) or num_neurons < 1:
            raise ValueError(f"num_neurons must be a positive int, got {num_neurons!r}")
        NeuronModule.__init__(self)
        self.num_neurons = num_neurons
        self.rec_weight = nn.Parameter(torch.empty(num_neurons, num_neurons))
        # torch.nn.Linear's initialization.
        nn.init.kaiming_uniform_(self.rec_weight, a=math.sqrt(5))
        self._setup_neuron(
            tau_mem=tau_mem,
            tau_syn=tau_syn,
            threshold=threshold,
            reset=reset,
            alpha_mem=alpha_mem,
            alpha_syn=alpha_syn,
            surrogate=surrogate,
            max_spikes=max_spikes,
            min_v_mem=min_v_mem,
            norm_input=norm_input,
            bias=bias,
            train_decay=train_decay,
            train_threshold=train_threshold,
            detach_reset=detach_reset,
            persistent_state=persistent_state,
            record_states=record_states,
            method="loop",
            qconfig=qconfig,
        )
        self.register_buffer("spikes", None, persistent=False)

    def reset_states(self) -> None:
        super().reset_states()
        self.spikes = None

    def forward(self, input: Tensor, state: Optional[LIFState] = None) -> Tensor:
        """Spikes for ``input`` ``(N, T, C)``, from ``state`` if given."""
        if not isinstance(input, Tensor) or input.dim() != 3 or input.shape[2] != self.num_neurons:
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(
                f"LIFRecurrent expects input of shape (N, T, {self.num_neurons}), got {shape}"
            )
        result = lif_recurrent(
            input,
            self.spec(),
            self.quantized("rec_weight"),
            state=self._start(input, state),
            record_states=self.record_states,
        )
        self._store(result)
        self.spikes = result.state.spikes.detach()
        return result.output

    def _start(self, input: Tensor, state: Optional[LIFState]) -> Optional[LIFState]:
        """The initial state, with the stored spikes of the step before the first when
        the state is carried over (``persistent_state``)."""
        if state is not None:
            return state
        state = self._initial_state(input, None)
        if state is None or self.spikes is None:
            return state
        return LIFState(state.v_mem, state.i_syn, self.spikes)

    def extra_repr(self) -> str:
        return f"num_neurons={self.num_neurons}, " + super().extra_repr()
