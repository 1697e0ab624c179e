"""load_state_dict checks what the constructors check, with their messages, naming the key."""

import pytest
import torch

import aquatic
from aquatic.nn import IAF, LIF, ExpLeak
from aquatic.quantizers import (
    AccumulatorBiasQuantizer,
    BitShiftDecay,
    LSQPlusQuantizer,
    LSQQuantizer,
    PACTQuantizer,
    UniformDecay,
    UniformQuantizer,
)

NAN, INF = float("nan"), float("inf")


def _corrupt(module, key, value):
    state = module.state_dict()
    state[key] = torch.as_tensor(value, dtype=state[key].dtype)
    return state


@pytest.mark.parametrize("bad", [-1.0, 0.0, NAN, INF])
def test_fixed_scale_must_be_positive_and_finite(bad):
    q = UniformQuantizer(bits=8, scale=0.5)
    with pytest.raises(
        ValueError, match=r"state_dict\['scale'\]: scale must be positive and finite"
    ):
        q.load_state_dict(_corrupt(q, "scale", bad))
    assert q.scale.item() == 0.5  # a refused checkpoint changes nothing


def test_per_channel_scale_in_a_model_names_the_full_key():
    qconfig = aquatic.QConfig(weight=UniformQuantizer.with_args(scale=[0.5, 0.25], ch_axis=0))
    layer = aquatic.nn.Linear(3, 2, qconfig=qconfig)
    state = layer.state_dict()
    state["quantizers.weight.scale"] = torch.tensor([0.5, -0.25])
    with pytest.raises(ValueError, match=r"'quantizers.weight.scale'\]: scale must be positive"):
        layer.load_state_dict(state)


def test_power_of_two_scale_stays_a_power_of_two():
    q = UniformQuantizer(bits=8, scale=0.25, power_of_two=True)
    with pytest.raises(ValueError, match="is not a power of two"):
        q.load_state_dict(_corrupt(q, "scale", 0.3))


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (200, "lies outside the integer range \\[-128, 127\\]"),
        (-129, "lies outside the integer range"),
    ],
)
def test_zero_point_in_range(bad, fragment):
    q = UniformQuantizer(bits=8, scale=0.5, zero_point=3)
    with pytest.raises(
        ValueError, match=r"state_dict\[.zero_point.\]: zero_point -?\d+ " + fragment
    ):
        q.load_state_dict(_corrupt(q, "zero_point", bad))


def test_zero_point_integer():
    q = UniformQuantizer(bits=8, scale=0.5)
    state = q.state_dict()
    state["zero_point"] = torch.tensor(1.5)
    with pytest.raises(ValueError, match="zero_point must hold integers"):
        q.load_state_dict(state)


def test_channel_counts_must_match():
    q = UniformQuantizer(bits=8, scale=[0.5, 0.25], zero_point=[0, 1], ch_axis=0)
    state = q.state_dict()
    state["zero_point"] = torch.tensor([0, 1, 2], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"scale has shape \(2,\) but zero_point \(3,\)"):
        q.load_state_dict(state)
    state = q.state_dict()
    state["scale"], state["zero_point"] = torch.tensor(0.5), torch.tensor(0, dtype=torch.int32)
    with pytest.raises(ValueError, match="ch_axis=0 needs one scale per channel"):
        q.load_state_dict(state)
    per_tensor = UniformQuantizer(bits=8, scale=0.5)
    with pytest.raises(ValueError, match="a per-channel scale or zero_point needs ch_axis="):
        per_tensor.load_state_dict(q.state_dict())


@pytest.mark.parametrize("cls", [LSQQuantizer, LSQPlusQuantizer])
@pytest.mark.parametrize("bad", [-1.0, 0.0, NAN])
def test_lsq_scale_positive(cls, bad):
    q = cls(bits=4)
    q(torch.randn(16))
    with pytest.raises(ValueError, match=r"state_dict\['scale'\]: scale must be positive"):
        q.load_state_dict(_corrupt(q, "scale", bad))


def test_lsq_plus_zero_point_finite_and_channels():
    q = LSQPlusQuantizer(bits=4, ch_axis=0)
    q(torch.randn(3, 5))
    state = q.state_dict()
    state["zero_point"] = torch.tensor([0.0, NAN, 1.0])
    with pytest.raises(ValueError, match="zero_point must be finite"):
        q.load_state_dict(state)
    state = q.state_dict()
    state["zero_point"] = torch.zeros(4)
    with pytest.raises(ValueError, match=r"scale has shape \(3,\) but zero_point \(4,\)"):
        q.load_state_dict(state)


@pytest.mark.parametrize("bad", [-1.0, 0.0, NAN, INF])
def test_pact_alpha_positive(bad):
    q = PACTQuantizer(bits=4, alpha=6.0)
    with pytest.raises(ValueError, match=r"\['alpha'\]: alpha must be positive and finite.*10\.0"):
        q.load_state_dict(_corrupt(q, "alpha", bad))
    assert q.alpha.item() == 6.0


@pytest.mark.parametrize("cls, name", [(BitShiftDecay, "dash"), (UniformDecay, "decrement")])
def test_decay_codes_in_range(cls, name):
    q = cls(bits=4)
    q(torch.tensor([0.5, 0.9]))
    state = q.state_dict()
    state[name] = torch.tensor([3, 16])  # a wider dtype, one code past 2**4 - 1
    with pytest.raises(ValueError, match=rf"\['{name}'\]: {name} .*outside the integer range"):
        q.load_state_dict(state)
    state[name] = torch.tensor([1.0, 2.5])
    with pytest.raises(ValueError, match=f"{name} must hold integers"):
        q.load_state_dict(state)


@pytest.mark.parametrize(
    "saved, fresh",
    [
        (
            UniformQuantizer(bits=8, scale=[0.5, 0.25], zero_point=[0, 1], ch_axis=0),
            UniformQuantizer(bits=8, scale=[1.0, 1.0], ch_axis=0),
        ),
        (PACTQuantizer(bits=4, alpha=3.0), PACTQuantizer(bits=4)),
        (AccumulatorBiasQuantizer(input_scale=0.5), AccumulatorBiasQuantizer(input_scale=1.0)),
    ],
)
def test_valid_quantizer_state_dicts_still_load(saved, fresh):
    fresh.load_state_dict(saved.state_dict())
    for key, value in saved.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value) or torch.isnan(value).all(), key


@pytest.mark.parametrize("bad", [0.0, -2.0, NAN, INF])
def test_fixed_input_scale_of_a_bias_quantizer_positive(bad):
    q = AccumulatorBiasQuantizer(input_scale=0.5)
    with pytest.raises(ValueError, match=r"\['input_scale'\]: input_scale must be positive"):
        q.load_state_dict(_corrupt(q, "input_scale", bad))


@pytest.mark.parametrize("bad", [0.0, -0.5, NAN, INF])
@pytest.mark.parametrize("cls", [LIF, IAF])
def test_threshold_positive(cls, bad):
    layer = cls(tau_mem=5.0) if cls is LIF else cls()
    with pytest.raises(ValueError, match=r"\['threshold'\]: threshold must be positive and finite"):
        layer.load_state_dict(_corrupt(layer, "threshold", bad))
    assert layer.threshold.item() == 1.0


@pytest.mark.parametrize("bad", [1.5, -0.1, NAN])
def test_alpha_in_unit_interval(bad):
    layer = LIF(alpha_mem=0.9, alpha_syn=0.5)
    for name in ("alpha_mem", "alpha_syn"):
        with pytest.raises(ValueError, match=rf"\['{name}'\]: {name} must lie in \[0, 1\]"):
            layer.load_state_dict(_corrupt(layer, name, bad))


@pytest.mark.parametrize("bad", [0.0, -3.0, NAN])
def test_tau_positive(bad):
    layer = ExpLeak(tau_mem=4.0)
    with pytest.raises(ValueError, match=r"\['tau_mem'\]: tau_mem must be > 0"):
        layer.load_state_dict(_corrupt(layer, "tau_mem", bad))


def test_nan_bias_refused_with_the_nested_key():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), LIF(tau_mem=4.0, bias=[0.1, 0.2, 0.3]))
    state = model.state_dict()
    state["1.bias"] = torch.tensor([0.1, NAN, 0.3])
    with pytest.raises(
        ValueError, match=r"LIF cannot load state_dict\['1.bias'\]: bias must be finite"
    ):
        model.load_state_dict(state)


def test_trained_decays_load_as_forward_uses_them():
    # forward clamps trained decays to [0, 1]: a trained 1.02 is a valid checkpoint ...
    layer = LIF(alpha_mem=0.9, train_decay=True)
    with torch.no_grad():
        layer.alpha_mem.fill_(1.02)
    fresh = LIF(alpha_mem=0.5, train_decay=True)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.alpha_mem.item() == pytest.approx(1.02)
    # ... NaN is not.
    with pytest.raises(ValueError, match="alpha_mem must lie in"):
        fresh.load_state_dict(_corrupt(layer, "alpha_mem", NAN))


def test_quantized_neuron_checks_its_quantizers_too():
    qconfig = aquatic.QConfig(threshold=UniformQuantizer.with_args(scale=0.125))
    layer = LIF(tau_mem=4.0, qconfig=qconfig)
    state = layer.state_dict()
    state["quantizers.threshold.scale"] = torch.tensor(-0.125)
    with pytest.raises(ValueError, match=r"'quantizers.threshold.scale'\]: scale must be positive"):
        layer.load_state_dict(state)
    fresh = LIF(tau_mem=2.0, qconfig=qconfig)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.tau_mem.item() == 4.0
