"""The vectorised nearest-rounding kernels give torch's bits, values and gradients."""

import pytest
import torch

from aquatic.functional import fake_quantize_nearest, fake_quantize_nearest_scalar

RANGES = [(-128, 127, 0), (0, 255, 37), (-8, 7, 3), (0, 65535, 100), (-127, 127, 0), (0, 1, 0)]


def bits(t):
    return t.view(torch.int64) if t.dtype == torch.float64 else t.float().view(torch.int32)


def hard_inputs(scale, n=64, dtype=torch.float32):
    """Ties (k + 0.5) s, grid points k s, out-of-range values, signed zeros."""
    k = torch.randint(-300, 300, (n,)).double()
    x = torch.cat([(k + 0.5) * scale, k * scale, torch.randn(n).double() * 300 * scale])
    x[:2] = torch.tensor([-0.0, -1e-9])
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("qmin,qmax,zp", RANGES)
def test_per_tensor_equals_torch_bit_for_bit(dtype, qmin, qmax, zp):
    for _ in range(5):
        scale = torch.rand(()) * 0.1 + 1e-4
        x = hard_inputs(scale.double(), dtype=dtype)
        codes = torch.round(x.float() * torch.reciprocal(scale)) + zp
        inside = x[(codes >= qmin) & (codes <= qmax)]
        for data, clips in ((x, True), (inside, False)):
            xt = data.clone().requires_grad_()
            expected = torch.fake_quantize_per_tensor_affine(
                xt, scale, torch.tensor(zp, dtype=torch.int32), qmin, qmax
            )
            grad = torch.randn(data.shape, dtype=dtype)
            expected.backward(grad)
            zero_point = None if zp == 0 else torch.tensor(zp, dtype=torch.int32)
            for compute in (
                lambda t: fake_quantize_nearest(t, scale, zero_point, qmin, qmax, None, clips),
                lambda t: fake_quantize_nearest_scalar(t, scale.item(), zp, qmin, qmax, clips),
            ):
                xa = data.clone().requires_grad_()
                y = compute(xa)
                y.backward(grad)
                assert y.dtype == dtype
                assert torch.equal(bits(y), bits(expected))  # +0.0 where torch has +0.0
                assert torch.equal(xa.grad, xt.grad)


@pytest.mark.parametrize("ch_axis", [0, 1])
def test_per_channel_equals_torch(ch_axis):
    x = torch.randn(4, 6, 5) * 3
    scale = torch.rand(x.shape[ch_axis]) * 0.05 + 1e-3
    zp = torch.randint(-3, 4, scale.shape, dtype=torch.int32)
    xt, xa = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = torch.fake_quantize_per_channel_affine(xt, scale, zp, ch_axis, -8, 7)
    y = fake_quantize_nearest(xa, scale, zp, -8, 7, ch_axis)
    assert torch.equal(bits(y), bits(expected))
    g = torch.randn_like(y)
    expected.backward(g)
    y.backward(g)
    assert torch.equal(xa.grad, xt.grad)


def test_large_tensors_take_the_autograd_function_path_with_the_same_result():
    x = torch.randn(300, 300)
    scale = torch.tensor(0.01)
    xt, xa = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = torch.fake_quantize_per_tensor_affine(xt, scale, torch.tensor(0), -128, 127)
    y = fake_quantize_nearest(xa, scale, None, -128, 127)
    assert "FakeQuantize" in type(y.grad_fn).__name__
    assert torch.equal(bits(y), bits(expected))
    y.sum().backward()
    expected.sum().backward()
    assert torch.equal(xa.grad, xt.grad)
