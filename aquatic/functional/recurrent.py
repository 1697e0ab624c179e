"""One time step of the recurrent cells (Elman RNN, LSTM, GRU), with quantizable signals.

Each step takes the cell's weights (:class:`CellWeights`) and the quantizers of its
internal signals (:class:`CellQuantizers`, callables or ``None``), and returns the new
state. With every quantizer ``None`` the steps compute the equations of the PyTorch
documentation of :class:`torch.nn.RNNCell`, :class:`torch.nn.LSTMCell` and
:class:`torch.nn.GRUCell` (equal to torch's kernels up to float rounding order).

The signals, per step:

- ``gates``: the gate pre-activations, :math:`W_{i\\cdot} x + b_{i\\cdot} + W_{h\\cdot} h +
  b_{h\\cdot}`, all gates of a step in one call (a GRU makes a second call for its
  candidate gate, whose pre-activation depends on the reset gate's output);
- ``gate_outputs``: the gates after their sigmoid or tanh, all in one call (LSTM, GRU;
  a GRU makes a second call for the candidate gate). All lie in :math:`[-1, 1]`, which
  is why one grid can serve them, as TensorFlow Lite's int16 gate outputs do;
- ``cell``: the LSTM cell state :math:`c'`, which the next step reads;
- ``hidden``: the hidden state :math:`h'` (after the projection, for an LSTM with one),
  which is the cell's output and the next step's input.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CellWeights", "CellQuantizers", "rnn_cell", "lstm_cell", "gru_cell"]

#: A quantizer as the steps use it: a tensor in, the fake-quantized tensor out.
Quantize = Callable[[Tensor], Tensor]


class CellWeights(NamedTuple):
    """The parameters of one cell (one layer and direction), named as torch names them.

    ``weight_ih`` is :math:`(G \\cdot H, H_{in})` and ``weight_hh`` :math:`(G \\cdot H, H_{out})`
    with the gates stacked in torch's order (LSTM ``i, f, g, o``; GRU ``r, z, n``);
    ``weight_hr`` is an LSTM's projection :math:`(H_{out}, H)`, or ``None``.
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Optional[Tensor] = None
    bias_hh: Optional[Tensor] = None
    weight_hr: Optional[Tensor] = None


class CellQuantizers(NamedTuple):
    """The quantizers of a cell's internal signals (see the module docstring); ``None``
    leaves a signal in float."""

    gates: Optional[Quantize] = None
    gate_outputs: Optional[Quantize] = None
    cell: Optional[Quantize] = None
    hidden: Optional[Quantize] = None


def _apply(quantize: Optional[Quantize], value: Tensor) -> Tensor:
    return value if quantize is None else quantize(value)


def _affine(input: Tensor, hx: Tensor, weights: CellWeights) -> Tuple[Tensor, Tensor]:
    """The input's and the hidden state's contributions to the gate pre-activations."""
    return (
        F.linear(input, weights.weight_ih, weights.bias_ih),
        F.linear(hx, weights.weight_hh, weights.bias_hh),
    )


def rnn_cell(
    input: Tensor,
    hx: Tensor,
    weights: CellWeights,
    quantizers: CellQuantizers = CellQuantizers(),
    nonlinearity: str = "tanh",
) -> Tensor:
    """One step of the Elman RNN (PyTorch documentation of :class:`torch.nn.RNNCell`):

    .. math:: h' = \\sigma(\\hat{a}), \\quad a = W_{ih} x + b_{ih} + W_{hh} h + b_{hh}

    with :math:`\\sigma` = tanh or ReLU, the hat marking the ``gates`` quantizer, and
    :math:`h'` passed through the ``hidden`` quantizer.

    Args:
        input: :math:`(N, H_{in})`.
        hx: :math:`(N, H)`.
        weights: the cell's parameters.
        quantizers: the signals' quantizers (``gate_outputs`` and ``cell`` unused).
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        :math:`h'`, :math:`(N, H)`.

    Example:
        >>> w = CellWeights(torch.ones(2, 1), torch.zeros(2, 2))
        >>> rnn_cell(torch.tensor([[0.5]]), torch.zeros(1, 2), w, nonlinearity="relu")
        tensor([[0.5000, 0.5000]])
    """
    from_input, from_hidden = _affine(input, hx, weights)
    pre = _apply(quantizers.gates, from_input + from_hidden)
    if nonlinearity == "tanh":
        out = torch.tanh(pre)
    elif nonlinearity == "relu":
        out = torch.relu(pre)
    else:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return _apply(quantizers.hidden, out)


def lstm_cell(
    input: Tensor,
    state: Tuple[Tensor, Tensor],
    weights: CellWeights,
    quantizers: CellQuantizers = CellQuantizers(),
) -> Tuple[Tensor, Tensor]:
    """One step of the LSTM (Hochreiter & Schmidhuber, 1997, with the forget gate of Gers
    et al., 2000, as in the PyTorch documentation of :class:`torch.nn.LSTM`):

    .. math::
        (i, f, g, o) &= (\\mathrm{sig}, \\mathrm{sig}, \\tanh, \\mathrm{sig})
            (\\widehat{W_{ih} x + b_{ih} + W_{hh} h + b_{hh}}) \\\\
        c' &= \\widehat{f \\odot c + i \\odot g} \\\\
        h' &= \\widehat{W_{hr} (o \\odot \\tanh(c'))}

    where the gates :math:`(i, f, g, o)` pass through ``gate_outputs``, :math:`c'` through
    ``cell``, :math:`h'` through ``hidden``, and :math:`W_{hr}` (the projection) is the
    identity when ``weights.weight_hr`` is ``None``.

    Args:
        input: :math:`(N, H_{in})`.
        state: :math:`(h, c)`, :math:`(N, H_{out})` and :math:`(N, H)`.
        weights: the cell's parameters.
        quantizers: the signals' quantizers.

    Returns:
        :math:`(h', c')`.

    Example:
        >>> w = CellWeights(torch.zeros(4, 1), torch.zeros(4, 1))
        >>> lstm_cell(torch.ones(1, 1), (torch.zeros(1, 1), torch.ones(1, 1)), w)
        (tensor([[0.2311]]), tensor([[0.5000]]))
    """
    hx, cx = state
    from_input, from_hidden = _affine(input, hx, weights)
    pre = _apply(quantizers.gates, from_input + from_hidden)
    i, f, g, o = pre.chunk(4, -1)
    gates = torch.cat((torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)), -1)
    i, f, g, o = _apply(quantizers.gate_outputs, gates).chunk(4, -1)
    cy = _apply(quantizers.cell, f * cx + i * g)
    hy = o * torch.tanh(cy)
    if weights.weight_hr is not None:
        hy = F.linear(hy, weights.weight_hr)
    return _apply(quantizers.hidden, hy), cy


def gru_cell(
    input: Tensor,
    hx: Tensor,
    weights: CellWeights,
    quantizers: CellQuantizers = CellQuantizers(),
) -> Tensor:
    """One step of the GRU (Cho et al., 2014, as in the PyTorch documentation of
    :class:`torch.nn.GRU`, which applies the reset gate after the hidden matmul):

    .. math::
        (r, z) &= \\mathrm{sig}(\\widehat{W_{i\\{r,z\\}} x + b_{i\\{r,z\\}}
            + W_{h\\{r,z\\}} h + b_{h\\{r,z\\}}}) \\\\
        n &= \\tanh(\\widehat{W_{in} x + b_{in} + r \\odot (W_{hn} h + b_{hn})}) \\\\
        h' &= \\widehat{(1 - z) \\odot n + z \\odot h}

    where :math:`(r, z)` and :math:`n` pass through ``gate_outputs`` (two calls) and
    :math:`h'` through ``hidden``; ``cell`` is unused.

    Args:
        input: :math:`(N, H_{in})`.
        hx: :math:`(N, H)`.
        weights: the cell's parameters.
        quantizers: the signals' quantizers.

    Returns:
        :math:`h'`, :math:`(N, H)`.

    Example:
        >>> w = CellWeights(torch.zeros(3, 1), torch.zeros(3, 1))
        >>> gru_cell(torch.ones(1, 1), torch.ones(1, 1), w)  # z = 1/2, n = 0
        tensor([[0.5000]])
    """
    from_input, from_hidden = _affine(input, hx, weights)
    size = hx.shape[-1]
    pre_rz = _apply(quantizers.gates, from_input[..., : 2 * size] + from_hidden[..., : 2 * size])
    r, z = _apply(quantizers.gate_outputs, torch.sigmoid(pre_rz)).chunk(2, -1)
    pre_n = _apply(quantizers.gates, from_input[..., 2 * size :] + r * from_hidden[..., 2 * size :])
    n = _apply(quantizers.gate_outputs, torch.tanh(pre_n))
    return _apply(quantizers.hidden, (1 - z) * n + z * hx)
