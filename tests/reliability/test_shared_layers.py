"""A layer object used twice in a model (shared, tied weights): convert and NIR export
handle each use; fold_batch_norm and the chip exports refuse, naming the layer."""

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer

POW2 = UniformQuantizer.with_args(bits=8, power_of_two=True)
QCONFIG = aquatic.QConfig(weight=POW2, activation=POW2)


def calibrated(model, x):
    model.train()
    for _ in range(2):
        model(x)
    return model.eval()


@settings(max_examples=15, deadline=None)
@given(uses=st.integers(2, 4), seed=st.integers(0, 1000), nested=st.booleans())
def test_convert_runs_every_use_of_a_shared_layer(uses, seed, nested):
    torch.manual_seed(seed)
    layer = aquatic.nn.Linear(4, 4, bias=False, qconfig=QCONFIG)
    if nested:  # one shared block holding the layer
        model = nn.Sequential(*[nn.Sequential(layer, nn.ReLU())] * uses)
    else:
        model = nn.Sequential(*[m for _ in range(uses) for m in (layer, nn.ReLU())])
    x = torch.randint(-8, 8, (16, 4)) / 8.0
    calibrated(model, x)
    integer = aquatic.convert(model, input_scale=1 / 8)
    linears = [m for m in integer.layers if type(m).__name__ == "IntegerLinear"]
    assert len(linears) == uses
    out = integer.dequantize_output(integer(integer.quantize_input(x)))
    assert torch.equal(out, model(x))


def test_convert_names_each_use():
    layer = aquatic.nn.Linear(3, 3, bias=False, qconfig=QCONFIG)
    model = calibrated(nn.Sequential(layer, layer), torch.randint(-8, 8, (8, 3)) / 8.0)
    names = [m.name for m in aquatic.convert(model, input_scale=1 / 8).layers]
    assert names == ["0", "0.activation", "1", "1.activation"]


def test_nir_export_writes_a_node_per_use_and_loads_back():
    nir = pytest.importorskip("nir")
    from aquatic.interop import nir as anir

    torch.manual_seed(0)
    layer = aquatic.nn.Linear(3, 3)
    neuron = aquatic.nn.LIF(tau_mem=8.0)
    model = nn.Sequential(layer, neuron, layer, neuron)
    graph = anir.export(model)
    assert {"0", "1", "2", "3"} <= set(graph.nodes)
    assert isinstance(graph.nodes["2"], nir.Affine)
    assert ("1", "2") in graph.edges and ("3", "output") in graph.edges
    x = torch.rand(2, 12, 3) * 3
    assert torch.equal(anir.load(graph)(x), model(x))


@pytest.mark.parametrize("shared", ["conv", "bn", "both"])
def test_fold_batch_norm_refuses_a_shared_layer_or_batch_norm(shared):
    conv, bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
    other_conv = conv if shared in ("conv", "both") else nn.Conv2d(2, 2, 1)
    other_bn = bn if shared in ("bn", "both") else nn.BatchNorm2d(2)
    model = nn.Sequential(conv, bn, nn.ReLU(), other_conv, other_bn).eval()
    with pytest.raises(ValueError, match="used 2 times.*Use two separate layers"):
        aquatic.fold_batch_norm(model)
    with pytest.raises(ValueError, match=r"'0' \(Conv2d\)|'1' \(BatchNorm2d\)"):
        aquatic.fold_batch_norm(model, pairs=[("0", "1")])


def test_fold_batch_norm_refusal_changes_nothing():
    conv = nn.Conv2d(2, 2, 1)
    model = nn.Sequential(conv, nn.BatchNorm2d(2), conv, nn.BatchNorm2d(2)).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError):
        aquatic.fold_batch_norm(model, inplace=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model[1], nn.BatchNorm2d)


def test_fold_batch_norm_with_separate_copies_is_exact():
    conv = nn.Conv2d(2, 2, 1)
    model = nn.Sequential(conv, nn.BatchNorm2d(2), copy.deepcopy(conv), nn.BatchNorm2d(2))
    model.train()
    model(torch.randn(8, 2, 3, 3))  # running statistics that differ per batch norm
    model.eval()
    x = torch.randn(4, 2, 3, 3)
    assert torch.allclose(aquatic.fold_batch_norm(model)(x), model(x), atol=1e-5)


@pytest.mark.parametrize(
    "chip, target",
    [("xylo", "Xylo export"), ("dynapcnn", "DYNAP-CNN export"), ("loihi", "Loihi export")],
)
def test_chip_exports_refuse_a_shared_layer(chip, target):
    layer = aquatic.nn.Linear(3, 3)
    model = nn.Sequential(layer, aquatic.nn.LIF(tau_mem=4.0), layer, aquatic.nn.LIF(tau_mem=4.0))
    function = getattr(aquatic.hw, chip).export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            ValueError, match=rf"layer '0' \(Linear\) is used again as '2': {target}"
        ):
            function(model)
