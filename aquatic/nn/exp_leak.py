r"""A leaky integrator without spikes, e.g. as a readout layer.

.. math::

    v[t] = \max\Big(Q_v\big(\alpha \odot v[t-1]
        + \big((1 - \alpha)\big)^{[\texttt{norm\_input}]}\, x[t] + b\big),
        \ v_{min}\Big), \qquad \alpha = e^{-1/\tau}

The output is the membrane trace :math:`v`, passed through ``QConfig.activation`` if
given. :math:`Q_v` is the ``QConfig.state`` quantizer (the identity without one) and
:math:`\odot` the decay, a chip's integer rule on the quantized state when the decay's
quantizer has one (see :mod:`aquatic.nn.lif`). It runs the fused sequence function
unless ``QConfig.state`` quantizes the membrane.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from aquatic.functional.neurons import LIFState, neuron_sequence
from aquatic.nn.neuron_base import NeuronModule
from aquatic.nn.neuron_options import Bias, Value, document_neuron_args
from aquatic.qconfig import QConfig

__all__ = ["ExpLeak"]


@document_neuron_args(
    tau_mem="time constant in time steps (> 0), a number or one per neuron.",
    alpha_mem="decay per step in ``[0, 1]``, instead of ``tau_mem``.",
    norm_input=r"scale the input by :math:`1 - \alpha` (unit gain for constant input).",
    bias="constant input per step (``True`` for a trainable scalar from 0, or its "
    "initial value).",
    min_v_mem="lower bound of the membrane.",
    train_decay="make ``tau_mem`` (or ``alpha_mem``) trainable.",
    qconfig="quantizers for ``tau``/``alpha``, ``bias``, ``state`` (the membrane after "
    "each step) and ``activation`` (the returned membrane).",
)
class ExpLeak(NeuronModule):
    """Leaky integrator: returns the membrane potential of every step.

    Args:
        %(neuron_args)s

    Shape:
        - Input: ``(N, T, *)``.
        - Output: membrane, ``(N, T, *)``.

    Example:
        >>> leak = ExpLeak(alpha_mem=0.5)
        >>> leak(torch.tensor([[[1.0], [0.0], [1.0]]])).flatten()
        tensor([1.0000, 0.5000, 1.2500])
    """

    _spiking = False
    _quantizes_output = True

    def __init__(
        self,
        tau_mem: Optional[Value] = None,
        *,
        alpha_mem: Optional[Value] = None,
        norm_input: bool = False,
        bias: Bias = None,
        min_v_mem: Optional[float] = None,
        train_decay: bool = False,
        persistent_state: bool = False,
        method: str = "auto",
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__()
        self._setup_neuron(
            tau_mem=tau_mem,
            alpha_mem=alpha_mem,
            norm_input=norm_input,
            bias=bias,
            min_v_mem=min_v_mem,
            train_decay=train_decay,
            persistent_state=persistent_state,
            method=method,
            qconfig=qconfig,
        )

    def forward(self, input: Tensor, state: Optional[LIFState] = None) -> Tensor:
        """The membrane for ``input`` ``(N, T, *)``, from ``state`` if given."""
        result = neuron_sequence(
            input, self.spec(), state=self._initial_state(input, state), method=self.method
        )
        self._store(result)
        return self.quantize_output(result.output)

    def extra_repr(self) -> str:
        parts = [self._params_repr()]
        if self.norm_input:
            parts.append("norm_input=True")
        if self.min_v_mem is not None:
            parts.append(f"min_v_mem={self.min_v_mem:g}")
        return ", ".join(parts) + self._quant_repr()
