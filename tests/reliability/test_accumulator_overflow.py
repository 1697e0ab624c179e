"""Integer accumulators (IntegerLinear, IntegerConv) never wrap silently: with
check_overflow every value beyond int32 (either sign) and every input for which the int64
accumulation could wrap raises; without it, the documented int32 wrap of the exact sum."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aquatic.integer import IntegerOverflowError
from aquatic.integer.layers import IntegerConv, IntegerLinear

INT32 = (-(2**31), 2**31 - 1)


def exact_linear(weight, bias, x, zero_point, shift):
    """The accumulator in Python integers (no overflow possible)."""
    rows = []
    for sample in x.tolist():
        row = []
        for j, w in enumerate(weight.tolist()):
            acc = sum(wk * (xk - zero_point) for wk, xk in zip(w, sample)) << shift
            row.append(acc + (0 if bias is None else bias.tolist()[j]))
        rows.append(row)
    return rows


def wrap32(value):
    return (value + 2**31) % 2**32 - 2**31


def bound_of(weight, bias, x, zero_point, shift):
    magnitude = max(abs(v - zero_point) for v in x.flatten().tolist())
    rows = max(sum(abs(v) for v in w) for w in weight.tolist())
    return rows * magnitude * 2**shift + (0 if bias is None else max(map(abs, bias.tolist())))


bits = st.integers(0, 62)


@st.composite
def linear_case(draw):
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    w_bits, x_bits = draw(bits), draw(bits)
    ints = lambda b: st.integers(-(2**b), 2**b)  # noqa: E731
    weight = torch.tensor(
        draw(
            st.lists(
                st.lists(ints(w_bits), min_size=n_in, max_size=n_in), min_size=n_out, max_size=n_out
            )
        )
    )
    x = torch.tensor(
        draw(st.lists(st.lists(ints(x_bits), min_size=n_in, max_size=n_in), min_size=1, max_size=3))
    )
    bias = draw(
        st.none() | st.lists(ints(draw(st.integers(0, 40))), min_size=n_out, max_size=n_out)
    )
    bias = None if bias is None else torch.tensor(bias)
    zero_point = draw(st.integers(-128, 127))
    shift = draw(st.integers(0, 8))
    return weight, bias, x, zero_point, shift


@settings(max_examples=300, deadline=None)
@given(case=linear_case())
def test_check_overflow_catches_every_wrap(case):
    weight, bias, x, zero_point, shift = case
    layer = IntegerLinear(weight, bias, zero_point, shift, check_overflow=True)
    exact = exact_linear(weight, bias, x, zero_point, shift)
    fits = all(INT32[0] <= v <= INT32[1] for row in exact for v in row)
    bound = bound_of(weight, bias, x, zero_point, shift)
    if fits and bound < 2**62:
        assert layer(x).tolist() == exact
    elif not fits:
        with pytest.raises(IntegerOverflowError, match="beyond int"):
            layer(x)
    else:  # fits, but the int64 sum could have wrapped on the way: refused or exact
        try:
            assert layer(x).tolist() == exact
        except IntegerOverflowError as error:
            assert "beyond int64" in str(error)


@settings(max_examples=200, deadline=None)
@given(case=linear_case())
def test_without_check_overflow_the_exact_sum_wraps_to_int32(case):
    weight, bias, x, zero_point, shift = case
    if bound_of(weight, bias, x, zero_point, shift) >= 2**63:
        return  # beyond int64: outside what the unchecked layer promises
    layer = IntegerLinear(weight, bias, zero_point, shift)
    exact = exact_linear(weight, bias, x, zero_point, shift)
    assert layer(x).tolist() == [[wrap32(v) for v in row] for row in exact]


@pytest.mark.parametrize("value, sign", [(2**31, "2147483648"), (-(2**31) - 1, "-2147483649")])
def test_both_directions_are_checked(value, sign):
    layer = IntegerLinear(torch.tensor([[1]]), check_overflow=True)
    with pytest.raises(
        IntegerOverflowError,
        match=rf"layer '' \(IntegerLinear\): the accumulator reached {sign}, beyond int32",
    ):
        layer(torch.tensor([[value]]))
    assert layer(torch.tensor([[-(2**31)]])).item() == -(2**31)  # int32's own minimum fits


def test_an_int64_wrap_is_refused_before_the_products():
    # 2**62 * 4 wraps int64 to 0: a check on the result alone would pass it as 0
    layer = IntegerLinear(torch.tensor([[4]]), check_overflow=True)
    with pytest.raises(IntegerOverflowError, match="beyond int64, where the accumulation"):
        layer(torch.tensor([[2**62]]))


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    x_bits=st.integers(0, 40),
    transposed=st.booleans(),
    groups=st.sampled_from([1, 2]),
)
def test_convolutions_check_as_linear_layers_do(seed, x_bits, transposed, groups):
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 2 // groups, 3)  # (out, in / groups, k), or (in, out / groups, k) transposed
    weight = torch.randint(-(2**20), 2**20, shape, generator=generator)
    x = torch.randint(-(2**x_bits), 2**x_bits + 1, (1, 2, 5), generator=generator)
    conv = IntegerConv(weight, dim=1, transposed=transposed, groups=groups, check_overflow=True)
    fn = torch.nn.functional.conv_transpose1d if transposed else torch.nn.functional.conv1d
    # float64 holds these sums exactly (below 2**53 for x_bits <= 30)
    exact = fn(x.double(), weight.double(), groups=groups)
    if float(exact.abs().max()) <= 2**31 - 1 and x_bits <= 30:
        assert torch.equal(conv(x).double(), exact)
    elif x_bits <= 30:
        with pytest.raises(IntegerOverflowError, match="beyond int32"):
            conv(x)
    else:
        with pytest.raises(IntegerOverflowError, match="beyond int"):
            conv(x)
