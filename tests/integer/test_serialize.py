"""Saving and loading integer models: plain tensors and a JSON header."""

import io
import json

import pytest
import torch
from torch import nn

import aquatic
import aquatic.nn as qnn
from aquatic.integer import IntegerModel, load, save
from aquatic.quantizers import BitShiftDecay, UniformQuantizer

POW2 = UniformQuantizer.with_args(bits=8, power_of_two=True)
ACT = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False, power_of_two=True)


def calibrate(model, x):
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def conventional():
    torch.manual_seed(0)
    q = aquatic.QConfig(weight=POW2, activation=ACT)
    qc = aquatic.QConfig(weight=UniformQuantizer.with_args(ch_axis=0), activation=ACT)
    model = nn.Sequential(
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=ACT)),
        qnn.Conv2d(2, 4, 3, padding=1, qconfig=qc),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AvgPool2d(2),
        nn.Flatten(),
        qnn.Linear(4, 3, bias=False, qconfig=q),
    )
    x = torch.rand(8, 2, 4, 4)
    return calibrate(model, x), x


def spiking():
    torch.manual_seed(1)
    q = aquatic.QConfig(
        weight=POW2,
        threshold=UniformQuantizer.with_args(bits=16, scale=2**-6),
        alpha=BitShiftDecay,
        tau=BitShiftDecay.with_args(param="tau"),
        state=UniformQuantizer.with_args(bits=16, scale=2**-6),
    )
    model = nn.Sequential(
        qnn.Linear(10, 6, bias=False, qconfig=q),
        qnn.LIFRecurrent(6, tau_mem=4.0, tau_syn=2.0, max_spikes=2, qconfig=q),
        qnn.Linear(6, 3, bias=False, qconfig=q),
        qnn.LIF(tau_mem=5.0, qconfig=q),
    )
    x = (torch.rand(4, 8, 10) < 0.5).float()
    return calibrate(model, x), x


@pytest.mark.parametrize("build", [conventional, spiking])
def test_save_and_load_give_the_same_integer_model(build, tmp_path):
    model, x = build()
    integer_model = aquatic.convert(model)
    path = tmp_path / "model.pt"
    integer_model.save(path)
    loaded = IntegerModel.load(path)
    codes = integer_model.quantize_input(x)
    assert torch.equal(loaded.quantize_input(x), codes)
    assert torch.equal(loaded(codes), integer_model(codes))
    assert torch.equal(
        loaded.dequantize_output(loaded(codes)),
        integer_model.dequantize_output(integer_model(codes)),
    )
    assert loaded.notes == integer_model.notes
    assert [type(m) for m in loaded.layers] == [type(m) for m in integer_model.layers]


def test_the_file_holds_only_tensors_and_a_json_header():
    model, _ = spiking()
    buffer = io.BytesIO()
    save(aquatic.convert(model), buffer)
    buffer.seek(0)
    data = torch.load(buffer, weights_only=True)  # no pickled code needed
    assert set(data) == {"header", "tensors"}
    header = json.loads(data["header"])
    assert header["format"] == "aquatic.integer" and header["version"] == 1
    assert [layer["kind"] for layer in header["layers"]] == ["linear", "neuron", "linear", "neuron"]
    assert all(isinstance(t, torch.Tensor) for t in data["tensors"].values())
    integer_tensors = [t for t in data["tensors"].values() if not t.is_floating_point()]
    assert len(integer_tensors) == len(data["tensors"])  # every parameter is an integer
    assert header["input"]["scale"] == 1.0  # spike counts


def test_loading_rejects_other_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not an aquatic integer model"):
        load(path)
    torch.save({"header": json.dumps({"format": "x"}), "tensors": {}}, path)
    with pytest.raises(ValueError, match="format"):
        load(path)
    header = {"format": "aquatic.integer", "version": 99, "layers": []}
    torch.save({"header": json.dumps(header), "tensors": {}}, path)
    with pytest.raises(ValueError, match="newer"):
        load(path)
    with pytest.raises(TypeError, match="IntegerModel"):
        save(nn.Linear(2, 2), tmp_path / "x.pt")
