r"""Integrate-and-fire neurons: :class:`~aquatic.nn.LIF` without membrane leak.

.. math::

    i[t] &= Q_i\big(\alpha_{syn} \odot (i[t-1] + x[t])\big) \quad\text{(with }
        \tau_{syn}\text{; otherwise } i[t] = x[t]) \\
    v[t] &= Q_v\big(v[t-1] + i[t] + b\big), \qquad s[t] = H(v[t] - \vartheta)
        \text{ (or the capped count } \lfloor v[t]/\vartheta \rfloor) \\
    v[t] &\leftarrow \max(v[t] - \vartheta\, s[t],\ v_{min})
        \text{ (subtract) or } \max(v[t]\,(1 - H(v[t] - \vartheta)),\ v_{min}) \text{ (zero)}

with the state quantizers :math:`Q` of ``QConfig.state`` applied before the spike
decision, and :math:`\odot` the synaptic decay (a chip's integer rule on a quantized
state, see :mod:`aquatic.nn.lif`). ``IAF(...)`` computes exactly what
``LIF(alpha_mem=1.0, ...)`` does, with no membrane decay to quantize or train. It runs
the fused sequence function unless ``QConfig.state`` quantizes the state (see
:mod:`aquatic.nn.lif`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from aquatic.functional.neurons import LIFState, neuron_sequence
from aquatic.functional.surrogate import Surrogate
from aquatic.nn.neuron_base import NeuronModule
from aquatic.nn.neuron_options import Bias, Value, document_neuron_args
from aquatic.qconfig import QConfig

__all__ = ["IAF"]


@document_neuron_args(
    tau_syn="synaptic time constant in time steps, or ``None`` (no synaptic state).",
    alpha_syn="synaptic decay per step, instead of ``tau_syn``.",
    train_decay="make ``tau_syn`` (or ``alpha_syn``) trainable.",
    qconfig="quantizers for ``tau``/``alpha`` (synaptic), ``threshold``, ``bias`` and "
    "``state``.",
)
class IAF(NeuronModule):
    """Integrate-and-fire neurons (no membrane leak), optionally with a synaptic current.

    Args:
        %(neuron_args)s

    Shape:
        - Input: ``(N, T, *)``.
        - Output: spikes, ``(N, T, *)``.

    Example:
        >>> iaf = IAF(threshold=1.0)
        >>> iaf(torch.full((1, 5, 1), 0.4)).flatten()
        tensor([0., 0., 1., 0., 1.])
        >>> iaf.v_mem
        tensor([[0.]])
    """

    _leaky = False

    def __init__(
        self,
        threshold: Value = 1.0,
        reset: str = "subtract",
        *,
        tau_syn: Optional[Value] = None,
        alpha_syn: Optional[Value] = None,
        surrogate: Optional[Surrogate] = None,
        max_spikes: int = 1,
        min_v_mem: Optional[float] = None,
        bias: Bias = None,
        train_decay: bool = False,
        train_threshold: bool = False,
        detach_reset: bool = False,
        persistent_state: bool = False,
        record_states: bool = False,
        method: str = "auto",
        checkpoint: Optional[int] = None,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__()
        self._setup_neuron(
            threshold=threshold,
            reset=reset,
            tau_syn=tau_syn,
            alpha_syn=alpha_syn,
            surrogate=surrogate,
            max_spikes=max_spikes,
            min_v_mem=min_v_mem,
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
        """Spikes for ``input`` ``(N, T, *)``, from ``state`` if given."""
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
