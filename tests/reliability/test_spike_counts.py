"""Spike counts with max_spikes > 1: one definition (floor(a / b) of grid values, as
spike_values states it) on the float path and on the integer path, over the whole range."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aquatic.functional.integer import spike_count
from aquatic.functional.surrogate import spike_values
from aquatic.integer.spiking import IntegerNeuron

MAX = st.sampled_from([2, 3, 7, 31, 1000, 2**20])


def integer_counts(v, threshold, max_spikes, emulate_float32=True):
    """The integer twin's count of membranes ``v`` (one step of an integrator)."""
    one, zero = torch.tensor(1), torch.tensor(0)
    neuron = IntegerNeuron(
        max_spikes=max_spikes,
        emulate_float32=emulate_float32,
        input_multiplier=one,
        input_shift=zero,
        mem_num=one,
        threshold=torch.as_tensor(threshold),
    )
    return neuron(v.reshape(-1, 1, 1)).flatten().to(torch.int64)


@settings(max_examples=400, deadline=None)
@given(
    a=st.lists(st.integers(-(2**22) + 1, 2**22 - 1), min_size=1, max_size=8),
    b=st.integers(1, 2**22 - 1),
    scale=st.floats(2**-30, 2**10, allow_subnormal=False),
    max_spikes=MAX,
)
def test_float_path_counts_integer_division_on_any_grid(a, b, scale, max_spikes):
    s = torch.tensor(scale, dtype=torch.float32)
    codes = torch.tensor(a)
    counts = spike_values(codes.float() * s, torch.tensor(float(b)) * s, max_spikes)
    assert torch.equal(counts.to(torch.int64), spike_count(codes, torch.tensor(b), max_spikes))


@settings(max_examples=400, deadline=None)
@given(
    a=st.lists(st.integers(-(2**23) + 1, 2**23 - 1), min_size=1, max_size=8),
    b=st.integers(1, 2**23 - 1),
    exponent=st.integers(-40, 40),
    max_spikes=MAX,
)
def test_float_path_counts_integer_division_on_power_of_two_grids(a, b, exponent, max_spikes):
    s = 2.0**exponent
    codes = torch.tensor(a)
    counts = spike_values(codes.float() * s, torch.tensor(float(b)) * s, max_spikes)
    assert torch.equal(counts.to(torch.int64), spike_count(codes, torch.tensor(b), max_spikes))


float32_integers = st.integers(-(2**40), 2**40).map(lambda n: int(torch.tensor(float(n)).item()))


@settings(max_examples=500, deadline=None)
@given(
    v=st.lists(float32_integers, min_size=1, max_size=8),
    threshold=st.integers(1, 2**24 - 1),
    exponent=st.integers(-30, 30),
    max_spikes=MAX,
)
def test_float_and_integer_paths_agree_over_the_whole_range(v, threshold, exponent, max_spikes):
    # exact mode: the float model holds v = N u, threshold = B u with u = 2**exponent
    # and N, B float32 values; the integer twin holds N and B
    u = 2.0**exponent
    v = torch.tensor(v)
    float_counts = spike_values(v.float() * u, torch.tensor(float(threshold)) * u, max_spikes)
    assert torch.equal(integer_counts(v, threshold, max_spikes), float_counts.to(torch.int64))


def test_the_reported_disagreement():
    # 13760255 steps against a threshold of 13760258 steps: below it, no spike
    a, b = 13760255, 13760258
    for s in (2.0**-10, 1.0):
        assert spike_values(torch.tensor(a * s), torch.tensor(b * s), 4).item() == 0
    assert integer_counts(torch.tensor([a]), b, 4).item() == 0
    assert spike_count(torch.tensor(a), torch.tensor(b), 4).item() == 0


def test_a_rounded_grid_still_counts_integer_division():
    # 771 s / 257 s is 2.9999998 in float32 with s = 0.0123: three spikes all the same
    s = torch.tensor(0.0123)
    assert spike_values(771 * s, 257 * s, max_spikes=31).item() == 3.0


@pytest.mark.parametrize(
    "dtype, bits", [(torch.float16, 11), (torch.bfloat16, 8), (torch.float64, 53)]
)
def test_other_dtypes_count_integer_division_on_their_grids(dtype, bits):
    # exact below 2**(bits - 2) grid steps, bits the significand's (24 for float32)
    limit = min(2 ** (bits - 2), 2**40)
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-limit + 1, limit, (20000,), generator=generator)
    b = (
        torch.randint(1, limit, (20000,), generator=generator)
        // torch.randint(1, 9, (20000,), generator=generator)
        + 1
    )
    s = torch.tensor(0.37, dtype=dtype)
    counts = spike_values(a.to(dtype) * s, b.to(dtype) * s, 7)
    assert torch.equal(counts.to(torch.int64), spike_count(a, b, 7))
