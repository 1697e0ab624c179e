"""Renamed and moved names: the old spelling warns and names the new one; each name
means one thing."""

import pytest
import torch
from torch import nn

import aquatic
from aquatic.functional import neuron_types
from aquatic.integer import layer_to_int
from aquatic.quantizers import UniformQuantizer


def test_state_quantizer_alias_warns_and_is_state_transform():
    with pytest.warns(DeprecationWarning, match="use StateTransform"):
        alias = neuron_types.StateQuantizer
    assert alias is neuron_types.StateTransform


def test_unknown_attribute_of_neuron_types_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        neuron_types.Nope


def test_one_tau_min_for_layers_and_decay_quantizers():
    from aquatic.nn import neuron_base
    from aquatic.quantizers import decay_base

    assert neuron_base.TAU_MIN is decay_base.TAU_MIN is neuron_types.TAU_MIN


def test_to_float_unbaked_shares_parameters_and_hooks():
    qconfig = aquatic.QConfig(weight=UniformQuantizer.with_args(scale=0.5))
    layer = aquatic.nn.Linear(3, 2, qconfig=qconfig)
    calls = []
    layer.register_forward_hook(lambda *args: calls.append(1))
    plain = layer.to_float(baked=False)
    assert type(plain) is nn.Linear
    assert plain.weight is layer.weight and plain.bias is layer.bias
    plain(torch.randn(1, 3))
    assert calls == [1]
    baked = layer.to_float()
    assert baked.weight is not layer.weight
    assert torch.equal(baked.weight, layer.quantize_params()["weight"])
    assert not torch.equal(baked.weight, layer.weight)


def test_layer_to_int_is_the_layer_method_and_refuses_torch_layers():
    qconfig = aquatic.QConfig(weight=UniformQuantizer.with_args(scale=0.25))
    layer = aquatic.nn.Linear(2, 2, bias=False, qconfig=qconfig)
    assert torch.equal(layer_to_int(layer)["weight"]["codes"], layer.to_int()["weight"]["codes"])
    with pytest.raises(TypeError, match="aquatic.quantize"):
        layer_to_int(nn.Linear(2, 2))
