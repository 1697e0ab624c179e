"""aquatic.convert on conventional models: agreement with the fake-quant model, errors."""

import pytest
import torch
from torch import nn

import aquatic
import aquatic.nn as qnn
from aquatic.integer import IntegerModel, IntegerOverflowError
from aquatic.observers import MovingAverageMinMaxObserver
from aquatic.quantizers import AccumulatorBiasQuantizer, UniformQuantizer

POW2_WEIGHT = UniformQuantizer.with_args(bits=8, power_of_two=True)
POW2_WEIGHT_PER_CHANNEL = UniformQuantizer.with_args(bits=6, power_of_two=True, ch_axis=0)
POW2_ACT = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False, power_of_two=True)
ACT8 = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False)


def calibrate(model, *inputs):
    model.train()
    with torch.no_grad():
        for x in inputs:
            model(x)
    return model.eval()


def steps_apart(integer_model, fake, codes):
    """|fake codes - integer codes| in steps of the integer model's output grid."""
    spec = integer_model.output_spec
    fake_codes = torch.round(fake.double() / spec.scale).to(torch.int64) + spec.zero_point
    return (fake_codes - codes.to(torch.int64)).abs()


def run_both(model, integer_model, x):
    with torch.no_grad():
        fake = model(x)
        codes = integer_model(integer_model.quantize_input(x))
    return fake, codes


# -- power-of-two scales: bit for bit ---------------------------------------------------


def _pow2_mlp(seed):
    torch.manual_seed(seed)
    head = aquatic.QConfig(activation=POW2_ACT)
    q1 = aquatic.QConfig(
        weight=POW2_WEIGHT, activation=POW2_ACT, bias=UniformQuantizer.with_args(scale=2.0**-3)
    )
    q2 = aquatic.QConfig(
        weight=POW2_WEIGHT_PER_CHANNEL,
        activation=UniformQuantizer.with_args(bits=8, power_of_two=True),
        bias=AccumulatorBiasQuantizer,
    )
    q3 = aquatic.QConfig(
        weight=POW2_WEIGHT, bias=UniformQuantizer.with_args(bits=16, scale=2.0**-12)
    )
    model = nn.Sequential(
        qnn.ActivationQuantizer(qconfig=head),
        qnn.Linear(12, 16, qconfig=q1),
        nn.ReLU(),
        nn.Dropout(0.5),
        qnn.Linear(16, 8, qconfig=q2),
        nn.Sequential(nn.Identity(), qnn.Linear(8, 5, qconfig=q3)),
    )
    # The bias of the second layer lies on (its input's scale) x (its weight scale).
    model[4].quantizers["bias"].follow_input(model[1].quantizers["activation"])
    return model


@pytest.mark.parametrize("seed", range(4))
def test_power_of_two_mlp_is_bit_exact(seed):
    model = _pow2_mlp(seed)
    x = torch.randn(64, 12) * 2 + 0.5
    calibrate(model, x, torch.randn(64, 12) * 3)
    integer_model = aquatic.convert(model, require_exact=True)
    fake, codes = run_both(model, integer_model, torch.randn(200, 12) * 2.5)
    assert integer_model.exact and integer_model.notes == []
    assert codes.dtype == torch.int32
    assert torch.equal(integer_model.dequantize_output(codes), fake)


def _pow2_cnn(seed, transposed):
    torch.manual_seed(seed)
    q = aquatic.QConfig(weight=POW2_WEIGHT_PER_CHANNEL, activation=POW2_ACT)
    qw = aquatic.QConfig(weight=POW2_WEIGHT, activation=POW2_ACT)
    layers = [
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=POW2_ACT)),
        qnn.Conv2d(3, 6, 3, padding=1, bias=False, qconfig=q),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AvgPool2d(2),  # a sum / 4: exact, and the next layer takes it unquantized
        qnn.Conv2d(6, 4, 3, padding=1, stride=1, groups=2, bias=False, qconfig=qw),
    ]
    if transposed:
        # Transposed weights are (in, out / groups, ...): output channels on axis 1.
        per_out = UniformQuantizer.with_args(bits=6, power_of_two=True, ch_axis=1)
        qt = aquatic.QConfig(weight=per_out, activation=POW2_ACT)
        layers.append(qnn.ConvTranspose2d(4, 4, 2, stride=2, groups=2, bias=False, qconfig=qt))
    layers += [
        nn.Flatten(),
        qnn.Linear(4 * (4 if transposed else 2) ** 2, 3, bias=False, qconfig=qw),
    ]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("seed,transposed", [(0, False), (1, True), (2, True)])
def test_power_of_two_cnn_is_bit_exact(seed, transposed):
    model = _pow2_cnn(seed, transposed)
    calibrate(model, torch.rand(16, 3, 8, 8) * 2)
    integer_model = aquatic.convert(model)
    x = torch.rand(32, 3, 8, 8) * 2.2 - 0.1
    fake, codes = run_both(model, integer_model, x)
    assert integer_model.exact, integer_model.notes
    assert torch.equal(integer_model.dequantize_output(codes), fake)


def test_conv1d_and_given_input_scale_are_bit_exact():
    torch.manual_seed(5)
    q = aquatic.QConfig(weight=POW2_WEIGHT, activation=POW2_ACT)
    model = nn.Sequential(
        qnn.Conv1d(2, 4, 3, bias=False, qconfig=q),
        nn.MaxPool1d(2),
        nn.AvgPool1d(2),
        qnn.ConvTranspose1d(4, 2, 3, bias=False, qconfig=q),
    )
    x = torch.randint(-16, 16, (8, 2, 20)) / 8.0
    calibrate(model, x)
    integer_model = aquatic.convert(model, input_scale=1 / 8)
    fake, codes = run_both(model, integer_model, x)
    assert integer_model.exact, integer_model.notes
    assert torch.equal(integer_model.dequantize_output(codes), fake)


# -- other scales: at most one step apart -----------------------------------------------

PRESETS = {
    "int8": aquatic.qconfig.int8,
    "int4_per_channel": aquatic.qconfig.int4_weight._replace(activation=ACT8),
    "binary": aquatic.qconfig.binary_weight._replace(activation=ACT8),
}
#: Lower bounds of the share of exactly equal codes (measured ~0.9999 to 1.0).
SINGLE_LAYER_SHARE = 0.995
MLP_SHARE = 0.98


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_single_layer_is_at_most_one_step_apart(preset, record_property):
    equal = total = 0
    for seed in range(3):
        torch.manual_seed(seed)
        layer = qnn.Linear(64, 32, qconfig=PRESETS[preset])
        x = torch.randint(0, 17, (256, 64)) / 16.0
        calibrate(layer, x)
        integer_model = aquatic.convert(nn.Sequential(layer), input_scale=1 / 16)
        assert not integer_model.exact  # the scales are not powers of two
        fake, codes = run_both(layer, integer_model, x)
        apart = steps_apart(integer_model, fake, codes)
        assert int(apart.max()) <= 1
        equal += int((apart == 0).sum())
        total += apart.numel()
    record_property("exact_share", equal / total)
    assert equal / total >= SINGLE_LAYER_SHARE


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_mlp_outputs_are_at_most_one_step_apart(preset, record_property):
    equal = total = 0
    for seed in range(3):
        torch.manual_seed(seed)
        qconfig = PRESETS[preset]
        model = nn.Sequential(
            qnn.Linear(64, 48, qconfig=qconfig),
            nn.ReLU(),
            qnn.Linear(48, 10, qconfig=qconfig),
        )
        x = torch.randint(0, 17, (256, 64)) / 16.0
        calibrate(model, x)
        integer_model = aquatic.convert(model, input_scale=1 / 16)
        fake, codes = run_both(model, integer_model, x)
        apart = steps_apart(integer_model, fake, codes)
        assert int(apart.max()) <= 1
        equal += int((apart == 0).sum())
        total += apart.numel()
    record_property("exact_share", equal / total)
    assert equal / total >= MLP_SHARE


def test_demo_style_mlp_with_float_logits_agrees():
    # The demo's MLP: the output layer keeps float activations (logits).
    from aquatic.demo import mlp

    torch.manual_seed(0)
    model = mlp(aquatic.qconfig.int8)
    x = torch.randint(0, 17, (300, 64)) / 16.0
    calibrate(model, x)
    integer_model = aquatic.convert(model, input_scale=1 / 16)
    with torch.no_grad():
        fake = model(x)
        out = integer_model.dequantize_output(integer_model(integer_model.quantize_input(x)))
    assert out.dtype == torch.float32 and out.shape == fake.shape
    assert (out.argmax(1) == fake.argmax(1)).float().mean() >= 0.99
    # One hidden code apart moves a logit by at most max |w| * hidden step.
    hidden_step = float(model[0].quantizers["activation"].qparams()["scale"])
    w_max = float(model[2].quantize_params()["weight"].abs().max())
    assert float((out - fake).abs().max()) <= 2 * w_max * hidden_step


# -- the input -------------------------------------------------------------------------


def test_quantize_input_follows_a_leading_activation_quantizer():
    torch.manual_seed(0)
    head = qnn.ActivationQuantizer(qconfig=aquatic.qconfig.int8)
    model = nn.Sequential(head, qnn.Linear(4, 2, qconfig=aquatic.qconfig.int8))
    calibrate(model, torch.randn(32, 4))
    integer_model = aquatic.convert(model)
    x = torch.randn(100, 4) * 4  # some values clip
    qparams = head.quantizers["activation"].qparams()
    with torch.no_grad():
        want = torch.round(head(x) / qparams["scale"]) + qparams["zero_point"]
    assert torch.equal(integer_model.quantize_input(x), want.to(torch.int32))


def test_unknown_input_scale_says_what_to_add():
    model = nn.Sequential(qnn.Linear(4, 2, qconfig=aquatic.qconfig.int8))
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(ValueError, match="ActivationQuantizer.*input_scale"):
        aquatic.convert(model)


def test_assumed_input_scale_refuses_off_grid_and_out_of_range_inputs():
    model = nn.Sequential(qnn.Linear(4, 2, qconfig=aquatic.qconfig.int8))
    calibrate(model, torch.rand(8, 4))
    integer_model = aquatic.convert(model, input_scale=1 / 16, input_range=(0, 16))
    assert integer_model.quantize_input(torch.tensor([[0.0, 0.25, 1.0, 0.0625]])).tolist() == [
        [0, 4, 16, 1]
    ]
    with pytest.raises(ValueError, match="off the input grid"):
        integer_model.quantize_input(torch.tensor([[0.01, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="input_range"):
        integer_model.quantize_input(torch.tensor([[2.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="outside the input range"):
        integer_model(torch.tensor([[17, 0, 0, 0]], dtype=torch.int32))
    with pytest.raises(TypeError, match="integer"):
        integer_model(torch.zeros(1, 4))
    with pytest.raises(TypeError, match="floating-point"):
        integer_model.quantize_input(torch.zeros(1, 4, dtype=torch.int64))


# -- bad input ---------------------------------------------------------------------------


def test_observers_never_run_are_named():
    model = nn.Sequential(qnn.Linear(4, 2, qconfig=aquatic.qconfig.int8))
    with pytest.raises(ValueError, match=r"never seen data.*'0\.quantizers\.weight\.observer'"):
        aquatic.convert(model, input_scale=0.5)


def test_layer_without_integer_twin_is_named():
    model = nn.Sequential(qnn.Linear(4, 3, qconfig=aquatic.qconfig.int8), nn.Sigmoid())
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(TypeError, match=r"layer '1' \(Sigmoid\) has no integer counterpart"):
        aquatic.convert(model, input_scale=1 / 16)


def test_float_torch_layer_and_batch_norm_are_refused():
    model = nn.Sequential(qnn.Linear(4, 3, qconfig=aquatic.qconfig.int8), nn.Linear(3, 2))
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(TypeError, match=r"layer '1' \(Linear\) is a float torch.nn layer"):
        aquatic.convert(model, input_scale=1 / 16)
    model = nn.Sequential(qnn.Linear(4, 3, qconfig=aquatic.qconfig.int8), nn.BatchNorm1d(3))
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(TypeError, match="fold_batch_norm"):
        aquatic.convert(model, input_scale=1 / 16)


def test_custom_container_is_converted_as_a_graph_and_needs_a_grid_for_its_add():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = qnn.Linear(4, 4, qconfig=aquatic.qconfig.int8)

        def forward(self, x):
            return x + self.layer(x)

    model = nn.Sequential(Residual())
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(ValueError, match="needs example_input"):
        aquatic.convert(model, input_scale=1 / 16)
    # The input's grid (1/16) and the layer's (not a power of two) share no grid: the
    # addition needs an output quantizer, as aquatic.nn.Add gives it.
    with pytest.raises(ValueError, match="share no common grid.*aquatic.nn.Add"):
        aquatic.convert(model, torch.rand(8, 4), input_scale=1 / 16)


def test_accumulator_overflow_is_detected_with_the_layer_name():
    torch.manual_seed(0)
    qconfig = aquatic.QConfig(weight=UniformQuantizer.with_args(bits=16))
    model = nn.Sequential(qnn.Linear(64, 4, qconfig=qconfig), qnn.Linear(4, 2, qconfig=qconfig))
    x = torch.rand(8, 64)
    calibrate(model, x)
    # 16-bit weights times 16-bit inputs over 64 terms: up to 2**36.
    with pytest.raises(IntegerOverflowError, match=r"layer '0' \(Linear\).*int32"):
        aquatic.convert(model, input_scale=2**-15, input_range=(-(2**15), 2**15 - 1))
    # Second layer: its input (the first layer's unbounded-scale accumulator) is bounded
    # by 2**31, and 16-bit weights take it beyond int32.
    with pytest.raises(IntegerOverflowError, match=r"layer '1' \(Linear\)"):
        aquatic.convert(model, input_scale=2**-4, input_range=(0, 16))


def test_weight_quantized_per_input_channel_is_refused():
    qconfig = aquatic.QConfig(weight=UniformQuantizer.with_args(ch_axis=1))
    model = nn.Sequential(qnn.Linear(4, 3, qconfig=qconfig))
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(ValueError, match="ch_axis=0"):
        aquatic.convert(model, input_scale=0.5)


def test_unquantized_weight_is_refused():
    qconfig = aquatic.QConfig(activation=ACT8)
    model = nn.Sequential(qnn.Linear(4, 3, qconfig=qconfig))
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(ValueError, match="no weight quantizer"):
        aquatic.convert(model, input_scale=0.5)


def test_require_exact_lists_the_reasons():
    model = nn.Sequential(qnn.Linear(4, 3, qconfig=aquatic.qconfig.int8))
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(ValueError, match="not bit-exact.*powers of two"):
        aquatic.convert(model, input_scale=1 / 16, require_exact=True)


def test_convert_leaves_the_model_and_its_modes_alone():
    model = _pow2_mlp(0)
    calibrate(model, torch.randn(32, 12))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    integer_model = aquatic.convert(model)
    assert isinstance(integer_model, IntegerModel)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_bad_arguments():
    model = nn.Sequential(qnn.Linear(4, 3, qconfig=aquatic.qconfig.int8))
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(TypeError, match="nn.Module"):
        aquatic.convert("model")
    with pytest.raises(ValueError, match="input_scale must be positive"):
        aquatic.convert(model, input_scale=-1.0)
    with pytest.raises(ValueError, match="input_range"):
        aquatic.convert(model, input_scale=0.5, input_range=(3, 1))
    with pytest.raises(ValueError, match="input_zero_point"):
        aquatic.convert(model, input_scale=0.5, input_zero_point=500)


def test_moving_average_observer_ranges_are_used_as_frozen():
    # Eval mode: the fake-quant model uses the observed range without updating it; so
    # does the integer model, for inputs the observer never saw.
    torch.manual_seed(3)
    act = UniformQuantizer.with_args(
        power_of_two=True, observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.5)
    )
    q = aquatic.QConfig(weight=POW2_WEIGHT, activation=act)
    model = nn.Sequential(qnn.Linear(6, 4, bias=False, qconfig=q))
    calibrate(model, torch.randint(-8, 8, (16, 6)) / 8.0)
    integer_model = aquatic.convert(model, input_scale=1 / 8)
    x = torch.randint(-64, 64, (50, 6)) / 8.0
    fake, codes = run_both(model, integer_model, x)
    assert torch.equal(integer_model.dequantize_output(codes), fake)


def test_fake_quantization_switched_off_is_refused():
    model = nn.Sequential(qnn.Linear(4, 3, qconfig=aquatic.qconfig.int8))
    calibrate(model, torch.rand(8, 4))
    aquatic.disable_fake_quant(model)
    with pytest.raises(ValueError, match="enable_fake_quant"):
        aquatic.convert(model, input_scale=1 / 16)


def test_binary_activation_quantizer_is_refused():
    from aquatic.quantizers import BinaryQuantizer

    qconfig = aquatic.QConfig(
        weight=POW2_WEIGHT, activation=BinaryQuantizer.with_args(ch_axis=None)
    )
    model = nn.Sequential(qnn.Linear(4, 3, qconfig=qconfig))
    calibrate(model, torch.rand(8, 4))
    with pytest.raises(ValueError, match="thresholds rather than rounds"):
        aquatic.convert(model, input_scale=1 / 16)


def test_conv3d_flatten_unflatten_are_bit_exact():
    torch.manual_seed(6)
    q = aquatic.QConfig(weight=POW2_WEIGHT, activation=POW2_ACT)
    model = nn.Sequential(
        qnn.Conv3d(1, 2, 2, bias=False, qconfig=q),
        nn.Flatten(),
        nn.Unflatten(1, (2, 27)),
        qnn.Conv1d(2, 2, 3, stride=2, bias=False, qconfig=q),
    )
    x = torch.randint(0, 16, (4, 1, 4, 4, 4)) / 16.0
    calibrate(model, x)
    integer_model = aquatic.convert(model, input_scale=1 / 16, input_range=(0, 15))
    fake, codes = run_both(model, integer_model, x)
    assert integer_model.exact, integer_model.notes
    assert torch.equal(integer_model.dequantize_output(codes), fake)
