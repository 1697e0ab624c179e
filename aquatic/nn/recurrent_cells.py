"""Quantization-aware :class:`torch.nn.RNNCell`, :class:`torch.nn.LSTMCell` and
:class:`torch.nn.GRUCell`: one step of :mod:`aquatic.functional.recurrent`."""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import Tensor, nn

from aquatic.functional.recurrent import gru_cell, lstm_cell, rnn_cell
from aquatic.nn.recurrent_base import RecurrentTwin
from aquatic.qconfig import QConfig

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]

_DOC = """:class:`torch.nn.{name}` whose weights, biases and internal signals are quantized by
    ``qconfig``.

    It takes the arguments of :class:`torch.nn.{name}` (same names, order and defaults)
    and, keyword only, ``qconfig``. With ``qconfig=None``, or a QConfig whose fields are
    all ``None``, ``forward`` is torch's own, bit for bit. With quantizers it is
    :func:`aquatic.functional.recurrent.{cell}`: ``QConfig.weight`` quantizes
    ``weight_ih`` and ``weight_hh``, ``QConfig.bias`` ``bias_ih`` and ``bias_hh``,
    ``QConfig.activation`` {signals} (and the given hidden state, so that the step reads
    values on the grid){state} Straight-through gradients.

    Args:
        qconfig: what to quantize, and how; keyword only.

    Shape:
        As :class:`torch.nn.{name}`.

    Example:
        >>> import torch, aquatic
        >>> cell = aquatic.nn.{name}(3, 4, qconfig=aquatic.qconfig.int8)
        >>> sorted(cell.quantizers)
        {keys}
        >>> state = None
        >>> for x in torch.randn(5, 2, 3):
        ...     state = cell(x, state)
    """


class _QuantCellBase(RecurrentTwin):
    """The shared forward of the cells."""

    @classmethod
    def _twin_kwargs(cls, module: nn.RNNCellBase) -> Dict[str, Any]:
        return dict(
            input_size=module.input_size,
            hidden_size=module.hidden_size,
            bias=module.bias,
        )

    def _prepare(self, input: Tensor, hx: Any, count: int):
        """``(input, states, batched)``: 2-D input and ``count`` 2-D states on their grids."""
        name = type(self).__name__
        if not isinstance(input, Tensor) or input.dim() not in (1, 2):
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"{name}: expected a 2-D (batched) or 1-D input, got {shape}")
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: input has {input.shape[-1]} features, but input_size is "
                f"{self.input_size}"
            )
        batched = input.dim() == 2
        input = input if batched else input.unsqueeze(0)
        if hx is None:
            states = [input.new_zeros(input.shape[0], self.hidden_size)] * count
        else:
            states = list(hx) if count > 1 else [hx]
            expected = tuple(input.shape[:1]) + (self.hidden_size,)
            for k, state in enumerate(states):
                state = state if batched else state.unsqueeze(0)
                if tuple(state.shape) != expected:
                    raise ValueError(
                        f"{name}: the state{f'[{k}]' if count > 1 else ''} has shape "
                        f"{tuple(state.shape)}, expected {expected} (batch, hidden_size)"
                    )
                states[k] = state
        signals = ("hidden", "cell")[:count]
        states = [
            self._initial(s, signal, "", hx is not None) for s, signal in zip(states, signals)
        ]
        return input, states, batched


class RNNCell(_QuantCellBase, nn.RNNCell):
    __doc__ = _DOC.format(
        name="RNNCell",
        cell="rnn_cell",
        signals="the pre-activation (``gates``) and the new hidden state (``hidden``)",
        state=".",
        keys="['gates', 'hidden', 'weight_hh', 'weight_ih']",
    )
    _float_module = nn.RNNCell
    _signals = ("gates", "hidden")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, nonlinearity, device=device, dtype=dtype)
        self._init_recurrent_quantizers(qconfig)

    @classmethod
    def _twin_kwargs(cls, module: nn.RNNCell) -> Dict[str, Any]:
        return dict(super()._twin_kwargs(module), nonlinearity=module.nonlinearity)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not self._modules["quantizers"]._modules:
            return super().forward(input, hx)
        input, (state,), batched = self._prepare(input, hx, 1)
        out = rnn_cell(input, state, self.cell_weights(), self.cell_quantizers(), self.nonlinearity)
        return out if batched else out.squeeze(0)


class LSTMCell(_QuantCellBase, nn.LSTMCell):
    __doc__ = _DOC.format(
        name="LSTMCell",
        cell="lstm_cell",
        signals="the gate pre-activations (``gates``), the gates after their sigmoid or tanh "
        "(``gate_outputs``) and the new hidden state (``hidden``)",
        state="; ``QConfig.state`` the cell state (``cell``), the given one too "
        "(``aquatic.qconfig.int8`` has no ``state``).",
        keys="['gate_outputs', 'gates', 'hidden', 'weight_hh', 'weight_ih']",
    )
    _float_module = nn.LSTMCell
    _signals = ("gates", "gate_outputs", "cell", "hidden")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self._init_recurrent_quantizers(qconfig)

    def forward(self, input: Tensor, hx: Optional[tuple] = None) -> tuple:
        if not self._modules["quantizers"]._modules:
            return super().forward(input, hx)
        input, state, batched = self._prepare(input, hx, 2)
        h, c = lstm_cell(input, tuple(state), self.cell_weights(), self.cell_quantizers())
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_QuantCellBase, nn.GRUCell):
    __doc__ = _DOC.format(
        name="GRUCell",
        cell="gru_cell",
        signals="the gate pre-activations (``gates``), the gates after their sigmoid or tanh "
        "(``gate_outputs``) and the new hidden state (``hidden``)",
        state=".",
        keys="['gate_outputs', 'gates', 'hidden', 'weight_hh', 'weight_ih']",
    )
    _float_module = nn.GRUCell
    _signals = ("gates", "gate_outputs", "hidden")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self._init_recurrent_quantizers(qconfig)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not self._modules["quantizers"]._modules:
            return super().forward(input, hx)
        input, (state,), batched = self._prepare(input, hx, 1)
        out = gru_cell(input, state, self.cell_weights(), self.cell_quantizers())
        return out if batched else out.squeeze(0)
