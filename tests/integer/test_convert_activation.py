"""Integer twins of bounded activations: ReLU6, Hardtanh and clamp (build_clamp)."""

import pytest
import torch
from torch import nn

import aquatic
import aquatic.nn as qnn
from aquatic.integer import IntegerClamp, QSpec
from aquatic.integer.build_activation import build_clamp, settle_clamp
from aquatic.quantizers import UniformQuantizer

POW2_IN = UniformQuantizer.with_args(bits=8, power_of_two=True)
POW2_W = UniformQuantizer.with_args(bits=8, power_of_two=True)
BIAS = UniformQuantizer.with_args(bits=16, scale=2.0**-6)
POW2_ACT = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False, power_of_two=True)
ACT8 = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False)


def calibrate(model, *inputs):
    model.train()
    with torch.no_grad():
        for x in inputs:
            model(x)
    return model.eval()


def reference_clamp(values, low, high):
    """The real clamp, written out: min(max(x, low), high)."""
    out = values.clone()
    if low is not None:
        out = torch.where(out < low, torch.full_like(out, low), out)
    if high is not None:
        out = torch.where(out > high, torch.full_like(out, high), out)
    return out


@pytest.mark.parametrize("low, high", [(0.0, 6.0), (-1.0, 1.0), (None, 2.5), (-0.75, None)])
def test_build_clamp_on_the_grid_is_the_real_clamp(low, high):
    spec = QSpec(0.25, 3, low=-128, high=127)
    (clamp,), out = build_clamp("c", spec, low, high, "layer 'c' (clamp)")
    codes = torch.arange(-128, 128)
    real = (codes - 3).double() * 0.25
    got = (clamp(codes) - 3).double() * 0.25
    assert clamp.notes == [] and clamp.deferred is None
    assert torch.equal(got, reference_clamp(real, low, high))
    assert out.low <= int(clamp(codes).min()) and int(clamp(codes).max()) <= out.high


def test_build_clamp_per_channel_bounds_follow_each_scale():
    spec = QSpec(torch.tensor([0.5, 0.25]), 0, axis=-1, low=-100, high=100)
    (clamp,), out = build_clamp("c", spec, 0.0, 6.0, "layer 'c' (ReLU6)")
    codes = torch.tensor([[40, 40], [-5, 20]])
    assert torch.equal(clamp(codes), torch.tensor([[12, 24], [0, 20]]))
    assert (out.low, out.high) == (0, 24)


def test_build_clamp_off_grid_is_noted_and_rounded_outward():
    spec = QSpec(0.5, 0, low=-128, high=127)
    (clamp,), out = build_clamp("c", spec, -0.3, 1.2, "layer 'c' (Hardtanh)")
    assert clamp.deferred == pytest.approx([-0.3, 1.2])
    assert "not on the input grid" in clamp.notes[0]
    assert (int(clamp.low), int(clamp.high)) == (-1, 3)  # outward: -0.5 and 1.5


def test_build_clamp_bad_bounds():
    spec = QSpec(0.5, 0, low=-8, high=7)
    with pytest.raises(ValueError, match="above its high bound"):
        build_clamp("c", spec, 2.0, 1.0, "c")
    with pytest.raises(TypeError, match="must be a number"):
        build_clamp("c", spec, "0", 1.0, "c")
    with pytest.raises(ValueError, match="finite"):
        build_clamp("c", spec, 0.0, float("inf"), "c")


def _model(activation, seed, act=POW2_ACT, head_act=POW2_ACT):
    torch.manual_seed(seed)
    body = aquatic.QConfig(weight=POW2_W, bias=BIAS)
    return nn.Sequential(
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=POW2_IN)),
        qnn.Linear(10, 16, qconfig=body),  # accumulator output: a fine grid
        activation,
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=act)),
        qnn.Linear(16, 4, qconfig=aquatic.QConfig(weight=POW2_W, bias=BIAS, activation=head_act)),
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "activation", [nn.ReLU6(), nn.Hardtanh(), nn.Hardtanh(-0.3, 0.7)], ids=repr
)
def test_relu6_and_hardtanh_convert_bit_exact_before_a_quantizer(activation, seed):
    model = _model(activation, seed)
    x = torch.randn(256, 10) * 3
    calibrate(model, x)
    integer_model = aquatic.convert(model, require_exact=True)
    kinds = [type(m).__name__ for m in integer_model.layers]
    assert "IntegerClamp" in kinds
    with torch.no_grad():
        fake = model(x)
        out = integer_model.dequantize_output(integer_model(integer_model.quantize_input(x)))
    assert torch.equal(out, fake)


def test_off_grid_bound_is_exact_after_the_next_quantizer():
    # -0.3 and 0.7 lie off every power-of-two grid: the clamp moves after the quantizer.
    model = _model(nn.Hardtanh(-0.3, 0.7), 0)
    x = torch.randn(256, 10) * 3
    calibrate(model, x)
    integer_model = aquatic.convert(model)
    kinds = [type(m).__name__ for m in integer_model.layers]
    assert kinds.count("IntegerClamp") == 2
    assert kinds.index("IntegerRequantize") < len(kinds) - 1 - kinds[::-1].index("IntegerClamp")
    assert integer_model.exact


def test_clamp_at_the_output_off_grid_is_within_one_step_and_noted():
    torch.manual_seed(0)
    model = nn.Sequential(
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=POW2_IN)),
        qnn.Linear(10, 4, qconfig=aquatic.QConfig(weight=POW2_W, activation=ACT8)),
        nn.Hardtanh(-0.3, 0.7),
    )
    x = torch.randn(256, 10) * 3
    calibrate(model, x)
    integer_model = aquatic.convert(model)
    assert not integer_model.exact
    assert any("not on the input grid" in note for note in integer_model.notes)
    with torch.no_grad():
        fake = model(x)
        out = integer_model.dequantize_output(integer_model(integer_model.quantize_input(x)))
    step = float(integer_model.output_spec.scale)
    assert float((out - fake).abs().max()) <= step + 1e-6


def test_relu6_with_non_power_of_two_scales_agrees_within_one_step():
    model = _model(nn.ReLU6(), 1, act=ACT8, head_act=ACT8)
    x = torch.randn(512, 10) * 3
    calibrate(model, x)
    integer_model = aquatic.convert(model)
    with torch.no_grad():
        fake = model(x)
        codes = integer_model(integer_model.quantize_input(x))
    spec = integer_model.output_spec
    fake_codes = torch.round(fake.double() / spec.scale) + spec.zero_point
    assert float((fake_codes - codes.double()).abs().max()) <= 2  # two requantizations


def test_settle_clamp_leaves_other_sequences_alone():
    clamp = IntegerClamp(0, 5, deferred=[0.0, 2.3])
    spec = QSpec(0.5, 0, low=0, high=255)
    modules, out = settle_clamp([clamp], [], spec)
    assert modules == [clamp] and out is spec


def test_clamp_survives_save_and_load(tmp_path):
    model = _model(nn.ReLU6(), 2)
    x = torch.randn(64, 10) * 3
    calibrate(model, x)
    integer_model = aquatic.convert(model)
    integer_model.save(tmp_path / "m.aqi")
    loaded = aquatic.integer.load(tmp_path / "m.aqi")
    codes = integer_model.quantize_input(x)
    assert torch.equal(loaded(codes), integer_model(codes))
