import pytest
import torch

import aquatic
from aquatic import QConfig
from aquatic.quantizers import BinaryQuantizer, UniformQuantizer


def test_fields_order_and_defaults():
    assert QConfig._fields == ("activation", "weight", "bias", "tau", "alpha", "threshold", "state")
    empty = QConfig()
    assert all(field is None for field in empty) and empty.is_empty()
    assert isinstance(empty, tuple)


def test_factories_build_independent_quantizers():
    qconfig = QConfig(weight=UniformQuantizer.with_args(bits=4), bias=UniformQuantizer)
    a, b = qconfig.weight(), qconfig.weight()
    assert a is not b and a.bits == 4
    assert isinstance(qconfig.bias(), UniformQuantizer)
    assert not qconfig.is_empty()


def test_instance_rejected_with_the_right_spelling():
    with pytest.raises(TypeError, match=r"threshold=UniformQuantizer\.with_args"):
        QConfig(threshold=UniformQuantizer())
    with pytest.raises(TypeError, match="must be a quantizer class"):
        QConfig(weight=8)


def test_replace_validates():
    qconfig = QConfig()
    assert qconfig._replace(weight=UniformQuantizer).weight is UniformQuantizer
    with pytest.raises(TypeError, match="instance"):
        qconfig._replace(weight=UniformQuantizer())


def test_with_args_rejects_unknown_names_and_chains():
    with pytest.raises(TypeError, match="UniformQuantizer.with_args"):
        UniformQuantizer.with_args(bitz=3)
    factory = UniformQuantizer.with_args(bits=3).with_args(signed=False)
    q = factory()
    assert (q.quant_min, q.quant_max) == (0, 7)
    assert factory == UniformQuantizer.with_args(bits=3, signed=False)


def test_presets():
    int8 = aquatic.qconfig.int8
    w, act = int8.weight(), int8.activation()
    assert (w.quant_min, w.quant_max, w.symmetric) == (-128, 127, True)
    assert (act.quant_min, act.quant_max, act.symmetric) == (0, 255, False)
    w4 = aquatic.qconfig.int4_weight.weight()
    assert (w4.quant_min, w4.quant_max, w4.ch_axis) == (-7, 7, 0)
    assert aquatic.qconfig.int4_weight.activation is None
    assert isinstance(aquatic.qconfig.binary_weight.weight(), BinaryQuantizer)
