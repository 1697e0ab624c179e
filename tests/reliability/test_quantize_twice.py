"""aquatic.quantize of an already-quantized model: the same QConfig changes nothing; a
different one re-quantizes (float weights kept) with a warning naming the layers."""

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import aquatic
from aquatic import QConfig
from aquatic.quantizers import UniformQuantizer

QCONFIGS = {
    "int8": aquatic.qconfig.int8,
    "int4_weight": aquatic.qconfig.int4_weight,
    "binary_weight": aquatic.qconfig.binary_weight,
    "w3": QConfig(weight=UniformQuantizer.with_args(bits=3)),
    "w3_copy": QConfig(weight=UniformQuantizer.with_args(bits=3)),  # equal to w3
}


def float_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))


@given(first=st.sampled_from(sorted(QCONFIGS)), second=st.sampled_from(sorted(QCONFIGS)))
def test_quantize_twice_equals_quantize_once_with_the_second(first, second):
    model = float_model()
    once = aquatic.quantize(model, QCONFIGS[first], quantize_output=True)
    x = torch.randn(2, 1, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        twice = aquatic.quantize(once, QCONFIGS[second], quantize_output=True)
    messages = [str(w.message) for w in caught]
    if QCONFIGS[first] == QCONFIGS[second]:
        assert messages == []
    else:
        assert len(messages) == 1 and "re-quantized with the new QConfig" in messages[0]
        assert ": 0, 3 (float weights kept" in messages[0]
    direct = aquatic.quantize(model, QCONFIGS[second], quantize_output=True)
    for index in (0, 3):
        assert twice[index].qconfig == QCONFIGS[second]
        assert torch.equal(twice[index].weight, model[index].weight)  # float, not baked in
        assert set(twice[index].quantizers) == set(direct[index].quantizers)
    assert torch.equal(twice(x), direct(x))


def test_same_qconfig_again_changes_nothing_in_place():
    model = aquatic.quantize(float_model(), aquatic.qconfig.int8, quantize_output=True)
    x = torch.randn(2, 1, 4, 4)
    model(x)  # observe ranges
    layers = list(model)
    quantizers = [
        dict(layer.quantizers) if hasattr(layer, "quantizers") else None for layer in model
    ]
    before = model.eval()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = aquatic.quantize(model, aquatic.qconfig.int8, inplace=True, quantize_output=True)
    assert same is model and list(same) == layers
    for layer, old in zip(same, quantizers):
        if old is not None:
            assert dict(layer.quantizers) == old  # the very same quantizer objects
    assert torch.equal(same(x), before)


def test_requantize_keeps_parameters_hooks_mode_and_sharing():
    shared = aquatic.nn.Linear(3, 3, qconfig=aquatic.qconfig.int4_weight)
    shared.weight.requires_grad_(False)
    calls = []
    shared.register_forward_hook(lambda module, args, output: calls.append(1))
    model = nn.Sequential(shared, nn.ReLU(), shared).eval()
    with pytest.warns(UserWarning, match=r"another one: 0 \("):
        qmodel = aquatic.quantize(model, aquatic.qconfig.int8, inplace=True, quantize_output=True)
    assert qmodel[0] is qmodel[2] and qmodel[0] is not shared
    assert qmodel[0].weight is shared.weight and qmodel[0].bias is shared.bias
    assert not qmodel[0].weight.requires_grad and not qmodel[0].training
    assert set(qmodel[0].quantizers) == {"weight", "activation"}
    qmodel(torch.randn(1, 3))
    assert len(calls) == 2


def test_mapping_to_none_keeps_a_layer_and_float_layers_are_converted_silently():
    model = nn.Sequential(
        aquatic.nn.Linear(2, 2, qconfig=aquatic.qconfig.int4_weight),
        aquatic.nn.Linear(2, 2),  # an aquatic layer that quantizes nothing
    )
    old = model[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qmodel = aquatic.quantize(
            model, {nn.Module: aquatic.qconfig.int8, "0": None}, quantize_output=True
        )
        kept = aquatic.quantize(model, {"1": aquatic.qconfig.int8}, quantize_output=True)
    assert qmodel[0].qconfig == aquatic.qconfig.int4_weight
    assert qmodel[1].qconfig == aquatic.qconfig.int8
    assert kept[0].qconfig == aquatic.qconfig.int4_weight
    assert model[0] is old and model[1].qconfig is None  # not in place


def test_layers_that_cannot_be_rebuilt_warn_that_they_keep_their_quantizers():
    class MyLinear(aquatic.nn.Linear):
        pass

    parametrized = aquatic.nn.Linear(2, 2, qconfig=aquatic.qconfig.int4_weight)
    aquatic.quantize_parameter(parametrized, "bias", UniformQuantizer)
    model = nn.Sequential(MyLinear(2, 2, qconfig=aquatic.qconfig.int4_weight), parametrized)
    with pytest.warns(UserWarning, match=r"kept their quantizers .*: 0, 1; a subclass"):
        qmodel = aquatic.quantize(model, aquatic.qconfig.int8, quantize_output=True)
    assert type(qmodel[0]) is MyLinear
    assert qmodel[0].qconfig == aquatic.qconfig.int4_weight
    assert parametrize.is_parametrized(qmodel[1], "bias")
