"""aquatic.functional.recurrent steps and recurrent_sequence against torch's kernels."""

import pytest
import torch
from torch import nn

from aquatic.functional import (
    CellQuantizers,
    CellWeights,
    gru_cell,
    lstm_cell,
    recurrent_sequence,
    rnn_cell,
)


def weights_of(module, suffix=""):
    names = CellWeights._fields
    return CellWeights(*(getattr(module, n + suffix, None) for n in names))


@pytest.mark.parametrize(
    "torch_cell, step",
    [(nn.RNNCell, rnn_cell), (nn.LSTMCell, lstm_cell), (nn.GRUCell, gru_cell)],
)
def test_steps_without_quantizers_follow_torch(torch_cell, step):
    torch.manual_seed(0)
    cell = torch_cell(4, 5)
    x, h = torch.randn(3, 4), torch.randn(3, 5)
    state = (h, torch.randn(3, 5)) if torch_cell is nn.LSTMCell else h
    expected = cell(x, state)
    got = step(x, state, weights_of(cell))
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected))


def test_quantizers_are_called_where_documented():
    torch.manual_seed(0)
    cell = nn.LSTMCell(2, 3)
    calls = []

    def spy(name):
        return lambda x: calls.append((name, tuple(x.shape))) or x

    quantizers = CellQuantizers(*(spy(n) for n in CellQuantizers._fields))
    zeros = torch.zeros(1, 3)
    lstm_cell(torch.randn(1, 2), (zeros, zeros), weights_of(cell), quantizers)
    assert calls == [
        ("gates", (1, 12)),
        ("gate_outputs", (1, 12)),
        ("cell", (1, 3)),
        ("hidden", (1, 3)),
    ]
    calls.clear()
    gru = nn.GRUCell(2, 3)
    gru_cell(torch.randn(1, 2), zeros, weights_of(gru), quantizers)
    assert [c[0] for c in calls] == ["gates", "gate_outputs", "gates", "gate_outputs", "hidden"]


def test_sequence_follows_torch_two_layers_bidirectional():
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    expected, h_n = gru(x)
    suffixes = ["_l0", "_l0_reverse", "_l1", "_l1_reverse"]
    outputs, finals = recurrent_sequence(
        gru_cell,
        list(x),
        [torch.zeros(2, 4)] * 4,
        [weights_of(gru, s) for s in suffixes],
        [CellQuantizers()] * 4,
        num_layers=2,
        bidirectional=True,
    )
    assert torch.allclose(torch.stack(outputs), expected, atol=1e-6)
    assert torch.allclose(torch.stack(finals), h_n, atol=1e-6)


def test_bad_arguments_are_value_errors():
    w = CellWeights(torch.ones(1, 1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        rnn_cell(torch.ones(1, 1), torch.zeros(1, 1), w, nonlinearity="gelu")
    with pytest.raises(ValueError, match="states has 1 entries, but 2 layer"):
        recurrent_sequence(
            rnn_cell,
            [torch.ones(1, 1)],
            [torch.zeros(1, 1)],
            [w] * 2,
            [CellQuantizers()] * 2,
            num_layers=2,
        )
    with pytest.raises(ValueError, match="no time steps"):
        recurrent_sequence(rnn_cell, [], [torch.zeros(1, 1)], [w], [CellQuantizers()])
