"""fake_quantize_affine against torch's kernels and a reference written here."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aquatic.functional import (
    dequantize_affine,
    fake_quantize_affine,
    fake_quantize_learnable,
    grad_scale,
    int_dtype,
    quantize_affine,
)
from aquatic.functional.fake_quant import check_axis


def reference_fake_quant(x, scale, zero_point, qmin, qmax, rounder=torch.round):
    """Jacob et al. 2018: q = clamp(round(x/s) + z), x_hat = (q - z) s; grad 1 inside."""
    inv = 1.0 / scale
    q = rounder(x * inv) + zero_point
    inside = (q >= qmin) & (q <= qmax)
    return (torch.clamp(q, qmin, qmax) - zero_point) * scale, inside.float()


RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 1), (-32768, 32767), (0, 65535)]


@pytest.mark.parametrize("qmin,qmax", RANGES)
def test_per_tensor_matches_torch_bit_for_bit(qmin, qmax):
    x = torch.randn(257) * 4
    x = torch.cat([x, torch.tensor([0.05, 0.15, -0.25, 12.75])])  # exact ties at scale 0.1
    scale = torch.tensor(0.1)
    zp = torch.tensor((qmin + qmax) // 2 if qmin == 0 else 0)
    xa = x.clone().requires_grad_()
    xt = x.clone().requires_grad_()
    ya = fake_quantize_affine(xa, scale, zp, qmin, qmax)
    yt = torch.fake_quantize_per_tensor_affine(xt, scale, zp.int(), qmin, qmax)
    assert torch.equal(ya, yt)
    g = torch.randn_like(x)
    ya.backward(g)
    yt.backward(g)
    assert torch.equal(xa.grad, xt.grad)


@pytest.mark.parametrize("ch_axis", [0, 1, -1])
def test_per_channel_matches_torch_bit_for_bit(ch_axis):
    x = torch.randn(4, 5, 6) * 3
    channels = x.shape[ch_axis]
    scale = torch.rand(channels) * 0.2 + 0.01
    zp = torch.randint(-3, 4, (channels,), dtype=torch.int32)
    xa = x.clone().requires_grad_()
    xt = x.clone().requires_grad_()
    ya = fake_quantize_affine(xa, scale, zp, -128, 127, ch_axis=ch_axis)
    yt = torch.fake_quantize_per_channel_affine(xt, scale, zp, ch_axis % 3, -128, 127)
    assert torch.equal(ya, yt)
    ya.sum().backward()
    yt.sum().backward()
    assert torch.equal(xa.grad, xt.grad)


@pytest.mark.parametrize("rounding,rounder", [("floor", torch.floor)])
def test_floor_rounding_matches_reference(rounding, rounder):
    x = (torch.randn(500) * 3).requires_grad_()
    scale, zp = torch.tensor(0.07), torch.tensor(3)
    y = fake_quantize_affine(x, scale, zp, -16, 15, rounding=rounding)
    expected, mask = reference_fake_quant(x.detach(), scale, zp, -16, 15, rounder)
    assert torch.equal(y.detach(), expected)
    y.sum().backward()
    assert torch.equal(x.grad, mask)


def test_stochastic_rounding_unbiased_and_reproducible():
    x = torch.full((20000,), 0.23)
    scale, zp = torch.tensor(0.1), torch.tensor(0)
    y = fake_quantize_affine(x, scale, zp, -128, 127, rounding="stochastic")
    # Only the two neighbouring grid points, in proportion 70/30.
    assert set(torch.unique(torch.round(y / 0.1)).tolist()) == {2.0, 3.0}
    assert abs(y.mean().item() - 0.23) < 0.003
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = fake_quantize_affine(x, scale, zp, -128, 127, rounding="stochastic", generator=g1)
    b = fake_quantize_affine(x, scale, zp, -128, 127, rounding="stochastic", generator=g2)
    assert torch.equal(a, b)


@given(
    st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=40),
    st.floats(0.001, 10),
    st.sampled_from(RANGES[:4]),
    st.sampled_from(["nearest", "floor"]),
)
def test_properties_on_grid_in_range_idempotent(values, scale, qrange, rounding):
    qmin, qmax = qrange
    x = torch.tensor(values)
    s = torch.tensor(scale)
    zp = torch.tensor(0 if qmin < 0 else qmin)
    y = fake_quantize_affine(x, s, zp, qmin, qmax, rounding=rounding)
    codes = quantize_affine(x, s, zp, qmin, qmax, rounding=rounding)
    assert codes.min() >= qmin and codes.max() <= qmax
    assert torch.equal(dequantize_affine(codes, s, zp), y)
    again = fake_quantize_affine(y, s, zp, qmin, qmax, rounding=rounding)
    assert torch.allclose(again, y, rtol=0, atol=1e-6 * scale * max(abs(qmin), qmax))


def test_to_int_dequantizes_per_channel():
    x = torch.randn(3, 8)
    scale = torch.tensor([0.1, 0.02, 0.5])
    zp = torch.tensor([0, 5, -2], dtype=torch.int32)
    codes = quantize_affine(x, scale, zp, -128, 127, ch_axis=0)
    assert codes.dtype == torch.int8
    y = fake_quantize_affine(x, scale, zp, -128, 127, ch_axis=0)
    assert torch.equal(dequantize_affine(codes, scale, zp, ch_axis=0), y)


def test_int_dtype_choice():
    assert int_dtype(-128, 127) == torch.int8
    assert int_dtype(0, 255) == torch.uint8
    assert int_dtype(0, 65535) == torch.int32
    assert int_dtype(-32768, 32767) == torch.int16


def test_learnable_gradients_match_lsq_rule():
    # Esser et al. 2020, eq. 3: ds = round(x/s) - x/s inside; qmin or qmax outside.
    x = torch.tensor([0.26, -0.04, 5.0, -5.0])
    s = torch.tensor(0.1, requires_grad=True)
    z = torch.tensor(0.0, requires_grad=True)
    xr = x.clone().requires_grad_()
    y = fake_quantize_learnable(xr, s, z, -8, 7, grad_factor=0.5)
    assert torch.allclose(y.detach(), torch.tensor([0.3, 0.0, 0.7, -0.8]))
    y.sum().backward()
    inside = (3 - 2.6) + (0 - (-0.4))
    assert math.isclose(s.grad.item(), 0.5 * (inside + 7 - 8), rel_tol=1e-5)
    assert torch.equal(xr.grad, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # dz: 0 inside, -s outside (two elements outside).
    assert math.isclose(z.grad.item(), -2 * 0.1 * 0.5 * 0 - 2 * 0.1, rel_tol=1e-5)


def test_grad_scale():
    s = torch.tensor(3.0, requires_grad=True)
    y = grad_scale(s, 0.25)
    assert y.item() == 3.0
    y.backward()
    assert s.grad.item() == 0.25


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(quant_min=5, quant_max=5), ValueError, "smaller than quant_max"),
        (dict(quant_min=0.5, quant_max=5), TypeError, "must be ints"),
        (dict(ch_axis=3), ValueError, "ch_axis=3 is out of range"),
        (dict(rounding="up"), ValueError, "unknown rounding mode 'up'"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(quant_min=-8, quant_max=7, ch_axis=None, rounding="floor")
    args.update(kwargs)
    scale = torch.ones(4) if args["ch_axis"] is not None else torch.tensor(1.0)
    with pytest.raises(error, match=match):
        fake_quantize_affine(
            torch.randn(4, 4), scale, torch.zeros_like(scale, dtype=torch.int32), **args
        )


@pytest.mark.parametrize("ch_axis", [0, -1])
def test_per_channel_axis_of_a_scalar_is_a_value_error(ch_axis):
    with pytest.raises(ValueError, match=f"ch_axis={ch_axis} .* scalar .*ch_axis=None"):
        check_axis(torch.tensor(1.0), ch_axis)
    assert check_axis(torch.zeros(2, 3), -1) == 1 and check_axis(torch.zeros(()), None) is None


def test_integer_input_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        fake_quantize_affine(torch.arange(4), torch.tensor(1.0), torch.tensor(0), -8, 7)
