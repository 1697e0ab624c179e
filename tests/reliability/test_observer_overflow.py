"""Ranges near the largest float give a finite scale and finite outputs, or a clear error."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aquatic.functional import calculate_qparams
from aquatic.functional.qparams import calculate_qparams_float
from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver
from aquatic.quantizers import UniformQuantizer

LARGEST = {torch.float16: 65504.0, torch.float32: float(torch.finfo(torch.float32).max)}
OPTIONS = st.fixed_dictionaries(
    {
        "symmetric": st.booleans(),
        "ch_axis": st.sampled_from([None, 0]),
        "bits": st.sampled_from([4, 8]),
    }
)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@given(options=OPTIONS, fraction=st.floats(0.0, 1.0), low=st.floats(-1.0, 1.0))
@settings(max_examples=60, deadline=None)
def test_huge_ranges_quantize_finitely_or_raise(dtype, options, fraction, low):
    big = LARGEST[dtype] * fraction
    x = torch.tensor([[low * big], [big]], dtype=dtype)
    quantizer = UniformQuantizer(**options)
    try:
        out = quantizer(x)
    except ValueError as error:
        assert "too close to the largest" in str(error)
        return
    assert torch.isfinite(out).all()
    scale, _ = quantizer.observer.calculate_qparams()
    assert torch.isfinite(scale).all() and (scale > 0).all()


@pytest.mark.parametrize(
    "dtype, big, hint",
    [(torch.float16, 65504.0, r"input\.float\(\)"), (torch.float32, 3.4e38, "clip the input")],
)
@pytest.mark.parametrize("observer", [MinMaxObserver, MovingAverageMinMaxObserver])
def test_the_largest_values_are_a_clear_error(dtype, big, hint, observer):
    quantizer = UniformQuantizer(bits=8, symmetric=False, observer=observer)
    with pytest.raises(ValueError, match=f"observed values up to .*overflow to inf.*{hint}"):
        quantizer(torch.tensor([-big, big], dtype=dtype))
    per_channel = UniformQuantizer(bits=8, ch_axis=0, observer=observer)
    with pytest.raises(ValueError, match="too close to the largest"):
        per_channel(torch.tensor([[-big], [1.0]], dtype=dtype))


@pytest.mark.parametrize("low, high", [(-3e38, 3e38), (-3.4e38, 3.4e38), (-3.4e38, 1.0)])
def test_an_overflowing_span_still_gives_a_finite_scale(low, high):
    # max - min overflows float32; each end divided first does not
    lo, hi = torch.tensor(low), torch.tensor(high)
    scale, zero_point = calculate_qparams(lo, hi, -128, 127, False)
    assert torch.isfinite(scale) and scale > 0
    assert (scale.item(), zero_point.item()) == calculate_qparams_float(
        lo.item(), hi.item(), -128, 127, False
    )


def test_nan_is_still_reported_as_nan():
    with pytest.raises(ValueError, match="containing NaN or inf"):
        UniformQuantizer(bits=8)(torch.tensor([float("nan"), 1.0]))
    with pytest.raises(ValueError, match="containing NaN or inf"):
        UniformQuantizer(bits=8, ch_axis=0)(torch.tensor([[float("inf")], [1.0]]))


@pytest.mark.parametrize("ch_axis", [None, 0])
def test_plus_minus_3e38_quantizes_to_finite_values(ch_axis):
    # max - min = 6e38 overflowed float32 into an infinite scale and NaN outputs before
    x = torch.tensor([[-3e38], [3e38]])
    out = UniformQuantizer(bits=8, symmetric=False, ch_axis=ch_axis)(x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, x, rtol=1 / 127)
