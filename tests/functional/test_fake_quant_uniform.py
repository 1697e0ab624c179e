"""fake_quantize_uniform picks a kernel; every choice gives fake_quantize_affine's bits."""

import pytest
import torch

from aquatic.functional import fake_quantize_affine, fake_quantize_uniform


def bits(t):
    return t.view(torch.int64) if t.dtype == torch.float64 else t.float().view(torch.int32)


def check_equal(compute, x, scale, zero_point, qmin, qmax, ch_axis=None, rounding="nearest"):
    """``compute(x)`` against fake_quantize_affine: values (bits) and gradients."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = compute(xa)
    yb = fake_quantize_affine(xb, scale, zero_point, qmin, qmax, ch_axis, rounding)
    assert ya.dtype == x.dtype
    assert torch.equal(bits(ya), bits(yb))
    grad = torch.randn(x.shape, dtype=x.dtype)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(xa.grad, xb.grad)


@pytest.mark.parametrize("zp", [0, 5])
@pytest.mark.parametrize("factor", [0.5, 4.0])  # nothing clips, then much clips
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_per_tensor_tensor_or_float_scale_with_or_without_extrema(zp, factor, dtype):
    x = (torch.randn(40, 30) * factor).to(dtype)
    scale, zero_point = torch.tensor(4.0 / 127), torch.tensor(zp, dtype=torch.int32)
    low, high = torch.aminmax(x.float())
    for extrema in (None, (low, high)):
        check_equal(
            lambda t: fake_quantize_uniform(t, scale, zero_point, -128, 127, extrema=extrema),
            x,
            scale,
            zero_point,
            -128,
            127,
        )
    for extrema in (None, (low.item(), high.item())):
        check_equal(
            lambda t: fake_quantize_uniform(t, scale.item(), zp, -128, 127, extrema=extrema),
            x,
            scale,
            zero_point,
            -128,
            127,
        )


def test_zero_point_none_means_zero():
    x = torch.randn(50) * 3
    scale, zero = torch.tensor(0.02), torch.tensor(0, dtype=torch.int32)
    check_equal(
        lambda t: fake_quantize_uniform(t, scale, None, -128, 127), x, scale, zero, -128, 127
    )
    check_equal(
        lambda t: fake_quantize_uniform(t, 0.02, None, -128, 127), x, scale, zero, -128, 127
    )


@pytest.mark.parametrize("ch_axis", [0, -1])
def test_per_channel_with_extrema(ch_axis):
    x = torch.randn(4, 6) * 2
    axis = ch_axis % x.dim()
    scale = torch.rand(x.shape[axis]) * 0.05 + 0.01
    zp = torch.randint(-3, 4, scale.shape, dtype=torch.int32)
    dims = tuple(d for d in range(x.dim()) if d != axis)
    extrema = (x.amin(dims), x.amax(dims))
    for given in (None, extrema):
        check_equal(
            lambda t: fake_quantize_uniform(t, scale, zp, -8, 7, ch_axis, extrema=given),
            x,
            scale,
            zp,
            -8,
            7,
            ch_axis,
        )


def test_extrema_that_show_no_clip_skip_the_mask():
    x = torch.randn(100)
    scale = torch.tensor(0.05)
    inside = fake_quantize_uniform(
        x.clone().requires_grad_(), scale, None, -128, 127, extrema=torch.aminmax(x)
    )
    masked = fake_quantize_uniform(x.clone().requires_grad_(), scale, None, -128, 127)
    assert torch.equal(inside, masked)
    # the in-range path carries the gradient through a clone, not a mask multiplication
    assert type(inside.grad_fn).__name__ != type(masked.grad_fn).__name__


@pytest.mark.parametrize("rounding", ["floor", "stochastic"])
def test_other_roundings_are_fake_quantize_affine(rounding):
    x = torch.randn(64) * 3
    scale, zero = torch.tensor(0.05), torch.tensor(0, dtype=torch.int32)
    for scale_arg in (scale, 0.05):
        torch.manual_seed(0)
        y = fake_quantize_uniform(x, scale_arg, None, -16, 15, rounding=rounding)
        torch.manual_seed(0)
        expected = fake_quantize_affine(x, scale, zero, -16, 15, rounding=rounding)
        assert torch.equal(y, expected)


def test_bad_arguments_are_named():
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="floating-point"):
        fake_quantize_uniform(torch.arange(3), 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match="quant_min"):
        fake_quantize_uniform(x, 0.1, 0, 5, 5)
    with pytest.raises(ValueError, match="ch_axis=0 was given"):
        fake_quantize_uniform(x, 0.1, 0, -128, 127, ch_axis=0)
    with pytest.raises(ValueError, match="ch_axis=2 is out of range"):
        fake_quantize_uniform(x, torch.full((4,), 0.1), None, -128, 127, ch_axis=2)
    with pytest.raises(ValueError, match="rounding"):
        fake_quantize_uniform(x, 0.1, 0, -128, 127, rounding="up")
