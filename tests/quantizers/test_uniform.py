import copy
import io
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver
from aquatic.quantizers import FixedPointQuantizer, UniformQuantizer


def reference(x, scale, zp, qmin, qmax):
    q = torch.clamp(torch.round(x * (1.0 / scale)) + zp, qmin, qmax)
    return (q - zp) * scale


@pytest.mark.parametrize(
    "bits,signed,narrow,expected",
    [
        (8, True, False, (-128, 127)),
        (8, True, True, (-127, 127)),
        (4, False, False, (0, 15)),
        (16, True, False, (-32768, 32767)),
        (1, False, False, (0, 1)),
        (2, True, False, (-2, 1)),
    ],
)
def test_ranges(bits, signed, narrow, expected):
    q = UniformQuantizer(bits=bits, signed=signed, narrow_range=narrow)
    assert (q.quant_min, q.quant_max) == expected


def test_observer_driven_symmetric_matches_reference_and_torch():
    q = UniformQuantizer(bits=8)
    x = (torch.randn(64) * 2).requires_grad_()
    y = q(x)
    scale = x.detach().abs().max() / 127
    assert torch.equal(y.detach(), reference(x.detach(), scale, 0, -128, 127))
    xt = x.detach().clone().requires_grad_()
    yt = torch.fake_quantize_per_tensor_affine(
        xt, scale, torch.tensor(0, dtype=torch.int32), -128, 127
    )
    assert torch.equal(y, yt)
    y.backward(torch.ones_like(y))
    yt.backward(torch.ones_like(yt))
    assert torch.equal(x.grad, xt.grad)


def test_asymmetric_unsigned_per_channel():
    q = UniformQuantizer(bits=4, signed=False, symmetric=False, ch_axis=0)
    x = torch.randn(3, 10)
    y = q(x)
    p = q.qparams()
    assert p["scale"].shape == (3,) and p["ch_axis"] == 0
    lo = x.amin(1).clamp(max=0)
    hi = x.amax(1).clamp(min=0)
    assert torch.allclose(p["scale"], (hi - lo) / 15)
    expected = reference(x, p["scale"][:, None], p["zero_point"][:, None], 0, 15)
    assert torch.allclose(y, expected, atol=1e-6)


def test_fixed_scale_has_no_observer_and_is_exact():
    q = UniformQuantizer(bits=4, signed=True, scale=0.25, zero_point=1)
    x = torch.tensor([-3.0, -0.1, 0.13, 0.5, 10.0])
    assert q.observer is None
    assert torch.equal(q(x), reference(x, torch.tensor(0.25), 1, -8, 7))


@given(
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=30),
    st.integers(2, 16),
    st.booleans(),
    st.booleans(),
)
def test_properties(values, bits, signed, symmetric):
    q = UniformQuantizer(bits=bits, signed=signed, symmetric=symmetric)
    x = torch.tensor(values)
    y = q(x)
    p = q.qparams()
    codes = q.to_int(x)
    assert codes.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32)
    assert codes.min() >= p["quant_min"] and codes.max() <= p["quant_max"]
    # on the grid: y / s - z is integral
    grid = y / p["scale"] + p["zero_point"]
    assert torch.allclose(grid, torch.round(grid), atol=1e-3)
    # to_int dequantizes back to forward's output, bit for bit
    assert torch.equal((codes.long() - p["zero_point"]).float() * p["scale"], y)
    # idempotent with the range frozen
    q.eval()
    assert torch.allclose(q(y), y, atol=float(p["scale"]) * 1e-4)


def test_power_of_two_scale():
    q = UniformQuantizer(bits=8, power_of_two=True)
    q(torch.tensor([-3.0, 1.0]))
    scale = q.qparams()["scale"].item()
    assert scale == 2.0**-5  # 3/127 = 0.0236 -> 1/32
    with pytest.raises(ValueError, match="not a power of two"):
        UniformQuantizer(scale=0.3, power_of_two=True)


def test_fixed_point():
    q = FixedPointQuantizer(int_bits=3, frac_bits=4)
    assert q.bits == 8 and (q.quant_min, q.quant_max) == (-128, 127)
    x = torch.tensor([-9.0, 0.03, 1.26, 7.99])
    assert torch.equal(q(x), torch.tensor([-8.0, 0.0, 1.25, 7.9375]))
    assert "Q3.4" in repr(q)
    unsigned = FixedPointQuantizer(int_bits=0, frac_bits=8, signed=False)
    assert unsigned.quant_max == 255 and unsigned(torch.tensor([0.5]))[0] == 0.5


def test_observer_updates_in_training_not_eval():
    q = UniformQuantizer()
    q.eval()
    q(torch.tensor([1.0]))  # first use fills the empty range even in eval
    q(torch.tensor([5.0]))
    assert q.observer.max_val.item() == 1.0
    q.train()
    q(torch.tensor([5.0]))
    assert q.observer.max_val.item() == 5.0


def test_switches():
    q = UniformQuantizer(bits=2, scale=1.0)
    q.fake_quant_enabled = False
    x = torch.tensor([0.3])
    assert torch.equal(q(x), x)
    assert "fake_quant_enabled=False" in repr(q)


def test_custom_observer_factory():
    q = UniformQuantizer(observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.5))
    assert isinstance(q.observer, MovingAverageMinMaxObserver)
    assert q.observer.averaging_constant == 0.5 and q.observer.quant_min == -128


@pytest.mark.parametrize("ch_axis", [None, 1])
def test_state_dict_deepcopy_pickle(ch_axis):
    q = UniformQuantizer(bits=6, ch_axis=ch_axis)
    x = torch.randn(4, 3)
    y = q(x)
    fresh = UniformQuantizer(bits=6, ch_axis=ch_axis)
    fresh.load_state_dict(q.state_dict())
    fresh.eval()
    assert torch.equal(fresh(x), y)
    for clone in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        clone.eval()
        assert torch.equal(clone(x), y)
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    assert buffer.tell() > 0


def test_repr_is_readable():
    text = repr(UniformQuantizer(bits=4, scale=0.5))
    assert "bits=4" in text and "scale=0.5" in text


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(bits=0), ValueError, "bits=0"),
        (dict(bits=17), ValueError, "bits=17"),
        (dict(bits=4.0), TypeError, "bits must be an int"),
        (dict(quant_min=10, quant_max=2), ValueError, "smaller than quant_max"),
        (dict(quant_min=0), ValueError, "both quant_min and quant_max"),
        (dict(scale=0.0), ValueError, "positive"),
        (dict(scale=-1.0), ValueError, "positive"),
        (dict(scale=1.0, zero_point=300), ValueError, "outside the integer range"),
        (dict(scale=1.0, zero_point=0.5), ValueError, "integers"),
        (dict(zero_point=3), ValueError, "without scale"),
        (dict(rounding="ceil"), ValueError, "unknown rounding mode 'ceil'"),
        (dict(ch_axis="0"), TypeError, "ch_axis"),
        (dict(scale=[0.1, 0.2]), ValueError, "ch_axis="),
        (dict(bits=1, signed=True), ValueError, "signed 1-bit"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        UniformQuantizer(**kwargs)


def test_bad_forward_input():
    q = UniformQuantizer()
    with pytest.raises(TypeError, match="floating-point"):
        q(torch.arange(3))
    with pytest.raises(ValueError, match="ch_axis=2 is out of range"):
        UniformQuantizer(ch_axis=2)(torch.randn(3, 3))


def bits(t):
    return t.float().view(torch.int32)


@pytest.mark.parametrize(
    "factory",
    [
        UniformQuantizer.with_args(bits=8),
        UniformQuantizer.with_args(bits=8, signed=False, symmetric=False),
        UniformQuantizer.with_args(
            bits=4,
            symmetric=False,
            observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.3),
        ),
        UniformQuantizer.with_args(bits=6, narrow_range=True, observer=MinMaxObserver),
        UniformQuantizer.with_args(
            observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.7)
        ),
        UniformQuantizer.with_args(
            observer=MovingAverageMinMaxObserver.with_args(averaging_constant=1.0)
        ),
    ],
)
def test_scalar_path_equals_tensor_path(factory):
    """The per-tensor CPU path (Python floats) gives the tensor path's bits and state."""
    fast, general = factory(), factory()
    assert fast.observer.supports_scalars(torch.zeros(1))
    general.observer.supports_scalars = lambda input: False
    generator = torch.Generator().manual_seed(1)
    for step in range(12):
        if step == 8:
            fast.eval(), general.eval()
        if step == 10:
            fast.observer_enabled = general.observer_enabled = False
        x = torch.randn(32, 9, generator=generator) * (1 + step % 4)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fast(xa), general(xb)
        assert torch.equal(bits(ya), bits(yb))
        g = torch.randn(x.shape, generator=generator)
        ya.backward(g)
        yb.backward(g)
        assert torch.equal(xa.grad, xb.grad)
        for name in ("min_val", "max_val"):
            assert torch.equal(getattr(fast.observer, name), getattr(general.observer, name))


def test_scalar_path_rejects_non_finite_input_and_keeps_range():
    quantizer = UniformQuantizer()
    quantizer(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantizer(torch.tensor([0.0, float("nan")]))
    assert quantizer.observer.max_val.item() == 1.0


def test_moving_average_of_one_keeps_the_last_batch_exactly():
    for scalar in (True, False):
        observer = MovingAverageMinMaxObserver(averaging_constant=1.0)
        quantizer = UniformQuantizer(observer=lambda **kw: observer)
        if not scalar:
            observer.supports_scalars = lambda input: False
        quantizer(torch.tensor([-1e8, 1e8]))
        quantizer(torch.tensor([-1.0, 3.0]))
        assert (observer.min_val.item(), observer.max_val.item()) == (-1.0, 3.0)


def test_frozen_range_on_a_large_tensor_gives_the_tensor_paths_bits():
    """A frozen range gives no batch extrema; a large input finds its own (one pass)."""
    fast, general = UniformQuantizer(), UniformQuantizer()
    general.observer.supports_scalars = lambda input: False
    x = torch.randn(64, 80)
    fast(x), general(x)
    fast.eval(), general.eval()
    for scale in (0.5, 3.0):  # no code clips, then many clip
        xa, xb = (x * scale).requires_grad_(), (x * scale).requires_grad_()
        ya, yb = fast(xa), general(xb)
        assert torch.equal(bits(ya), bits(yb))
        ya.sum().backward(), yb.sum().backward()
        assert torch.equal(xa.grad, xb.grad)
