"""Quantizers that skip the clamp when no code can clip give torch's bits and gradients."""

import pytest
import torch

from aquatic.functional import fake_quantize_nearest
from aquatic.functional.fake_quant_uniform import fake_quantize_uniform
from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver
from aquatic.quantizers import UniformQuantizer


def bits(t):
    return t.float().view(torch.int32)


def torch_fake_quant(x, quantizer):
    """torch's kernel with the quantizer's current scale and zero point."""
    scale, zero_point = quantizer.calculate_qparams()
    zero_point = zero_point.to(torch.int32)
    if quantizer.ch_axis is None:
        return torch.fake_quantize_per_tensor_affine(
            x, scale, zero_point, quantizer.quant_min, quantizer.quant_max
        )
    return torch.fake_quantize_per_channel_affine(
        x, scale, zero_point, quantizer.ch_axis, quantizer.quant_min, quantizer.quant_max
    )


def hard_batch(generator, shape, step):
    """Random weights, with ties (k + 0.5) s of the batch's own scale, signed zeros and
    the extremes themselves: the values where a clamp could matter."""
    x = torch.randn(shape, generator=generator) * (0.5 + 0.2 * step)
    flat = x.view(-1)
    amax = flat.abs().max()
    k = torch.randint(-127, 127, (flat.numel() // 4,), generator=generator).float()
    flat[: k.numel()] = (k + 0.5) * (amax / 127)
    flat[k.numel()] = -0.0
    flat[k.numel() + 1] = -amax
    flat[k.numel() + 2] = amax
    return x


@pytest.mark.parametrize("ch_axis", [None, 0, 1])
@pytest.mark.parametrize(
    "bits_,narrow", [(8, False), (8, True), (4, True), (3, False), (16, False)]
)
@pytest.mark.parametrize("shape", [(6, 50), (300, 300)])
def test_min_max_symmetric_quantizer_equals_torch_over_training_steps(
    ch_axis, bits_, narrow, shape
):
    generator = torch.Generator().manual_seed(bits_ + 3 * (ch_axis or 0) + shape[0])
    q = UniformQuantizer(
        bits=bits_, signed=True, symmetric=True, narrow_range=narrow, ch_axis=ch_axis
    )
    for step in range(4):
        x = hard_batch(generator, shape, step)
        xq, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = q(xq)
        expected = torch_fake_quant(xt, q)
        assert torch.equal(bits(y), bits(expected))  # +0.0 where torch has +0.0
        grad = torch.randn(shape, generator=generator)
        y.backward(grad)
        expected.backward(grad)
        assert torch.equal(xq.grad, xt.grad)


def test_moving_average_range_still_clamps():
    q = UniformQuantizer(
        bits=8, observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.01)
    )
    q(torch.linspace(-1, 1, 50))
    x = torch.linspace(-5, 5, 50, requires_grad=True)  # well beyond the averaged range
    y = q(x)
    expected = torch_fake_quant(x.detach(), q)
    assert torch.equal(bits(y), bits(expected))
    scale = q.calculate_qparams()[0]
    assert y.max() <= 127 * scale
    y.sum().backward()
    assert x.grad.min() == 0  # clipped codes get no gradient


class _NarrowingMinMax(MinMaxObserver):
    """Keeps only the last batch, yet inherits MinMaxObserver."""

    def _combine(self, cur_min, cur_max):
        return cur_min, cur_max


class _ClippedMinMax(MinMaxObserver):
    """A MinMaxObserver whose scale covers half the range: codes clip."""

    def calculate_qparams(self):
        scale, zero_point = super().calculate_qparams()
        return scale / 2, zero_point


def test_covers_last_batch_is_decided_by_the_class_that_defines_the_rules():
    assert MinMaxObserver().covers_last_batch()
    assert not MovingAverageMinMaxObserver().covers_last_batch()
    assert not _NarrowingMinMax().covers_last_batch()
    assert not _ClippedMinMax().covers_last_batch()


def test_a_subclass_that_shrinks_the_scale_still_gets_the_clamp():
    q = UniformQuantizer(bits=8, observer=_ClippedMinMax)
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    y = q(x)
    scale = q.calculate_qparams()[0]
    reference = torch.clamp(torch.round(x.detach() * (1 / scale)), -128, 127) * scale
    assert torch.equal(y.detach(), reference)
    y.sum().backward()
    assert x.grad.min() == 0


@pytest.mark.parametrize("ch_axis", [None, 0])
def test_in_range_promise_gives_the_checked_result(ch_axis):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(8, 40, generator=generator)
    if ch_axis is None:
        scale = x.abs().max() / 127
        scales = (scale, scale.item())
    else:
        scales = (x.abs().amax(dim=1) / 127,)
    for scale in scales:
        checked = fake_quantize_uniform(x, scale, None, -128, 127, ch_axis)
        promised = fake_quantize_uniform(x, scale, None, -128, 127, ch_axis, in_range=True)
        assert torch.equal(bits(promised), bits(checked))


@pytest.mark.parametrize("ch_axis", [0, 1])
def test_symmetric_per_channel_kernel_gives_positive_zeros(ch_axis):
    generator = torch.Generator().manual_seed(ch_axis)
    x = torch.randn(5, 7, generator=generator) * 0.01
    x[0, 0], x[1, 1] = -0.0, -1e-9
    scale = torch.rand(x.shape[ch_axis], generator=generator) * 0.05 + 0.01
    expected = torch.fake_quantize_per_channel_affine(
        x, scale, torch.zeros_like(scale, dtype=torch.int32), ch_axis, -128, 127
    )
    for clips in (True, False):
        y = fake_quantize_nearest(x, scale, None, -128, 127, ch_axis, clips)
        assert torch.equal(bits(y), bits(expected))
