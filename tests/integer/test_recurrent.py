"""The integer RNN, GRU and LSTM against the quantization-aware layers they were built from."""

import functools
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.integer import FixedSum, QSpec, build_gru, build_lstm
from aquatic.quantizers import UniformQuantizer
from aquatic.integer.build import build_accumulator

INT8 = aquatic.qconfig.int8
WITH_STATE = INT8._replace(state=UniformQuantizer.with_args(bits=12))


class KeywordSpotter(nn.Module):
    """Quantized input, a GRU over feature frames, a linear classifier on the last state."""

    def __init__(self, layer=aquatic.nn.GRU, qconfig=INT8):
        super().__init__()
        self.quant = aquatic.nn.ActivationQuantizer(qconfig=qconfig)
        self.gru = layer(8, 16, batch_first=True, qconfig=qconfig)
        self.head = aquatic.nn.Linear(16, 3, qconfig=qconfig)

    def forward(self, x):
        _, h = self.gru(self.quant(x))
        return self.head((h[0] if isinstance(h, tuple) else h)[-1])


def keywords(generator, count, classes=3, steps=12, features=8):
    """Synthetic 'keywords': each class is a fixed sequence of frames, plus noise."""
    templates = torch.randn(classes, steps, features, generator=torch.Generator().manual_seed(7))
    labels = torch.randint(0, classes, (count,), generator=generator)
    noise = 0.8 * torch.randn(count, steps, features, generator=generator)
    return templates[labels] + noise, labels


def input_spec(model):
    grid = model.quant.quantizers["activation"].grid()
    return QSpec(grid.scale, grid.zero_point, None, grid.quant_min, grid.quant_max)


def train(layer, qconfig):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = KeywordSpotter(layer, qconfig)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = keywords(generator, 96)
    for _ in range(30):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), generator


@pytest.fixture(scope="module")
def trained():
    return train(aquatic.nn.GRU, INT8)


def test_integer_gru_agrees_with_the_quantization_aware_model(trained):
    model, generator = trained
    x, y = keywords(generator, 300)  # held out
    with torch.no_grad():
        logits = model(x)
        _, h_qat = model.gru(model.quant(x))
    gru, hidden = build_gru("gru", model.gru, input_spec(model))
    codes = model.quant.quantizers["activation"].to_int(x).to(torch.int64)
    output, h_n = gru(codes)
    assert output.shape == (300, 12, 16) and h_n.shape == (1, 300, 16)
    assert torch.equal(output[:, -1], h_n[0])
    expected = model.gru.quantizers["hidden_l0"].to_int(h_qat[0]).to(torch.int64)
    assert (h_n[0] == expected).float().mean() >= 0.99
    head, _ = build_accumulator("head", model.head, hidden)
    out = h_n[0]
    for module in head:
        out = module(out)
    agreement = (out.argmax(1) == logits.argmax(1)).float().mean().item()
    assert agreement >= 0.99
    assert (logits.argmax(1) == y).float().mean() > 0.8  # and it learned something


def test_integer_lstm_agrees_with_the_quantization_aware_model():
    model, generator = train(aquatic.nn.LSTM, WITH_STATE)
    x, y = keywords(generator, 300)  # held out
    with torch.no_grad():
        logits = model(x)
        _, (h_qat, c_qat) = model.gru(model.quant(x))
    lstm, hidden = build_lstm("lstm", model.gru, input_spec(model))
    codes = model.quant.quantizers["activation"].to_int(x).to(torch.int64)
    output, (h_n, c_n) = lstm(codes)
    assert output.shape == (300, 12, 16) and c_n.shape == (1, 300, 16)
    expected = model.gru.quantizers["hidden_l0"].to_int(h_qat[0]).to(torch.int64)
    assert (h_n[0] == expected).float().mean() >= 0.99
    cells = model.gru.quantizers["cell_l0"].to_int(c_qat[0]).to(torch.int64)
    assert (c_n[0] == cells).float().mean() >= 0.99
    head, _ = build_accumulator("head", model.head, hidden)
    out = h_n[0]
    for module in head:
        out = module(out)
    assert (out.argmax(1) == logits.argmax(1)).float().mean() >= 0.99
    assert (logits.argmax(1) == y).float().mean() > 0.8
    with pytest.raises(ValueError, match="QConfig.state for the cell state"):
        build_lstm("lstm", aquatic.nn.LSTM(8, 4, qconfig=INT8), input_spec(model))


def test_sigmoid_and_tanh_tables_cover_the_gates_grid(trained):
    model, _ = trained
    gru, _ = build_gru("gru", model.gru, input_spec(model))
    zero, low, high = gru.grids["gates"]
    assert gru.sigmoid.shape == gru.tanh.shape == (high - low + 1,)
    assert bool((gru.sigmoid[1:] >= gru.sigmoid[:-1]).all())  # monotone, as sigmoid
    zo = gru.grids["gate_outputs"][0]
    assert gru.tanh[zero - low] == zo  # tanh(0) = 0


def test_fixed_sum_is_the_rounded_real_sum():
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-1000, 1000, (50,), generator=generator)
    b = torch.randint(-1000, 1000, (50,), generator=generator)
    fs = FixedSum([torch.tensor(0.013), torch.tensor(-0.0021)], [1000, 1000], 0.05)
    expected = torch.round((a * 0.013 - b * 0.0021) / 0.05).to(torch.int64)
    assert torch.equal(fs([a, b]), expected)
    with pytest.raises(ValueError, match="too large for int64"):
        FixedSum([torch.tensor(1.0)], [2**62], 2.0**-10)


def test_build_gru_names_what_is_missing():
    spec = QSpec(torch.tensor(0.1), torch.tensor(0), None, -128, 127)
    with pytest.raises(TypeError, match="aquatic.nn.GRU"):
        build_gru("x", aquatic.nn.LSTM(2, 2, qconfig=INT8), spec)
    weights_only = aquatic.nn.GRU(2, 2, qconfig=aquatic.qconfig.int4_weight)
    with pytest.raises(ValueError, match="no quantizer gates_l0, gate_outputs_l0, hidden_l0"):
        build_gru("x", weights_only, spec)
    per_channel = QSpec(torch.ones(2), torch.zeros(2), -1, -128, 127)
    with pytest.raises(ValueError, match="one scale and a range"):
        build_gru("x", aquatic.nn.GRU(2, 2, qconfig=INT8), per_channel)


def test_the_reverse_direction_reads_the_sequence_backwards(trained):
    model, generator = trained
    x, _ = keywords(generator, 20)
    gru, _ = build_gru("gru", model.gru, input_spec(model))
    backwards = aquatic.integer.IntegerGRU(**dict(gru.config(), reverse=True), **gru.tensors())
    codes = model.quant.quantizers["activation"].to_int(x).to(torch.int64)
    output, h_n = backwards(codes)
    flipped, h_flipped = gru(codes.flip(1))
    assert torch.equal(output, flipped.flip(1)) and torch.equal(h_n, h_flipped)
    assert torch.equal(h_n[0], output[:, 0])


def test_a_given_state_is_requantized_onto_the_hidden_grid(trained):
    model, generator = trained
    x, _ = keywords(generator, 20)
    codes = model.quant.quantizers["activation"].to_int(x).to(torch.int64)
    hidden = model.gru.quantizers["hidden_l0"].grid()
    # Given codes on a grid twice as fine: the layer halves them onto its own.
    fine = QSpec(hidden.scale / 2, 0, None, -512, 512)
    gru, _ = build_gru("gru", model.gru, input_spec(model), state=fine)
    plain, _ = build_gru("gru", model.gru, input_spec(model))
    low, high = hidden.quant_min, hidden.quant_max
    h0 = torch.randint(low, high + 1, (20, 16), generator=torch.Generator().manual_seed(1))
    zero = int(hidden.zero_point)
    assert torch.equal(gru(codes, 2 * (h0 - zero))[0], plain(codes, h0)[0])
    assert not torch.equal(gru(codes, 2 * (h0 - zero))[0], gru(codes)[0])
    with pytest.raises(ValueError, match=r"initial hidden state has shape \(3, 16\)"):
        plain(codes, h0[:3])


def test_a_projected_lstm_agrees_with_the_quantization_aware_layer():
    torch.manual_seed(2)
    lstm = aquatic.nn.LSTM(8, 12, batch_first=True, proj_size=5, qconfig=WITH_STATE)
    quant = aquatic.nn.ActivationQuantizer(qconfig=INT8)
    x, _ = keywords(torch.Generator().manual_seed(3), 64)
    lstm(quant(x))  # calibrates every range
    lstm.eval(), quant.eval()
    with torch.no_grad():
        output, (h, c) = lstm(quant(x))
    grid = quant.quantizers["activation"].grid()
    spec = QSpec(grid.scale, grid.zero_point, None, grid.quant_min, grid.quant_max)
    module, out_spec = build_lstm("lstm", lstm, spec)
    assert module.weight_hr.shape == (5, 12)
    codes_out, (h_n, c_n) = module(quant.quantizers["activation"].to_int(x).to(torch.int64))
    expected = lstm.quantizers["hidden_l0"].to_int(output).to(torch.int64)
    assert codes_out.shape == (64, 12, 5) and c_n.shape == (1, 64, 12)
    assert (codes_out == expected).float().mean() >= 0.99
    assert ((codes_out - expected).abs() <= 1).all()
    cells = lstm.quantizers["cell_l0"].to_int(c).to(torch.int64)
    assert (c_n == cells).float().mean() >= 0.99


def test_a_stack_refuses_directions_on_different_grids():
    torch.manual_seed(0)
    layer = aquatic.nn.GRU(4, 5, bidirectional=True, qconfig=INT8)
    layer(torch.randn(3, 2, 4))
    spec = QSpec(torch.tensor(0.05), torch.tensor(0), None, -128, 127)
    stack, _ = build_gru("gru", layer, spec)
    forward, backward = stack.layers
    scales = dict(backward.scales, hidden=backward.scales["hidden"] * 2)
    other = aquatic.integer.IntegerGRU(
        **dict(backward.config(), scales=scales), **backward.tensors()
    )
    with pytest.raises(ValueError, match="different grids; share the hidden quantizer"):
        aquatic.integer.IntegerRecurrentStack([forward, other], 1, True)
    with pytest.raises(ValueError, match="need 2 integer layers, got 1"):
        aquatic.integer.IntegerRecurrentStack([forward], 1, True)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_integer_rnn_agrees_with_the_quantization_aware_model(nonlinearity):
    layer = functools.partial(aquatic.nn.RNN, nonlinearity=nonlinearity)
    model, generator = train(layer, INT8)
    x, _ = keywords(generator, 300)  # held out
    with torch.no_grad():
        logits = model(x)
        _, h_qat = model.gru(model.quant(x))
    rnn, hidden = aquatic.integer.build_rnn("rnn", model.gru, input_spec(model))
    assert isinstance(rnn, aquatic.integer.IntegerRNN)
    output, h_n = rnn(model.quant.quantizers["activation"].to_int(x).to(torch.int64))
    expected = model.gru.quantizers["hidden_l0"].to_int(h_qat[0]).to(torch.int64)
    assert (h_n[0] == expected).float().mean() >= 0.99
    head, _ = build_accumulator("head", model.head, hidden)
    out = h_n[0]
    for module in head:
        out = module(out)
    assert (out.argmax(1) == logits.argmax(1)).float().mean() >= 0.99
    if nonlinearity == "relu":
        assert int(h_n.min()) >= int(model.gru.quantizers["hidden_l0"].grid().zero_point)


def test_a_stacked_bidirectional_rnn_converts_in_a_chain_and_saves():
    torch.manual_seed(5)
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=INT8),
        aquatic.nn.RNN(6, 8, num_layers=2, bidirectional=True, qconfig=INT8),
        aquatic.nn.SelectOutput(0),
        aquatic.nn.LastStep(0),
        aquatic.nn.Linear(16, 3, qconfig=INT8),
    )
    x = torch.randn(9, 32, 6)
    model(x)
    model.eval()
    integer = aquatic.convert(model)
    assert [type(m).__name__ for m in integer.layers[0].layers] == ["IntegerRNN"] * 4
    codes = integer.quantize_input(x)
    out = integer.dequantize_output(integer(codes))
    with torch.no_grad():
        expected = model(x)
    step = float(integer.output_spec.scale)
    assert ((out - expected).abs() <= step + 1e-6).float().mean() >= 0.99
    assert torch.equal(aquatic.integer.load(_saved(integer))(codes), integer(codes))


def _saved(integer):
    buffer = io.BytesIO()
    integer.save(buffer)
    buffer.seek(0)
    return buffer
