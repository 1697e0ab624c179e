"""Integer requantization primitives against exact references in Python integers."""

from fractions import Fraction

import pytest
import torch

from aquatic.integer.requant import (
    bit_length,
    dyadic_exponent,
    is_power_of_two,
    multiply_shift,
    quantize_multiplier,
    round_to_float32,
    rounding_right_shift,
)


def _round_half_even(value: Fraction) -> int:
    floor = value.numerator // value.denominator
    rest = value - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        return floor + 1
    return floor


def _random_ints(generator, n, bits):
    magnitude = torch.randint(0, 2**bits, (n,), generator=generator, dtype=torch.int64)
    sign = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    return magnitude * sign


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
def test_rounding_right_shift_matches_exact_division(rounding):
    generator = torch.Generator().manual_seed(1)
    x = torch.cat([_random_ints(generator, 300, 40), torch.arange(-40, 41)])
    for shift in [0, 1, 2, 5, 17, 39, 62, 63, 80]:
        got = rounding_right_shift(x, shift, rounding).tolist()
        for value, result in zip(x.tolist(), got):
            exact = Fraction(value, 2**shift)
            want = _round_half_even(exact) if rounding == "nearest" else exact.__floor__()
            assert result == want, (value, shift)


def test_rounding_right_shift_ties_go_to_even_like_torch_round():
    x = torch.arange(-64, 65)
    got = rounding_right_shift(x, 3)
    assert torch.equal(got, torch.round(x.double() / 8).to(torch.int64))


def test_rounding_right_shift_per_element_shift_and_bad_shift():
    got = rounding_right_shift(torch.tensor([12, 12, 12]), torch.tensor([0, 2, 3]))
    assert got.tolist() == [12, 3, 2]  # 12, 3, 1.5 -> 2
    with pytest.raises(ValueError, match="shift"):
        rounding_right_shift(torch.tensor([1]), -1)
    with pytest.raises(ValueError, match="rounding"):
        rounding_right_shift(torch.tensor([1]), 1, "up")
    with pytest.raises(TypeError, match="integer"):
        rounding_right_shift(torch.tensor([1.0]), 1)


def test_round_to_float32_matches_float32_conversion():
    generator = torch.Generator().manual_seed(2)
    # Below 2**53 the float64 value is exact, and .float() rounds it as float32 does.
    x = torch.cat([_random_ints(generator, 2000, 52), _random_ints(generator, 200, 26)])
    want = x.double().float().double().to(torch.int64)
    assert torch.equal(round_to_float32(x), want)


def test_bit_length_matches_python():
    generator = torch.Generator().manual_seed(3)
    x = torch.cat(
        [_random_ints(generator, 500, 62), torch.tensor([0, 1, 2**53 - 1, 2**53, 2**62 - 1])]
    )
    assert bit_length(x).tolist() == [abs(v).bit_length() for v in x.tolist()]


def test_quantize_multiplier_powers_of_two_are_exact_shifts():
    ratio = torch.tensor([2.0**k for k in range(-40, 20)], dtype=torch.float64)
    multiplier, shift = quantize_multiplier(ratio)
    assert bool((multiplier == 1).all())
    assert shift.tolist() == [-k for k in range(-40, 20)]


def test_quantize_multiplier_and_multiply_shift_round_as_exact_arithmetic():
    generator = torch.Generator().manual_seed(4)
    ratio = torch.rand(50, generator=generator, dtype=torch.float64) * 3 + 1e-3
    multiplier, shift = quantize_multiplier(ratio)
    for r, m, n in zip(ratio.tolist(), multiplier.tolist(), shift.tolist()):
        approx = Fraction(m) / Fraction(2) ** n
        assert abs(approx / Fraction(r) - 1) < Fraction(1, 2**30)
    x = _random_ints(generator, 50, 30)
    got = multiply_shift(x, multiplier, shift).tolist()
    for value, m, n, result in zip(x.tolist(), multiplier.tolist(), shift.tolist(), got):
        assert result == _round_half_even(Fraction(value * m) / Fraction(2) ** n)


def test_quantize_multiplier_rejects_bad_ratios():
    with pytest.raises(ValueError, match="positive"):
        quantize_multiplier(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="precision"):
        quantize_multiplier(torch.tensor([0.5]), precision=40)


def test_multiply_shift_negative_shift_is_left_shift():
    assert multiply_shift(torch.tensor([3, -5]), 3, -2).tolist() == [36, -60]


def test_dyadic_exponent_and_power_of_two():
    assert dyadic_exponent(torch.tensor([0.375, 1.0])) == 3
    assert dyadic_exponent(torch.tensor([float(2**-30)])) == 30
    assert dyadic_exponent(torch.tensor([48.0])) == -4
    value = torch.tensor(0.3, dtype=torch.float32)
    k = dyadic_exponent(value)
    assert float(value) * 2**k == int(float(value) * 2**k)
    assert float(value) * 2 ** (k - 1) != int(float(value) * 2 ** (k - 1))
    assert is_power_of_two(torch.tensor([0.125, 8.0]))
    assert not is_power_of_two(torch.tensor([0.125, 0.3]))
    assert not is_power_of_two(torch.tensor([-0.5]))
