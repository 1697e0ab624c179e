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

from typing import Dict, Optional

import torch
from torch import Tensor

from aquatic.functional.neurons import LIFState
from aquatic.functional.surrogate import Surrogate
from aquatic.nn.lif import Bias
from aquatic.nn.neuron_base import NeuronModule, Value
from aquatic.qconfig import QConfig

__all__ = ["IAF"]


class IAF(NeuronModule):
    """Integrate-and-fire neurons (no membrane leak), optionally with a synaptic current.

    Args:
        threshold: firing threshold (> 0), a number or one per neuron.
        reset: ``"subtract"`` or ``"zero"``.
        tau_syn: synaptic time constant in time steps, or ``None`` (no synaptic state).
        alpha_syn: synaptic decay per step, instead of ``tau_syn``.
        surrogate, max_spikes, min_v_mem, bias: as :class:`~aquatic.nn.LIF`.
        train_threshold, detach_reset: as :class:`~aquatic.nn.LIF`.
        persistent_state, record_states, method: as :class:`~aquatic.nn.LIF`.
        train_decay: make ``tau_syn`` (or ``alpha_syn``) trainable.
        qconfig: quantizers for ``tau``/``alpha`` (synaptic), ``threshold``, ``bias``
            and ``state``.

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
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__()
        self._setup_decay("mem", None, None, False, required=False)
        self._setup_decay("syn", tau_syn, alpha_syn, train_decay, required=False)
        self._setup_threshold(threshold, train_threshold)
        self._setup_bias(bias)
        self._setup_options(reset, surrogate, max_spikes, min_v_mem, detach_reset)
        self._setup_stream(persistent_state, record_states, method)
        self._setup_quantizers(qconfig)

    def neuron_params(self) -> Dict[str, Optional[Tensor]]:
        params = super().neuron_params()
        params["alpha_mem"] = 1.0
        return params

    def forward(self, input: Tensor, state: Optional[LIFState] = None) -> Tensor:
        """Spikes for ``input`` ``(N, T, *)``, from ``state`` if given."""
        return self._run_sequence(input, state)
