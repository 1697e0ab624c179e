"""Quantization-aware :class:`torch.nn.RNN`, :class:`torch.nn.LSTM` and :class:`torch.nn.GRU`.

With quantizers, ``forward`` is the explicit step-by-step loop of
:func:`aquatic.functional.recurrent_sequence`, reading the quantized weights: torch's
fused (cuDNN, MKL-DNN) kernels, which read the float weights, never run. Without
quantizers it is torch's own ``forward``, bit for bit.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from aquatic.functional.recurrent import gru_cell, lstm_cell, rnn_cell
from aquatic.functional.recurrent_sequence import recurrent_sequence
from aquatic.nn.recurrent_base import RecurrentTwin
from aquatic.qconfig import QConfig

__all__ = ["RNN", "LSTM", "GRU"]

#: An initial state: ``h_0``, or ``(h_0, c_0)`` for an LSTM.
State = Union[Tensor, Tuple[Tensor, Tensor]]

_DOC = """:class:`torch.nn.{name}` whose weights, biases and internal signals are quantized by
    ``qconfig``.

    It takes the arguments of :class:`torch.nn.{name}` (same names, order and defaults)
    and, keyword only, ``qconfig``. With ``qconfig=None``, or a QConfig whose fields are
    all ``None``, ``forward`` is :class:`torch.nn.{name}`'s own (its fused kernels included),
    bit for bit, and the ``state_dict`` is torch's.

    With quantizers, ``forward`` runs one explicit step at a time
    (:func:`aquatic.functional.recurrent_sequence` with
    :func:`aquatic.functional.recurrent.{cell}`), straight-through gradients:

    - ``QConfig.weight`` quantizes every weight (``weight_ih_l0``, ``weight_hh_l0``,
      ``weight_hr_l0`` ..., one quantizer each), ``QConfig.bias`` every bias;
    - ``QConfig.activation`` quantizes, in each layer and direction, {signals};
      an initial state given to ``forward`` too, so that every step reads values on
      the grid;
    - {state}

    Packed sequences (:func:`torch.nn.utils.rnn.pack_padded_sequence`) are accepted,
    quantized or not. Quantizers are named in ``quantizers`` by parameter name, and by
    signal plus the layer's suffix (``gates_l0``, ``hidden_l1_reverse``): see
    :class:`aquatic.nn.RecurrentTwin`.

    Args:
        qconfig: what to quantize, and how; keyword only.

    Shape:
        As :class:`torch.nn.{name}`.

    Example:
        >>> import torch, aquatic
        >>> layer = aquatic.nn.{name}(3, 4, batch_first=True, qconfig=aquatic.qconfig.int8)
        >>> sorted(layer.quantizers)
        {keys}
        >>> output, _ = layer(torch.randn(2, 5, 3))
        >>> output.shape
        torch.Size([2, 5, 4])
    """


class _QuantRNNBase(RecurrentTwin):
    """The shared forward of RNN, LSTM and GRU."""

    def _step(self):
        raise NotImplementedError

    @classmethod
    def _twin_kwargs(cls, module: nn.RNNBase) -> Dict[str, Any]:
        return dict(
            input_size=module.input_size,
            hidden_size=module.hidden_size,
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[State] = None):
        """As torch's ``forward``: ``(output, h_n)``, or ``(output, (h_n, c_n))`` for an LSTM."""
        if not self._modules["quantizers"]._modules:
            return super().forward(input, hx)
        name = type(self).__name__
        is_lstm = self.mode == "LSTM"
        directions = 2 if self.bidirectional else 1
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            steps = list(data.split(batch_sizes.tolist()))
            batch, batched, sequence, checked = int(batch_sizes[0]), True, data, data
        else:
            if not isinstance(input, Tensor):
                raise TypeError(
                    f"{name}: input must be a Tensor or a PackedSequence, got "
                    f"{type(input).__name__}"
                )
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{name}: expected a 3-D (batched) or 2-D (unbatched) input, got "
                    f"{input.dim()}-D of shape {tuple(input.shape)}"
                )
            batch_sizes = sorted_indices = unsorted_indices = None
            batched = input.dim() == 3
            checked = input if batched else input.unsqueeze(0 if self.batch_first else 1)
            sequence = checked.transpose(0, 1) if self.batch_first else checked
            steps = list(sequence.unbind(0))
            batch = sequence.shape[1]
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        given = hx is not None
        if hx is None:
            zeros = sequence.new_zeros(self.num_layers * directions, batch, out_size)
            hx = (zeros, sequence.new_zeros(zeros.shape[:2] + (self.hidden_size,)))
            hx = hx if is_lstm else zeros
        elif not batched:
            dims = [h.dim() for h in (hx if is_lstm else (hx,))]
            if any(d != 2 for d in dims):
                raise ValueError(
                    f"{name}: for unbatched 2-D input, the initial state must be 2-D too, "
                    f"got {' and '.join(f'{d}-D' for d in dims)}"
                )
            hx = tuple(h.unsqueeze(1) for h in hx) if is_lstm else hx.unsqueeze(1)
        # torch's own checks of the input and state sizes, with torch's messages.
        self.check_forward_args(checked, hx, batch_sizes)
        hx = self.permute_hidden(hx, sorted_indices)
        suffixes = self._suffixes()
        if is_lstm:
            states = [
                (
                    self._initial(hx[0][k], "hidden", s, given),
                    self._initial(hx[1][k], "cell", s, given),
                )
                for k, s in enumerate(suffixes)
            ]
        else:
            states = [self._initial(hx[k], "hidden", s, given) for k, s in enumerate(suffixes)]
        outputs, finals = recurrent_sequence(
            self._step(),
            steps,
            states,
            [self.cell_weights(s) for s in suffixes],
            [self.cell_quantizers(s) for s in suffixes],
            self.num_layers,
            self.bidirectional,
            self.dropout,
            self.training,
        )
        if is_lstm:
            hidden = (
                torch.stack([f[0] for f in finals]),
                torch.stack([f[1] for f in finals]),
            )
        else:
            hidden = torch.stack(finals)
        if batch_sizes is not None:
            output = PackedSequence(
                torch.cat(outputs), batch_sizes, sorted_indices, unsorted_indices
            )
            return output, self.permute_hidden(hidden, unsorted_indices)
        output = torch.stack(outputs, 1 if self.batch_first else 0)
        if not batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden) if is_lstm else hidden.squeeze(1)
        return output, hidden


class RNN(_QuantRNNBase, nn.RNN):
    __doc__ = _DOC.format(
        name="RNN",
        cell="rnn_cell",
        signals="the pre-activations (``gates``) and the hidden state (``hidden``)",
        state="``QConfig.state`` is unused (there is no cell state).",
        keys="['gates_l0', 'hidden_l0', 'weight_hh_l0', 'weight_ih_l0']",
    )
    _float_module = nn.RNN
    _signals = ("gates", "hidden")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            nonlinearity,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
        )
        self._init_recurrent_quantizers(qconfig)

    @classmethod
    def _twin_kwargs(cls, module: nn.RNN) -> Dict[str, Any]:
        return dict(super()._twin_kwargs(module), nonlinearity=module.nonlinearity)

    def _step(self):
        return functools.partial(rnn_cell, nonlinearity=self.nonlinearity)


class LSTM(_QuantRNNBase, nn.LSTM):
    __doc__ = _DOC.format(
        name="LSTM",
        cell="lstm_cell",
        signals="the gate pre-activations (``gates``), the gates after their sigmoid or "
        "tanh (``gate_outputs``) and the hidden state after the projection, if any "
        "(``hidden``)",
        state="``QConfig.state`` quantizes the cell state (``cell``), and a given initial one "
        "(``aquatic.qconfig.int8`` has no ``state``: add one, e.g. "
        "``int8._replace(state=UniformQuantizer.with_args(bits=16))``, to quantize it).",
        keys="['gate_outputs_l0', 'gates_l0', 'hidden_l0', 'weight_hh_l0', " "'weight_ih_l0']",
    )
    _float_module = nn.LSTM
    _signals = ("gates", "gate_outputs", "cell", "hidden")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device=device,
            dtype=dtype,
        )
        self._init_recurrent_quantizers(qconfig)

    @classmethod
    def _twin_kwargs(cls, module: nn.LSTM) -> Dict[str, Any]:
        return dict(super()._twin_kwargs(module), proj_size=module.proj_size)

    def _step(self):
        return lstm_cell


class GRU(_QuantRNNBase, nn.GRU):
    __doc__ = _DOC.format(
        name="GRU",
        cell="gru_cell",
        signals="the gate pre-activations (``gates``), the gates after their sigmoid or "
        "tanh (``gate_outputs``) and the hidden state (``hidden``)",
        state="``QConfig.state`` is unused (the hidden state is the only state).",
        keys="['gate_outputs_l0', 'gates_l0', 'hidden_l0', 'weight_hh_l0', 'weight_ih_l0']",
    )
    _float_module = nn.GRU
    _signals = ("gates", "gate_outputs", "hidden")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
        )
        self._init_recurrent_quantizers(qconfig)

    def _step(self):
        return gru_cell
