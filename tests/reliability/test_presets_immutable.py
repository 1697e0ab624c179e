"""Presets and factories are immutable: editing one cannot change later layers."""

import copy
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import aquatic
from aquatic.hw import dynapcnn, loihi, xylo
from aquatic.quantizers import UniformQuantizer

PRESETS = {
    "int8": aquatic.qconfig.int8,
    "int4_weight": aquatic.qconfig.int4_weight,
    "binary_weight": aquatic.qconfig.binary_weight,
    "xylo": xylo.qconfig(),
    "dynapcnn": dynapcnn.qconfig(),
    "loihi": loihi.qconfig(),
}


def factories():
    for preset, qconfig in PRESETS.items():
        for field, factory in zip(qconfig._fields, qconfig):
            if factory is not None:
                yield pytest.param(factory, id=f"{preset}.{field}")


@pytest.mark.parametrize("factory", factories())
def test_kwargs_cannot_be_edited(factory):
    before = dict(factory.kwargs)
    with pytest.raises(TypeError, match="does not support item assignment"):
        factory.kwargs["bits"] = 2
    with pytest.raises(TypeError, match="does not support item deletion"):
        del factory.kwargs[next(iter(before), "bits")]
    with pytest.raises(AttributeError):
        factory.kwargs.update(bits=2)
    with pytest.raises(AttributeError):
        factory.kwargs = {"bits": 2}
    assert dict(factory.kwargs) == before


def test_an_attempted_edit_leaves_later_layers_unaffected():
    int8 = aquatic.qconfig.int8
    with pytest.raises(TypeError):
        int8.weight.kwargs["bits"] = 2
    layer = aquatic.nn.Linear(4, 4, qconfig=int8)
    assert layer.quantizers["weight"].bits == 8
    assert (layer.quantizers["weight"].quant_min, layer.quantizers["weight"].quant_max) == (
        -128,
        127,
    )


def test_the_callers_dict_is_copied():
    kwargs = {"bits": 4}
    factory = UniformQuantizer.with_args(**kwargs)
    from aquatic.factory import Factory

    direct = Factory(UniformQuantizer, kwargs)
    kwargs["bits"] = 2
    assert factory.kwargs["bits"] == 4 and direct.kwargs["bits"] == 4
    assert direct().bits == 4


@given(bits=st.integers(2, 16), signed=st.booleans())
def test_with_args_derives_new_factories_and_leaves_the_preset(bits, signed):
    preset = aquatic.qconfig.int8.weight
    derived = preset.with_args(bits=bits, signed=signed)
    assert derived.kwargs["bits"] == bits and derived.kwargs["signed"] == signed
    assert preset.kwargs["bits"] == 8 and preset.kwargs["signed"] is True
    assert derived().bits == bits and preset().bits == 8
    # Overrides at call time do not stick either.
    assert preset(bits=bits).bits == bits and preset().bits == 8


def test_factories_still_copy_pickle_compare_and_hash():
    factory = aquatic.qconfig.int8.activation
    for clone in (copy.copy(factory), copy.deepcopy(factory), pickle.loads(pickle.dumps(factory))):
        assert clone == factory and hash(clone) == hash(factory)
        assert clone.kwargs == factory.kwargs
    model = aquatic.quantize(
        torch.nn.Sequential(torch.nn.Linear(2, 2)), aquatic.qconfig.int8, quantize_output=True
    )
    assert copy.deepcopy(model)[0].qconfig == aquatic.qconfig.int8
