"""Saving and loading integer GRU and LSTM layers: in a chain (aquatic.integer.save)
and in a graph (IntegerGraph.save); a loaded layer computes the same codes, and a
corrupt file is refused naming the field."""

import io
import json

import pytest
import torch
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer

INT8 = aquatic.qconfig.int8
WITH_STATE = INT8._replace(state=UniformQuantizer.with_args(bits=12))
PER_ROW = WITH_STATE._replace(weight=UniformQuantizer.with_args(ch_axis=0))


def chain(layer, qconfig):
    torch.manual_seed(1)
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=qconfig),
        layer(6, 10, batch_first=True, qconfig=qconfig),
        aquatic.nn.SelectOutput(0),
        aquatic.nn.LastStep(1),
        aquatic.nn.Linear(10, 3, qconfig=qconfig),
    )
    x = torch.randn(16, 7, 6)
    model(x)  # calibrates every range
    return aquatic.convert(model.eval()), x


def saved(model):
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(
    "layer, qconfig",
    [(aquatic.nn.GRU, INT8), (aquatic.nn.LSTM, WITH_STATE), (aquatic.nn.GRU, PER_ROW)],
)
def test_chains_with_recurrent_layers_save_and_load(layer, qconfig):
    integer, x = chain(layer, qconfig)
    loaded = aquatic.integer.load(saved(integer))
    codes = integer.quantize_input(x)
    assert torch.equal(loaded(codes), integer(codes))
    original, copy = integer.layers[0], loaded.layers[0]
    assert type(copy) is type(original)
    for key, value in original.state_dict().items():  # multipliers, shifts, tables
        assert torch.equal(copy.state_dict()[key], value), key
    header = json.loads(torch.load(saved(integer), weights_only=True)["header"])
    assert header["layers"][0]["kind"] == ("lstm" if layer is aquatic.nn.LSTM else "gru")


def corrupt(integer, edit):
    data = torch.load(saved(integer), weights_only=True)
    header = json.loads(data["header"])
    edit(header["layers"][0]["config"], data["tensors"])
    data["header"] = json.dumps(header)
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    return buffer


def _set(mapping, key, value):
    mapping[key] = value


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c, t: c["grids"]["gates"].reverse(), r"grids.*low <= zero_point <= high"),
        (lambda c, t: c["scales"].pop("cell"), r"scales.*keys"),
        (lambda c, t: _set(c["scales"], "hidden", -0.5), r"scales.*finite numbers > 0"),
        (lambda c, t: _set(c, "bias_ih", c["bias_ih"][:-1]), r"bias_ih.*must hold 40"),
        (lambda c, t: _set(t, "0.sigmoid", t["0.sigmoid"][:-1]), r"'0.sigmoid'.*one code per"),
        (lambda c, t: _set(t, "0.tanh", t["0.tanh"] + 1000), r"'0.tanh'.*outside"),
        (lambda c, t: _set(t, "0.cell_tanh", t["0.cell_tanh"] * 4), r"'0.cell_tanh'.*outside"),
        (lambda c, t: _set(t, "0.weight_hh", t["0.weight_hh"][:, :-1]), r"weight_hh.*\(4 H, H\)"),
        (lambda c, t: _set(t, "0.weight_ih", t["0.weight_ih"].float()), r"weight_ih.*integers"),
        (lambda c, t: t.pop("0.tanh"), r"'0.tanh'.*missing"),
    ],
)
def test_a_corrupt_recurrent_layer_is_refused_naming_the_field(edit, match):
    integer, _ = chain(aquatic.nn.LSTM, WITH_STATE)
    with pytest.raises(ValueError, match=match):
        aquatic.integer.load(corrupt(integer, edit))


def test_a_graph_file_with_a_corrupt_gru_is_refused():
    class Spotter(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(6, 10, batch_first=True)
            self.fc = nn.Linear(10, 3)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.fc(out[:, -1])

    torch.manual_seed(2)
    qmodel = aquatic.quantize(Spotter(), INT8)
    x = torch.randn(8, 5, 6)
    qmodel(x)
    integer = aquatic.convert(qmodel.eval(), example_input=x)
    loaded = aquatic.integer.IntegerGraph.load(saved(integer))
    codes = integer.quantize_input(x)
    assert torch.equal(loaded(codes), integer(codes))
    data = torch.load(saved(integer), weights_only=True)
    data["tensors"]["gru.sigmoid"] = data["tensors"]["gru.sigmoid"][1:]
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    with pytest.raises(ValueError, match="sigmoid.*one code per gates code"):
        aquatic.integer.IntegerGraph.load(buffer)


def test_the_layer_after_a_recurrent_one_is_certified_from_the_hidden_grid():
    integer, _ = chain(aquatic.nn.GRU, INT8)
    data = torch.load(saved(integer), weights_only=True)
    index = [k for k in data["tensors"] if k.endswith(".weight")][-1].split(".")[0]
    data["tensors"][f"{index}.weight"] = data["tensors"][f"{index}.weight"] * 2**24
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    with pytest.raises(ValueError, match="beyond int32"):
        aquatic.integer.load(buffer)


def stacked_chain(layer, qconfig, **options):
    """A chain around a stacked, bidirectional or projected layer; the QAT model too."""
    torch.manual_seed(3)
    recurrent = layer(6, 10, batch_first=True, qconfig=qconfig, **options)
    features = options.get("proj_size") or 10
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=qconfig),
        recurrent,
        aquatic.nn.SelectOutput(0),
        aquatic.nn.LastStep(1),
        aquatic.nn.Linear(features * (2 if recurrent.bidirectional else 1), 3, qconfig=qconfig),
    )
    x = torch.randn(32, 7, 6)
    model(x)  # calibrates every range
    return model.eval(), x


@pytest.mark.parametrize(
    "layer, qconfig, options",
    [
        (aquatic.nn.GRU, INT8, dict(num_layers=2, bidirectional=True)),
        (aquatic.nn.LSTM, WITH_STATE, dict(num_layers=2)),
        (aquatic.nn.LSTM, PER_ROW, dict(bidirectional=True, proj_size=4)),
    ],
)
def test_stacked_and_bidirectional_layers_convert_in_chains_and_save(layer, qconfig, options):
    model, x = stacked_chain(layer, qconfig, **options)
    integer = aquatic.convert(model)
    stack = integer.layers[0]
    assert isinstance(stack, aquatic.integer.IntegerRecurrentStack)
    directions = 2 if options.get("bidirectional") else 1
    assert len(stack.layers) == options.get("num_layers", 1) * directions
    codes = integer.quantize_input(x)
    out = integer.dequantize_output(integer(codes))
    with torch.no_grad():
        expected = model(x)
    step = float(integer.output_spec.scale)
    assert ((out - expected).abs() <= step + 1e-6).float().mean() >= 0.99
    assert (out.argmax(1) == expected.argmax(1)).float().mean() >= 0.99
    loaded = aquatic.integer.load(saved(integer))
    assert torch.equal(loaded(codes), integer(codes))
    header = json.loads(torch.load(saved(integer), weights_only=True)["header"])
    assert header["layers"][0]["kind"] == "recurrent_stack"


def _edit_layer(position, key, value):
    def edit(config, tensors):
        config["layers"][position]["config"][key] = value

    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c, t: t.pop("0.1.weight_hh"), r"'0.1.weight_hh'.*missing"),
        (
            lambda c, t: _set(t, "0.0.weight_hr", t["0.0.weight_hr"][:-1]),
            r"weight_hr.*\(H_out, H\)",
        ),
        (_edit_layer(1, "reverse", False), r"layer 1 runs in the wrong direction"),
        (lambda c, t: _set(c["layers"][0], "kind", "linear"), r"must be 'rnn', 'gru' or 'lstm'"),
        (lambda c, t: _set(t, "0.5.tanh", t["0.0.tanh"]), r"'0.5.tanh'.*names no layer"),
    ],
)
def test_a_corrupt_recurrent_stack_is_refused_naming_the_field(edit, match):
    model, _ = stacked_chain(aquatic.nn.LSTM, WITH_STATE, bidirectional=True, proj_size=4)
    with pytest.raises(ValueError, match=match):
        aquatic.integer.load(corrupt(aquatic.convert(model), edit))


def test_a_chain_reads_an_lstm_cell_state_on_its_own_grid():
    torch.manual_seed(4)
    lstm = aquatic.nn.LSTM(6, 10, bidirectional=True, qconfig=WITH_STATE)
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=WITH_STATE),
        lstm,
        aquatic.nn.SelectOutput(1),  # (h_n, c_n)
        aquatic.nn.SelectOutput(0),  # h_n: both directions on the one hidden grid
    )
    x = torch.randn(7, 16, 6)
    model(x)
    integer = aquatic.convert(model.eval())
    hidden = lstm.quantizers["hidden_l0"].grid().scale
    assert float(integer.output_spec.scale) == pytest.approx(float(hidden))
    h_n = integer.dequantize_output(integer(integer.quantize_input(x)))
    with torch.no_grad():
        expected = model(x)
    assert h_n.shape == (2, 16, 10)
    assert ((h_n - expected).abs() <= float(hidden) + 1e-6).float().mean() >= 0.99
    model[3] = aquatic.nn.SelectOutput(1)  # c_n: each direction's cell grid
    with pytest.raises(ValueError, match="own grid"):
        aquatic.convert(model.eval())
    one = aquatic.nn.LSTM(6, 10, qconfig=WITH_STATE)
    model[1] = one
    model(x)
    integer = aquatic.convert(model.eval())
    cell = one.quantizers["cell_l0"].grid().scale
    assert float(integer.output_spec.scale) == pytest.approx(float(cell))
