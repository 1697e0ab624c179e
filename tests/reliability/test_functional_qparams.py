"""The public fake-quantization functions refuse scales and zero points they cannot use."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aquatic.functional import (
    dequantize_affine,
    fake_quantize_affine,
    fake_quantize_learnable,
    quantize_affine,
    round_ste,
)

X = torch.linspace(-2.0, 2.0, 12).reshape(3, 4)
ZERO = torch.tensor(0)


def affine(fn):
    return lambda x, s, z, ch_axis=None: fn(x, s, z, -128, 127, ch_axis)


ENTRIES = {
    "fake_quantize_affine": affine(fake_quantize_affine),
    "quantize_affine": affine(quantize_affine),
    "fake_quantize_learnable": affine(fake_quantize_learnable),
}


@pytest.mark.parametrize("name", ENTRIES)
@given(bad=st.sampled_from([0.0, -0.1, -math.inf, math.inf, math.nan]))
@settings(max_examples=10, deadline=None)
def test_scale_must_be_finite_and_positive(name, bad):
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        ENTRIES[name](X, torch.tensor(bad), ZERO)


@pytest.mark.parametrize("name", ["fake_quantize_affine", "quantize_affine"])
@pytest.mark.parametrize("bad", [128, -129, 0.5, math.nan])
def test_zero_point_must_be_an_integer_inside_the_range(name, bad):
    with pytest.raises(
        ValueError,
        match=r"zero_point must be integers inside \[quant_min, quant_max\] = \[-128, 127\]",
    ):
        ENTRIES[name](X, torch.tensor(0.1), torch.tensor(bad))


def test_a_learned_zero_point_must_round_into_the_range():
    with pytest.raises(
        ValueError, match=r"zero_point must round into \[quant_min, quant_max\] = \[-128, 127\]"
    ):
        ENTRIES["fake_quantize_learnable"](X, torch.tensor(0.1), torch.tensor(127.6))
    # a real zero point that rounds into the range is what LSQ+ learns
    out = ENTRIES["fake_quantize_learnable"](X, torch.tensor(0.1), torch.tensor(3.4))
    assert torch.equal(out, fake_quantize_affine(X, torch.tensor(0.1), torch.tensor(3), -128, 127))


def test_dequantize_needs_a_positive_scale_and_integer_zero_point():
    codes = torch.tensor([1, 2], dtype=torch.int8)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        dequantize_affine(codes, torch.tensor(-1.0), ZERO)
    with pytest.raises(ValueError, match="zero_point must be integers"):
        dequantize_affine(codes, torch.tensor(1.0), torch.tensor(0.5))
    with pytest.raises(TypeError, match="codes must be a torch.Tensor"):
        dequantize_affine([1, 2], torch.tensor(1.0), ZERO)


@pytest.mark.parametrize("name", ENTRIES)
def test_several_scales_without_ch_axis_are_refused(name):
    # before, a 1-D scale of 4 broadcast silently along the last axis
    with pytest.raises(ValueError, match=r"scale has shape \(4,\) but ch_axis is None"):
        ENTRIES[name](X, torch.full((4,), 0.1), torch.zeros(4, dtype=torch.int32))


@pytest.mark.parametrize("name", ENTRIES)
def test_per_channel_scale_must_match_the_channel_axis(name):
    with pytest.raises(ValueError, match=r"shape \(3,\) for an input of shape \(3, 4\)"):
        ENTRIES[name](X, torch.full((4,), 0.1), torch.zeros(4, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="zero_point has shape"):
        ENTRIES[name](X, torch.full((3,), 0.1), torch.zeros(2, dtype=torch.int32), 0)


@pytest.mark.parametrize("name", ENTRIES)
def test_valid_per_channel_parameters_quantize_each_channel(name):
    scale = torch.tensor([0.1, 0.2, 0.5])
    codes = ENTRIES[name](X, scale, torch.zeros(3, dtype=torch.int32), 0)
    expected = torch.fake_quantize_per_channel_affine(
        X, scale, torch.zeros(3, dtype=torch.int32), 0, -128, 127
    )
    if name == "quantize_affine":
        codes = codes.float() * scale[:, None]
    assert torch.allclose(codes, expected)


def test_scale_must_be_a_tensor():
    with pytest.raises(TypeError, match=r"scale must be a torch.Tensor, got float"):
        fake_quantize_affine(X, 0.1, ZERO, -128, 127)


def test_round_ste_checks_its_input_and_mode():
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        round_ste(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        round_ste([0.5])
    with pytest.raises(ValueError, match="unknown rounding mode 'up'"):
        round_ste(torch.tensor([0.5]), "up")


def test_values_are_not_checked_inside_compiled_graphs():
    # the shape checks still run; the value checks would break the graph
    fn = torch.compile(lambda x, s: fake_quantize_affine(x, s, ZERO, -128, 127), backend="eager")
    assert torch.equal(
        fn(X, torch.tensor(0.5)), fake_quantize_affine(X, torch.tensor(0.5), ZERO, -128, 127)
    )
