import pytest
import torch

from aquatic.functional import calculate_qparams, round_to_power_of_two
from aquatic.functional.qparams import calculate_qparams_float, to_float32


def test_symmetric_signed_maps_absmax_to_qmax():
    scale, zp = calculate_qparams(torch.tensor(-3.0), torch.tensor(1.0), -128, 127, True)
    assert torch.isclose(scale, torch.tensor(3.0 / 127))
    assert zp.item() == 0 and zp.dtype == torch.int32


def test_symmetric_unsigned_uses_positive_side():
    scale, zp = calculate_qparams(torch.tensor(-3.0), torch.tensor(2.55), 0, 255, True)
    assert torch.isclose(scale, torch.tensor(0.01))
    assert zp.item() == 0


def test_asymmetric_covers_min_and_max():
    lo, hi = torch.tensor(-1.0), torch.tensor(3.0)
    scale, zp = calculate_qparams(lo, hi, 0, 255, False)
    assert torch.isclose(scale, torch.tensor(4.0 / 255))
    # min maps to quant_min, max to quant_max (within rounding of the zero point).
    assert (torch.round(lo / scale) + zp).item() == 0
    assert abs((torch.round(hi / scale) + zp).item() - 255) <= 1


def test_range_always_includes_zero():
    scale, zp = calculate_qparams(torch.tensor(2.0), torch.tensor(4.0), 0, 255, False)
    assert zp.item() == 0 and torch.isclose(scale, torch.tensor(4.0 / 255))


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_and_constant_tensors_give_usable_scale(symmetric):
    for value in (0.0, 5.0, -5.0):
        v = torch.tensor(value)
        scale, zp = calculate_qparams(v, v, -128, 127, symmetric)
        assert scale.item() > 0 and torch.isfinite(scale)
        assert -128 <= zp.item() <= 127


def test_per_channel_shapes():
    scale, zp = calculate_qparams(-torch.arange(1.0, 4.0), torch.arange(1.0, 4.0), -8, 7, True)
    assert scale.shape == (3,) and zp.shape == (3,)
    assert torch.allclose(scale, torch.arange(1.0, 4.0) / 7)


def test_power_of_two_rounds_up():
    s = round_to_power_of_two(torch.tensor([0.3, 0.25, 0.26, 5.0]))
    assert s.tolist() == [0.5, 0.25, 0.5, 8.0]
    scale, _ = calculate_qparams(torch.tensor(-1.0), torch.tensor(1.0), -128, 127, True, True)
    assert scale.item() == 2.0**-6  # 1/127 = 0.00787 -> 1/64


RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 65535), (-127, 127), (0, 1)]


def test_scalar_qparams_equal_tensor_qparams():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(400, generator=generator) * torch.logspace(-6, 6, 400)
    specials = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 3.0, -3.0])
    values = torch.cat([values, specials])
    for i in range(0, len(values) - 1, 2):
        lo, hi = sorted(values[i : i + 2].tolist())
        lo, hi = to_float32(lo), to_float32(hi)
        for qmin, qmax in RANGES:
            for symmetric in (True, False):
                scale, zp = calculate_qparams(
                    torch.tensor(lo), torch.tensor(hi), qmin, qmax, symmetric
                )
                assert calculate_qparams_float(lo, hi, qmin, qmax, symmetric) == (
                    scale.item(),
                    zp.item(),
                )
