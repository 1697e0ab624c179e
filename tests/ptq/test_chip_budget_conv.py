"""Sensitivity and DYNAP-CNN budgets on spiking convolutional networks on (N, T, C, H, W)."""

import pytest
import torch
from torch import nn

import aquatic
from aquatic import nn as ann
from aquatic.hw import DoesNotFitError, dynapcnn
from aquatic.interop.nir import NIRModule

SHAPE = (2, 8, 8)  # (C, H, W) of one step


def _spikes(batch=4, steps=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, *SHAPE, generator=gen) < 0.3).float()


def _layers(conv=ann.Conv2d, pool=ann.SumPool2d, flatten=2, channels=4):
    """Conv -> IAF -> pool -> Conv -> IAF -> Flatten -> Linear -> IAF, one scale per core."""
    torch.manual_seed(0)
    q = [dynapcnn.qconfig() for _ in range(3)]
    return [
        conv(2, channels, 3, padding=1),
        ann.IAF(threshold=0.5, min_v_mem=-1.0, qconfig=q[0]),
        pool(2),
        conv(channels, 4, 3, padding=1),
        ann.IAF(threshold=0.5, min_v_mem=-1.0, qconfig=q[1]),
        nn.Flatten(start_dim=flatten),
        nn.Linear(4 * 4 * 4, 3),
        ann.IAF(threshold=0.5, qconfig=q[2]),
    ]


def _conv_snn(**options):
    return nn.Sequential(*_layers(**options))


def _per_step_snn():
    """torch.nn.Conv2d layers, run per step by a NIR graph."""
    layers = _layers(conv=nn.Conv2d, flatten=1)
    names = [str(i) for i in range(len(layers))]
    edges = list(zip(["input"] + names, names + ["output"]))
    return NIRModule(list(zip(names, layers)), edges)


def _make_fragile(layer):
    """One weight far above the rest: at 4 bits on one scale per tensor (as DYNAP-CNN
    quantizes a core) every other weight rounds to zero."""
    with torch.no_grad():
        layer.weight[0, 0, 1, 1] = 20 * layer.weight.abs().max()


def test_sensitivity_analyses_every_layer_of_a_conv_snn_and_leaves_it_float():
    model, data = _conv_snn(), [_spikes()]
    expected = model(data[0])
    table = aquatic.sensitivity(model, (2, 8), data, progress=False)
    change = table.as_dict()
    assert sorted(change) == ["0", "3", "6"]
    assert all(change[name][8] < change[name][2] for name in change)
    assert model[0].qconfig is None and type(model[6]) is nn.Linear
    assert torch.equal(model(data[0]), expected)


@pytest.mark.parametrize("fragile", ["0", "3"])
def test_a_fragile_conv_layer_ranks_first(fragile):
    model, data = _conv_snn(), [_spikes(batch=8)]
    _make_fragile(model.get_submodule(fragile))
    budget = dynapcnn.budget(input_shape=SHAPE)
    mapping = aquatic.mixed_precision(model, data, budget=budget, candidates=(4, 8), progress=False)
    at_four = {name: options[4] for name, options in mapping.table.as_dict().items()}
    assert sorted(at_four) == ["0", "3", "6"]
    assert max(at_four, key=at_four.get) == fragile
    assert mapping.bits[fragile] == 8


def _codes(weight):
    return int(torch.as_tensor(weight).abs().max())


@pytest.mark.parametrize("candidates", [(2, 4, 8), (2, 3)])
@pytest.mark.parametrize("make", [_conv_snn, _per_step_snn], ids=["sequential", "per-step"])
def test_answer_exports_and_weight_codes_fit_the_chosen_widths(make, candidates):
    model, data = make(), [_spikes()]
    budget = dynapcnn.budget(input_shape=SHAPE)
    mapping = aquatic.mixed_precision(
        model, data, budget=budget, candidates=candidates, progress=False
    )
    names = sorted(mapping.bits)
    assert len(names) == 3 and set(mapping.bits.values()) <= set(candidates)
    quantized = aquatic.calibrate(mapping.quantize(model), data, progress=False)
    spec = dynapcnn.export(quantized, input_shape=SHAPE)  # the chip's checks pass
    prefix = "" if isinstance(model, nn.Sequential) else "layers."  # NIR: names of nodes
    assert sorted(prefix + layer["name"] for layer in spec["layers"]) == names
    for layer in spec["layers"]:
        assert _codes(layer["weight"]) <= 2 ** (mapping.bits[prefix + layer["name"]] - 1)
    if candidates == (2, 3):  # some layer holds fewer than 8 bits: the codes show it
        assert max(_codes(layer["weight"]) for layer in spec["layers"]) <= 4
    x = data[0]
    assert torch.equal(dynapcnn.simulate(spec, x.long()), quantized(x).long())


def test_what_cannot_fit_is_named_before_the_analysis():
    with pytest.raises(DoesNotFitError, match="'2'.*MaxPool2d"):
        aquatic.mixed_precision(
            _conv_snn(pool=ann.MaxPool2d), [_spikes()], budget=dynapcnn, progress=False
        )
    large = dynapcnn.budget(input_shape=(2, 128, 128))  # 8 x 128 x 128 neurons: beyond 64K
    with pytest.raises(DoesNotFitError, match="layer '0' needs 131072 neuron memory"):
        aquatic.mixed_precision(_conv_snn(channels=8), [_spikes()], budget=large, progress=False)


def test_a_torch_conv_given_a_time_axis_names_the_time_aware_layer():
    model = _conv_snn(conv=nn.Conv2d)
    with pytest.raises(ValueError, match=r"layer '0' \(torch.nn.Conv2d\).*aquatic.nn.Conv2d"):
        aquatic.sensitivity(model, 4, [_spikes()], progress=False)


def test_a_byte_budget_quantizes_the_time_aware_convolutions():
    model, data = _conv_snn(), [_spikes()]
    sizes = {"0": 2 * 4 * 9, "3": 4 * 4 * 9, "6": 64 * 3}
    limit = sum(sizes.values()) // 2  # 4 bits per weight on average
    mapping = aquatic.mixed_precision(model, data, budget=limit, progress=False)
    assert sorted(mapping.bits) == ["0", "3", "6"]
    assert mapping.cost == sum(-(-sizes[n] * b // 8) for n, b in mapping.bits.items()) <= limit
    quantized = mapping.quantize(model)
    for name in ("0", "3"):
        weight = quantized.get_submodule(name).quantizers["weight"]
        assert weight.bits == mapping.bits[name]
    assert quantized(data[0]).shape == (4, 5, 3)
    assert model[0].qconfig is None  # the float model is unchanged
