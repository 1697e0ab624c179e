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
(:func:`~aquatic.functional.neurons_fused.lif_fused`) unless ``QConfig.state`` quantizes
the state, or ``method="loop"``; then it runs one step at a time under autograd (state
quantizers are arbitrary modules, and the chip's decay rules need the quantized state
of each step). ``LIFRecurrent`` always runs step by step (its input depends on its
previous spikes).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as torch_functional

from aquatic.functional.neurons import LIFState, lif_step
from aquatic.functional.surrogate import Surrogate
from aquatic.nn.neuron_base import NeuronModule, Value
from aquatic.qconfig import QConfig

__all__ = ["LIF", "LIFCell", "LIFRecurrent"]

Bias = Union[bool, Value, None]


class LIF(NeuronModule):
    """Leaky integrate-and-fire neurons, optionally current-based (``tau_syn``).

    Args:
        tau_mem: membrane time constant in time steps (> 0), a number or one per neuron.
        tau_syn: synaptic time constant in time steps; ``None`` for no synaptic state.
        threshold: firing threshold (> 0), a number or one per neuron.
        reset: ``"subtract"`` (subtract the threshold per spike) or ``"zero"``.
        alpha_mem: membrane decay per step in ``[0, 1]``, instead of ``tau_mem``.
        alpha_syn: synaptic decay per step, instead of ``tau_syn``.
        surrogate: surrogate gradient, e.g. ``aquatic.nn.FastSigmoid(slope=10)``
            (default :class:`~aquatic.nn.SingleExponential`).
        max_spikes: most spikes per neuron and step; above 1 a neuron emits
            :math:`\\lfloor v/\\vartheta \\rfloor` spikes, capped.
        min_v_mem: lower bound of the membrane potential after the reset.
        norm_input: scale the input by :math:`1 - \\alpha_{mem}` (sinabs' default).
        bias: constant input per step: ``True`` for a trainable scalar starting at 0, or
            its initial value (a number or one per neuron); trainable.
        train_decay: make the given time constants (or decays) trainable parameters.
        train_threshold: make the threshold a trainable parameter.
        detach_reset: no gradient through the spikes in the reset term (snnTorch's rule).
        persistent_state: start each forward from the state the previous one ended in
            (streaming); otherwise from zero. A new batch size starts from zero.
        record_states: keep the membrane (and synaptic current) of every step in
            ``self.recordings``.
        method: ``"auto"``, ``"fused"`` or ``"loop"`` (see the module docstring).
        qconfig: quantizers for ``tau``, ``alpha``, ``threshold``, ``bias`` and ``state``.

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
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__()
        self._setup_decay("mem", tau_mem, alpha_mem, train_decay, required=True)
        self._setup_decay("syn", tau_syn, alpha_syn, train_decay, required=False)
        self._setup_threshold(threshold, train_threshold)
        self._setup_bias(bias)
        self._setup_options(reset, surrogate, max_spikes, min_v_mem, detach_reset)
        self.norm_input = bool(norm_input)
        self._setup_stream(persistent_state, record_states, method)
        self._setup_quantizers(qconfig)

    def forward(self, input: Tensor, state: Optional[LIFState] = None) -> Tensor:
        """Spikes for ``input`` ``(N, T, *)``, from ``state`` (a :class:`LIFState`) if given."""
        return self._run_sequence(input, state)


class LIFCell(NeuronModule):
    """One time step of :class:`LIF`, with the state passed in and returned explicitly.

    Arguments as :class:`LIF`, without the options about sequences
    (``persistent_state``, ``record_states``, ``method``). The cell keeps no state.

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
        self._setup_decay("mem", tau_mem, alpha_mem, train_decay, required=True)
        self._setup_decay("syn", tau_syn, alpha_syn, train_decay, required=False)
        self._setup_threshold(threshold, train_threshold)
        self._setup_bias(bias)
        self._setup_options(reset, surrogate, max_spikes, min_v_mem, detach_reset)
        self.norm_input = bool(norm_input)
        self._setup_quantizers(qconfig)

    def forward(self, input: Tensor, state: Optional[LIFState] = None) -> Tuple[Tensor, LIFState]:
        """Spikes and the new state after one step with input ``(N, *)``."""
        params = self.neuron_params()
        return lif_step(
            input,
            state,
            params["alpha_mem"],
            params["alpha_syn"],
            params["threshold"],
            **self._neuron_kwargs(params),
        )


class LIFRecurrent(LIF):
    """:class:`LIF` neurons that also receive their own previous spikes through weights.

    The input of step :math:`t` is :math:`x[t] + W s[t-1]` (before the synaptic
    current), with the recurrent weight :math:`W` (``rec_weight``, quantized by
    ``QConfig.weight``) initialized like ``torch.nn.Linear``. It runs step by step
    under autograd.

    Args:
        num_neurons: number of neurons ``C``; ``rec_weight`` is ``(C, C)``.
        others: as :class:`LIF` (``method`` is always ``"loop"``).

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
        nn.Module.__init__(self)
        self.num_neurons = num_neurons
        self.rec_weight = nn.Parameter(torch.empty(num_neurons, num_neurons))
        # torch.nn.Linear's initialization.
        nn.init.kaiming_uniform_(self.rec_weight, a=math.sqrt(5))
        self._setup_decay("mem", tau_mem, alpha_mem, train_decay, required=True)
        self._setup_decay("syn", tau_syn, alpha_syn, train_decay, required=False)
        self._setup_threshold(threshold, train_threshold)
        self._setup_bias(bias)
        self._setup_options(reset, surrogate, max_spikes, min_v_mem, detach_reset)
        self.norm_input = bool(norm_input)
        self._setup_stream(persistent_state, record_states, "loop")
        self.register_buffer("spikes", None, persistent=False)
        self._setup_quantizers(qconfig)

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
        state, previous = self._start(input, state)
        params = self.neuron_params()
        weight = self.quantized("rec_weight").to(input.dtype)
        kwargs = self._neuron_kwargs(params)
        outputs, v_trace, i_trace = [], [], []
        for x in input.unbind(1):
            recurrent = torch_functional.linear(previous, weight)
            previous, state = lif_step(
                x + recurrent,
                state,
                params["alpha_mem"],
                params["alpha_syn"],
                params["threshold"],
                **kwargs,
            )
            outputs.append(previous)
            if self.record_states:
                v_trace.append(state.v_mem)
                i_trace.append(state.i_syn)
        self.v_mem = state.v_mem.detach()
        self.i_syn = None if state.i_syn is None else state.i_syn.detach()
        self.spikes = previous.detach()
        if self.record_states:
            self.recordings = {"v_mem": torch.stack(v_trace, 1)}
            if self.synaptic:
                self.recordings["i_syn"] = torch.stack(i_trace, 1)
        return torch.stack(outputs, 1)

    def _start(self, input: Tensor, state) -> Tuple[Optional[LIFState], Tensor]:
        """The initial state and the spikes of the step before the first."""
        zeros = input.new_zeros(input[:, 0].shape)
        if state is None:
            state = self._initial_state(input, None)
            stored = state is not None and self.spikes is not None
            return state, self.spikes.to(input.dtype) if stored else zeros
        if isinstance(state, tuple) and len(state) > 2 and state[2] is not None:
            spikes = state[2]
            if tuple(spikes.shape) != tuple(zeros.shape):
                raise ValueError(
                    f"state.spikes has shape {tuple(spikes.shape)}, but this input needs "
                    f"{tuple(zeros.shape)} (batch, neurons)"
                )
            return state, spikes.to(input.dtype)
        return state, zeros

    def extra_repr(self) -> str:
        return f"num_neurons={self.num_neurons}, " + super().extra_repr()
