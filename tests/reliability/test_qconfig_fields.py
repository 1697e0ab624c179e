"""QConfig fields must build aquatic quantizers: refused when the QConfig is built where
that can be decided (classes, factories of classes), else when a layer calls them."""

import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import aquatic
from aquatic import QConfig
from aquatic.factory import Factory
from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver
from aquatic.quantizers import BinaryQuantizer, LSQQuantizer, Quantizer, UniformQuantizer

FIELDS = QConfig._fields


class NotAQuantizer(nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(
    "value, message",
    [
        (MinMaxObserver, r"got the observer MinMaxObserver, but a field needs a quantizer"),
        (
            MovingAverageMinMaxObserver.with_args(averaging_constant=0.1),
            r"got the observer MovingAverageMinMaxObserver.with_args\(averaging_constant=0.1\)",
        ),
        (nn.ReLU, r"got ReLU, which does not build an aquatic quantizer"),
        (NotAQuantizer, r"not a subclass of aquatic.quantizers.Quantizer"),
        (Factory(NotAQuantizer, {}), r"got NotAQuantizer.with_args\(\)"),
        (functools.partial(nn.Hardtanh, -1.0), r"which does not build an aquatic quantizer"),
        (int, r"builtins.int is not a subclass"),
    ],
)
def test_classes_that_are_not_quantizers_are_refused_when_built(field, value, message):
    with pytest.raises(TypeError, match=message) as info:
        QConfig(**{field: value})
    # The message names the field and shows how to write it.
    assert f"QConfig.{field}" in str(info.value)
    assert f"{field}=UniformQuantizer.with_args(" in str(info.value)


def test_observer_message_says_where_an_observer_goes():
    with pytest.raises(TypeError, match=r"activation=UniformQuantizer.with_args\(observer="):
        QConfig(activation=MinMaxObserver)


def test_replace_checks_too():
    with pytest.raises(TypeError, match="QConfig.weight got ReLU"):
        aquatic.qconfig.int8._replace(weight=nn.ReLU)


@pytest.mark.parametrize("value", [UniformQuantizer(), BinaryQuantizer(), nn.ReLU()])
def test_instances_stay_refused(value):
    with pytest.raises(TypeError, match="instance, but each layer needs a quantizer of its own"):
        QConfig(weight=value)


@pytest.mark.parametrize("result", [nn.ReLU(), MinMaxObserver(), None, 3, torch.zeros(1)], ids=type)
def test_callables_are_checked_when_the_layer_is_built(result):
    qconfig = QConfig(weight=lambda: result)  # undecidable until called: accepted here
    with pytest.raises(TypeError, match=r"QConfig.weight is <function .*, which built a") as info:
        aquatic.nn.Linear(2, 2, qconfig=qconfig)
    assert type(result).__name__ in str(info.value)
    assert "make it return a new quantizer" in str(info.value)


def test_callables_that_return_quantizers_work_and_keep_their_identity():
    def make():
        return UniformQuantizer(bits=4)

    qconfig = QConfig(weight=make, activation=lambda: LSQQuantizer(bits=8))
    layer = aquatic.nn.Linear(3, 2, qconfig=qconfig)
    assert isinstance(layer.quantizers["weight"], UniformQuantizer)
    assert layer.quantizers["weight"].bits == 4
    assert isinstance(layer.quantizers["activation"], LSQQuantizer)
    # The field still compares and prints as the function given.
    assert qconfig.weight == make and qconfig.weight.__wrapped__ is make
    assert repr(qconfig.weight) == repr(make)
    assert qconfig == QConfig(weight=make, activation=qconfig.activation)
    # Rebuilding keeps one check (no wrapper inside a wrapper).
    assert qconfig._replace(bias=None).weight.__wrapped__ is make


@given(
    field=st.sampled_from(FIELDS),
    bits=st.integers(2, 8),
    kind=st.sampled_from(["class", "factory", "partial"]),
)
def test_every_way_of_naming_a_quantizer_is_accepted(field, bits, kind):
    value = {
        "class": UniformQuantizer,
        "factory": UniformQuantizer.with_args(bits=bits),
        "partial": functools.partial(UniformQuantizer, bits=bits),
    }[kind]
    qconfig = QConfig(**{field: value})
    built = getattr(qconfig, field)()
    assert isinstance(built, Quantizer)
    assert getattr(qconfig, field) is value  # classes and factories are kept as given


@given(field=st.sampled_from(FIELDS), name=st.sampled_from(["ReLU", "Identity", "Tanh"]))
def test_every_field_refuses_every_torch_module_class(field, name):
    with pytest.raises(TypeError, match=f"QConfig.{field} got {name}"):
        QConfig(**{field: getattr(nn, name)})
