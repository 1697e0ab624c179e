"""Integer helpers against scalar references written from the chips' descriptions."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aquatic.functional.integer import (
    bitshift_decay,
    bitshift_decrement,
    int_range,
    multiplicative_decay,
    saturate,
    saturating_add,
    shift_right_toward_zero,
)

ints = st.lists(st.integers(-(2**30), 2**30), min_size=1, max_size=25)


def decrement_reference(x, dash):
    # xylosim: x >> dash (Python's >> also rounds toward -inf), at least 1 toward zero
    shifted = x >> dash
    if shifted == 0 and x != 0:
        return 1 if x > 0 else -1
    return shifted


@given(ints, st.integers(0, 31))
def test_bitshift_decrement_and_decay(values, dash):
    x = torch.tensor(values)
    expected = [decrement_reference(v, dash) for v in values]
    assert bitshift_decrement(x, dash).tolist() == expected
    assert bitshift_decay(x, dash).tolist() == [v - e for v, e in zip(values, expected)]
    # the same in int32, and with a tensor of shifts
    x32 = x.to(torch.int32)
    assert bitshift_decay(x32, torch.tensor(dash, dtype=torch.int32)).tolist() == [
        v - e for v, e in zip(values, expected)
    ]


@given(ints, st.integers(0, 4096))
def test_multiplicative_decay_rounds_toward_zero(values, d):
    def reference(x):
        product = x * (4096 - d)
        return product // 4096 if product >= 0 else -((-product) // 4096)

    assert multiplicative_decay(torch.tensor(values), d).tolist() == [reference(v) for v in values]


def test_never_overshoots_zero_and_zero_stays():
    x = torch.arange(-40, 41)
    for dash in range(16):
        y = bitshift_decay(x, dash)
        assert torch.all(y.abs() <= x.abs()) and torch.all(y * x >= 0)
        assert bitshift_decay(torch.tensor([0]), dash).item() == 0


def test_saturation_and_shifts():
    assert int_range(24) == (-(2**23), 2**23 - 1)
    assert saturate(torch.tensor([-(2**20), 3, 2**20]), 16).tolist() == [-32768, 3, 32767]
    total = saturating_add(torch.tensor([32767], dtype=torch.int16), torch.tensor([32767]), 16)
    assert total.tolist() == [32767] and total.dtype == torch.int16
    assert shift_right_toward_zero(torch.tensor([-7, -1, 7]), 2).tolist() == [-1, 0, 1]
    with pytest.raises(TypeError, match="integer tensor"):
        bitshift_decay(torch.tensor([1.0]), 1)
    with pytest.raises(ValueError, match="bits must be an int in 2..63"):
        saturate(torch.tensor([1]), 1)
