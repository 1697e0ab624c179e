"""Integer twins of adaptive average pooling (global included), means, Flatten after
per-channel codes, and grouped / depthwise convolutions."""

from fractions import Fraction

import pytest
import torch
from torch import nn

import aquatic
import aquatic.nn as qnn
from aquatic.integer.average import IntegerAverage, adaptive_windows
from aquatic.quantizers import UniformQuantizer

POW2_IN = UniformQuantizer.with_args(bits=8, power_of_two=True)
POW2_W = UniformQuantizer.with_args(bits=8, power_of_two=True)
POW2_W_CH = UniformQuantizer.with_args(bits=6, power_of_two=True, ch_axis=0)
POW2_ACT = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False, power_of_two=True)
ACT8 = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False)
BIAS = UniformQuantizer.with_args(bits=16, scale=2.0**-8)


def calibrate(model, *inputs):
    model.train()
    with torch.no_grad():
        for x in inputs:
            model(x)
    return model.eval()


def run(model, integer_model, x):
    with torch.no_grad():
        fake = model(x)
    codes = integer_model(integer_model.quantize_input(x))
    return fake, integer_model.dequantize_output(codes)


def round_half_even(value: Fraction) -> int:
    floor = value.numerator // value.denominator
    rest = value - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2):
        return floor + 1
    return floor


@pytest.mark.parametrize("size, output", [(7, 3), (5, 5), (8, 1), (6, 4)])
def test_adaptive_windows_follow_torch(size, output):
    x = torch.eye(size)  # row i: a one at position i
    pooled = nn.AdaptiveAvgPool1d(output)(x.unsqueeze(0))[0]  # (size, output)
    for j, window in enumerate(adaptive_windows(size, output)):
        assert [i for i in range(size) if pooled[i, j] > 0] == list(window)


def test_integer_average_is_the_rounded_exact_mean():
    torch.manual_seed(0)
    codes = torch.randint(-50, 50, (3, 2, 7, 5))
    pool = IntegerAverage(
        "adaptive",
        ratio=torch.tensor(0.75, dtype=torch.float64),
        input_zero_point=2,
        output_zero_point=-1,
        output_size=[3, 2],
    )
    out = pool(codes)
    rows, cols = adaptive_windows(7, 3), adaptive_windows(5, 2)
    for n in range(3):
        for c in range(2):
            for i, rw in enumerate(rows):
                for j, cw in enumerate(cols):
                    window = [int(codes[n, c, r, k]) - 2 for r in rw for k in cw]
                    mean = Fraction(sum(window), len(window)) * Fraction(3, 4)
                    got = int(out[n, c, i, j]) + 1
                    # 3 / (4 * 9) has no exact fixed-point multiplier: ties may go either
                    # way, everything else rounds to nearest.
                    assert abs(got - mean) <= Fraction(1, 2) + Fraction(1, 10**6)
                    if abs(mean - round_half_even(mean)) != Fraction(1, 2):
                        assert got == round_half_even(mean)


def test_integer_average_mean_mode_against_the_exact_mean():
    """IntegerAverage's mean mode (the window sum, then ratio / count by integer
    multiplier and shift, half to even) against exact fractions."""
    codes = torch.randint(0, 256, (4, 2, 3))
    mean = IntegerAverage(
        "mean",
        ratio=2.0,
        input_zero_point=3,
        output_zero_point=10,
        low=0,
        high=255,
        dims=[1, 2],
        keepdim=True,
    )
    got = mean(codes)
    assert got.shape == (4, 1, 1)
    for n in range(4):
        exact = Fraction(int((codes[n] - 3).sum()), 6) * 2  # ratio 0.5 / 0.25
        assert int(got[n, 0, 0]) == min(255, max(0, round_half_even(exact) + 10))


def _global_pool_model(pool, seed, act=POW2_ACT):
    torch.manual_seed(seed)
    q = aquatic.QConfig(weight=POW2_W_CH, bias=BIAS, activation=act)
    return nn.Sequential(
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=POW2_IN)),
        qnn.Conv2d(3, 8, 3, padding=1, qconfig=q),
        nn.ReLU(),
        pool,
        nn.Flatten(),
        qnn.Linear(8 * pool_cells(pool), 4, qconfig=aquatic.QConfig(weight=POW2_W, bias=BIAS)),
    )


def pool_cells(pool):
    size = pool.output_size
    return size * size if isinstance(size, int) else size[0] * size[1]


@pytest.mark.parametrize("seed", range(2))
def test_global_pooling_with_power_of_two_window_is_bit_exact(seed):
    pool = qnn.AdaptiveAvgPool2d(1, qconfig=aquatic.QConfig(activation=POW2_ACT))
    model = _global_pool_model(pool, seed)
    x = torch.randn(32, 3, 4, 4) * 2  # 16 values per window
    calibrate(model, x)
    integer_model = aquatic.convert(model)
    fake, out = run(model, integer_model, x)
    assert torch.equal(out, fake)
    # The window size is only known from the input: the model says it may differ.
    assert any("only known from the input" in note for note in integer_model.notes)


def test_uneven_adaptive_windows_are_within_one_step():
    pool = qnn.AdaptiveAvgPool2d((2, 3), qconfig=aquatic.QConfig(activation=ACT8))
    model = _global_pool_model(pool, 0, act=ACT8)
    x = torch.randn(64, 3, 5, 7) * 2
    calibrate(model, x)
    integer_model = aquatic.convert(model)
    with torch.no_grad():
        fake = model[:5](x)
    head = aquatic.convert(model[:5])  # up to the pooled, quantized features
    codes = head(head.quantize_input(x))
    spec = head.output_spec
    fake_codes = torch.round(fake.double() / spec.scale) + spec.zero_point
    assert float((fake_codes - codes.double()).abs().max()) <= 2  # conv requant + pool
    assert integer_model(integer_model.quantize_input(x)).shape == (64, 4)


def test_float_global_pooling_rounds_to_the_input_grid_and_says_so():
    model = _global_pool_model(nn.AdaptiveAvgPool2d(1), 1)
    x = torch.randn(64, 3, 4, 4) * 2
    calibrate(model, x)
    integer_model = aquatic.convert(model)
    assert any("rounds the average to the input grid" in n for n in integer_model.notes)
    fake, out = run(model, integer_model, x)
    assert (out.argmax(1) == fake.argmax(1)).float().mean() >= 0.95


def _per_channel_flatten_model(weight, seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=POW2_IN)),
        qnn.Conv2d(2, 4, 3, groups=2, bias=False, qconfig=aquatic.QConfig(weight=weight)),
        nn.Flatten(),  # codes with one scale per output channel of the convolution
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=POW2_IN)),
        qnn.Linear(4 * 3 * 3, 3, qconfig=aquatic.QConfig(weight=POW2_W, bias=BIAS)),
    )


def test_flatten_after_per_channel_power_of_two_codes_is_bit_exact():
    model = _per_channel_flatten_model(POW2_W_CH, 0)
    x = torch.randn(32, 2, 5, 5)
    calibrate(model, x)
    integer_model = aquatic.convert(model, require_exact=True)
    fake, out = run(model, integer_model, x)
    assert torch.equal(out, fake)


def test_flatten_after_per_channel_codes_otherwise_is_close_and_noted():
    model = _per_channel_flatten_model(UniformQuantizer.with_args(bits=8, ch_axis=0), 0)
    x = torch.randn(32, 2, 5, 5)
    calibrate(model, x)
    integer_model = aquatic.convert(model)
    assert any("per-channel scales" in note for note in integer_model.notes)
    fake, out = run(model, integer_model, x)
    assert torch.allclose(out, fake, atol=1e-3 * float(fake.abs().max()))


@pytest.mark.parametrize("groups", [2, 8])  # grouped, and depthwise
def test_grouped_and_depthwise_convolutions_are_bit_exact(groups):
    torch.manual_seed(groups)
    q = aquatic.QConfig(weight=POW2_W_CH, bias=BIAS, activation=POW2_ACT)
    model = nn.Sequential(
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=POW2_IN)),
        qnn.Conv2d(8, 8, 3, groups=groups, padding=1, qconfig=q),
        nn.ReLU6(),
        qnn.Conv2d(8, 4, 1, qconfig=q),
    )
    x = torch.randn(16, 8, 6, 6)
    calibrate(model, x)
    integer_model = aquatic.convert(model, require_exact=True)
    fake, out = run(model, integer_model, x)
    assert torch.equal(out, fake)


def test_average_and_common_scale_survive_save_and_load(tmp_path):
    pool = qnn.AdaptiveAvgPool2d(1, qconfig=aquatic.QConfig(activation=POW2_ACT))
    model = _global_pool_model(pool, 3)
    model.insert(3, nn.Hardtanh(-0.3, 0.7))
    x = torch.randn(16, 3, 4, 4)
    calibrate(model, x)
    integer_model = aquatic.convert(model)
    integer_model.save(tmp_path / "m.aqi")
    loaded = aquatic.integer.load(tmp_path / "m.aqi")
    codes = integer_model.quantize_input(x)
    assert torch.equal(loaded(codes), integer_model(codes))
    kinds = {type(m).__name__ for m in loaded.layers}
    assert {"IntegerAverage", "IntegerClamp"} <= kinds
