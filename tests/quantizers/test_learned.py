import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aquatic import freeze_observers
from aquatic.quantizers import LSQPlusQuantizer, LSQQuantizer, PACTQuantizer

finite = st.floats(-100, 100, allow_nan=False, width=32)
values = st.lists(finite, min_size=1, max_size=40).map(torch.tensor)


def lsq_reference(x, s, z, qmin, qmax, g, upstream):
    """Forward and hand-derived gradients of LSQ / LSQ+ (Esser et al. eq. 1-3).

    ``s`` and ``z`` broadcast against ``x``; ``z`` is already an integer. Returns the
    output, d/dx, and the per-element contributions to d/ds and d/dz (sum them per scale).
    """
    # x * (1/s), as torch's fake-quantize kernels and aquatic compute x / s.
    v = x * (1.0 / s)
    shifted = v + z
    inside = (shifted >= qmin) & (shifted <= qmax)
    out = (torch.clamp(torch.round(shifted), qmin, qmax) - z) * s
    dx = torch.where(inside, upstream, torch.zeros_like(x))
    ds_inside = torch.round(shifted) - z - v
    ds_outside = torch.where(shifted < qmin, qmin - z, qmax - z)
    ds = g * upstream * torch.where(inside, ds_inside, ds_outside)
    dz = g * upstream * torch.where(inside, torch.zeros_like(x), -s * torch.ones_like(x))
    return out, dx, ds, dz


# --- LSQ ----------------------------------------------------------------------------


@given(values, st.integers(2, 8), st.booleans())
def test_lsq_init_forward_and_gradients_match_reference(x, bits, signed):
    q = LSQQuantizer(bits=bits, signed=signed)
    x = x.clone().requires_grad_()
    y = q(x)
    qmax = q.quant_max
    expected_scale = max(2 * x.detach().abs().double().mean().item() / math.sqrt(qmax), 2**-23)
    assert q.scale.item() == pytest.approx(expected_scale, rel=1e-5)

    upstream = torch.linspace(-1.0, 2.0, x.numel())
    y.backward(upstream)
    s = q.scale.detach()
    g = 1.0 / math.sqrt(x.numel() * qmax)
    out, dx, ds, _ = lsq_reference(x.detach(), s, 0.0, q.quant_min, qmax, g, upstream)
    assert torch.equal(y.detach(), out)
    torch.testing.assert_close(x.grad, dx)
    torch.testing.assert_close(q.scale.grad, ds.sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ch_axis", [0, 1, -1])
def test_lsq_per_channel_matches_reference(ch_axis):
    x = torch.randn(3, 5, 2) * torch.tensor([0.1, 1.0, 10.0]).reshape(3, 1, 1)
    x.requires_grad_()
    q = LSQQuantizer(bits=4, ch_axis=ch_axis)
    y = q(x)
    axis = ch_axis % 3
    dims = tuple(d for d in range(3) if d != axis)
    channels = x.shape[axis]
    assert q.scale.shape == (channels,)
    torch.testing.assert_close(q.scale.detach(), 2 * x.detach().abs().mean(dim=dims) / math.sqrt(7))

    upstream = torch.randn(x.shape)
    y.backward(upstream)
    shape = [1, 1, 1]
    shape[axis] = -1
    s = q.scale.detach().reshape(shape)
    g = 1.0 / math.sqrt(x.numel() / channels * 7)
    out, dx, ds, _ = lsq_reference(x.detach(), s, 0.0, -8, 7, g, upstream)
    assert torch.equal(y.detach(), out)
    torch.testing.assert_close(x.grad, dx)
    torch.testing.assert_close(q.scale.grad, ds.sum(dim=dims), rtol=1e-5, atol=1e-6)
    assert q.qparams()["ch_axis"] == ch_axis
    assert q.qparams()["zero_point"].shape == (channels,)


def test_lsq_gradient_outside_range_is_qmin_or_qmax_times_g():
    q = LSQQuantizer(bits=4, grad_factor=0.5)
    q(torch.tensor([1.0]))  # initialize
    with torch.no_grad():
        q.scale.fill_(0.25)
    q(torch.tensor([-10.0])).backward()  # x/s = -40 < -8
    assert q.scale.grad.item() == -8 * 0.5
    q.scale.grad = None
    q(torch.tensor([10.0])).backward()  # x/s = 40 > 7
    assert q.scale.grad.item() == 7 * 0.5
    q.scale.grad = None
    q(torch.tensor([0.3])).backward()  # x/s = 1.2 -> round 1: 1 - 1.2
    assert q.scale.grad.item() == pytest.approx(0.5 * (1 - 1.2), rel=1e-6)


@given(values, st.integers(2, 8), st.booleans())
def test_lsq_on_grid_in_range_idempotent_and_to_int(x, bits, signed):
    q = LSQQuantizer(bits=bits, signed=signed)
    y = q(x).detach()
    params = q.qparams()
    codes = torch.round(y / params["scale"])
    assert torch.equal(codes * params["scale"], y)  # on the grid
    assert codes.min() >= q.quant_min and codes.max() <= q.quant_max
    assert torch.equal(q(y).detach(), y)  # the scale is learned: a second batch keeps it
    ints = q.to_int(x)
    assert not ints.is_floating_point()
    assert ints.dtype == (torch.int8 if signed else torch.uint8)
    assert torch.equal((ints.float() - params["zero_point"]) * params["scale"], y)


def test_lsq_initializes_once_and_keeps_the_parameter_object():
    q = LSQQuantizer(bits=4, ch_axis=0)
    param = q.scale
    optimizer = torch.optim.SGD(q.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    q(x).sum().backward()
    assert q.scale is param and param.shape == (4,)
    assert optimizer.param_groups[0]["params"][0] is param
    before = param.detach().clone()
    optimizer.step()
    assert not torch.equal(param.detach(), before)
    after_step = param.detach().clone()
    q(100 * x)  # training mode, but no re-initialization
    assert torch.equal(q.scale.detach(), after_step)
    q.initialized = False  # asks for a fresh initialization
    q(100 * x)
    torch.testing.assert_close(q.scale.detach(), 100 * before)


def test_lsq_training_reduces_quantization_error():
    torch.manual_seed(1)
    x = torch.randn(512)
    q = LSQQuantizer(bits=3)
    q(x)
    with torch.no_grad():
        q.scale.fill_(2.0)  # a poor start: almost everything rounds to 0 or clips
    optimizer = torch.optim.Adam(q.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        optimizer.zero_grad()
        loss = ((q(x) - x) ** 2).mean()
        first = loss.item() if first is None else first
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.25 * first
    assert 0.1 < q.scale.item() < 1.0


def test_lsq_frozen_observer_leaves_scale_at_one():
    q = LSQQuantizer(bits=4)
    with freeze_observers(q):
        y = q(torch.tensor([0.2, 2.6, 100.0]))
    assert not q.initialized
    assert torch.equal(y.detach(), torch.tensor([0.0, 3.0, 7.0]))
    with pytest.raises(RuntimeError, match="forward pass"):
        q.qparams()
    with pytest.raises(RuntimeError, match="forward pass"):
        q.to_int(torch.tensor([1.0]))


def test_lsq_eval_mode_initializes_when_never_initialized():
    q = LSQQuantizer(bits=8).eval()
    q(torch.tensor([1.0, -1.0]))
    assert q.initialized
    assert q.scale.item() == pytest.approx(2 / math.sqrt(127))


def test_lsq_zero_input_gets_a_usable_scale():
    q = LSQQuantizer()
    y = q(torch.zeros(4))
    assert q.scale.item() > 0
    assert torch.equal(y.detach(), torch.zeros(4))


@pytest.mark.parametrize("ch_axis", [None, 1])
def test_lsq_state_dict_round_trip(ch_axis):
    x = torch.randn(2, 3, 4)
    q = LSQQuantizer(bits=5, ch_axis=ch_axis)
    q(x)
    with torch.no_grad():
        q.scale.mul_(1.5)  # as if trained
    fresh = LSQQuantizer(bits=5, ch_axis=ch_axis)
    fresh.load_state_dict(q.state_dict())
    assert fresh.initialized
    assert fresh.scale.shape == q.scale.shape
    assert torch.equal(fresh.scale, q.scale)
    assert torch.equal(fresh(x), q(x))  # no re-initialization from x


def test_lsq_load_state_dict_does_not_replace_the_parameter_object():
    q = LSQQuantizer(ch_axis=0)
    param = q.scale
    q.load_state_dict({"scale": torch.tensor([0.5, 0.25])})
    assert q.scale is param
    assert torch.equal(param.detach(), torch.tensor([0.5, 0.25]))


def test_lsq_repr_and_factory():
    q = LSQQuantizer(bits=4, ch_axis=0)
    assert (
        repr(q) == "LSQQuantizer(bits=4, quant_min=-8, quant_max=7, ch_axis=0, initialized=False)"
    )
    q(torch.ones(2, 2))
    assert repr(q) == "LSQQuantizer(bits=4, quant_min=-8, quant_max=7, ch_axis=0)"
    made = LSQQuantizer.with_args(bits=3, signed=False)
    a, b = made(), made()
    assert a is not b and (a.quant_min, a.quant_max) == (0, 7)
    grad = LSQQuantizer(grad_factor=0.1)
    assert repr(grad) == (
        "LSQQuantizer(bits=8, quant_min=-128, quant_max=127, grad_factor=0.1, initialized=False)"
    )


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"bits": 0}, ValueError, "bits=0"),
        ({"bits": 17}, ValueError, "bits=17"),
        ({"bits": 1, "signed": True}, ValueError, "signed=False"),
        ({"bits": 4.0}, TypeError, "bits"),
        ({"grad_factor": -1.0}, ValueError, "grad_factor"),
        ({"grad_factor": "auto"}, TypeError, "grad_factor"),
        ({"ch_axis": 1.5}, TypeError, "ch_axis"),
    ],
)
def test_lsq_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LSQQuantizer(**kwargs)


def test_lsq_rejects_non_finite_first_batch():
    q = LSQQuantizer()
    with pytest.raises(ValueError, match="NaN or inf"):
        q(torch.tensor([1.0, float("nan")]))
    assert not q.initialized
    with pytest.raises(ValueError, match="ch_axis=2"):
        LSQQuantizer(ch_axis=2)(torch.ones(3, 3))


# --- LSQ+ ---------------------------------------------------------------------------


@given(values, st.integers(2, 8), st.booleans())
def test_lsq_plus_init_forward_and_gradients_match_reference(x, bits, signed):
    q = LSQPlusQuantizer(bits=bits, signed=signed)
    x = x.clone().requires_grad_()
    y = q(x)
    qmin, qmax = q.quant_min, q.quant_max
    low = min(x.min().item(), 0.0)
    high = max(x.max().item(), 0.0)
    expected_scale = max((high - low) / (qmax - qmin), 2**-23)
    assert q.scale.item() == pytest.approx(expected_scale, rel=1e-5)
    s = q.scale.detach()
    z = q.zero_point.detach()
    assert z.item() == qmin - round(low / s.item())
    assert qmin <= z.item() <= qmax

    upstream = torch.linspace(2.0, -1.0, x.numel())
    y.backward(upstream)
    g = 1.0 / math.sqrt(x.numel() * qmax)
    out, dx, ds, dz = lsq_reference(x.detach(), s, z, qmin, qmax, g, upstream)
    assert torch.equal(y.detach(), out)
    torch.testing.assert_close(x.grad, dx)
    torch.testing.assert_close(q.scale.grad, ds.sum(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.zero_point.grad, dz.sum(), rtol=1e-5, atol=1e-6)


def test_lsq_plus_zero_point_is_rounded_with_ste():
    q = LSQPlusQuantizer(bits=4, grad_factor=1.0)
    q(torch.tensor([0.0, 1.5]))  # s = 0.1, z = 0
    with torch.no_grad():
        q.zero_point.fill_(3.4)  # acts as 3
    x = torch.tensor([-0.35, 0.2, 5.0])
    y = q(x)
    s = q.scale.detach()
    v = x * (1.0 / s)
    expected = (torch.clamp(torch.round(v + 3), 0, 15) - 3) * s
    assert torch.equal(y.detach(), expected)
    y.sum().backward()
    # -0.35/0.1 + 3 = -0.5 -> clipped to 0 (gradient -s); 2 + 3 inside (0); 53 clipped (-s).
    torch.testing.assert_close(q.zero_point.grad, -2 * s)
    assert q.qparams()["zero_point"].item() == 3
    assert q.qparams()["zero_point"].dtype == torch.int32


def test_lsq_plus_per_channel_state_dict_and_to_int():
    x = torch.randn(3, 6) + torch.tensor([[0.0], [2.0], [-1.0]])
    q = LSQPlusQuantizer(bits=6, ch_axis=0)
    y = q(x).detach()
    assert q.scale.shape == q.zero_point.shape == (3,)
    fresh = LSQPlusQuantizer(bits=6, ch_axis=0)
    fresh.load_state_dict(q.state_dict())
    assert fresh.initialized
    assert torch.equal(fresh.zero_point, q.zero_point)
    assert torch.equal(fresh(x).detach(), y)
    params = fresh.qparams()
    ints = fresh.to_int(x)
    assert ints.dtype == torch.uint8
    assert int(ints.min()) >= 0 and int(ints.max()) <= 63
    dequantized = (ints.float() - params["zero_point"][:, None]) * params["scale"][:, None]
    assert torch.equal(dequantized, y)


def test_lsq_plus_repr():
    assert repr(LSQPlusQuantizer(bits=4)) == (
        "LSQPlusQuantizer(bits=4, quant_min=0, quant_max=15, initialized=False)"
    )


# --- PACT ---------------------------------------------------------------------------


def pact_reference(x, alpha, bits, upstream):
    qmax = 2**bits - 1
    s = torch.tensor(alpha) / qmax
    y = torch.clamp(x, 0, alpha)
    out = torch.round(y * (1.0 / s)) * s
    dx = torch.where((x >= 0) & (x < alpha), upstream, torch.zeros_like(x))
    dalpha = torch.where(x >= alpha, upstream, torch.zeros_like(x)).sum()
    return out, dx, dalpha


@given(values, st.integers(1, 8), st.floats(0.5, 20, width=32))
def test_pact_forward_and_gradients_match_paper(x, bits, alpha):
    q = PACTQuantizer(bits=bits, alpha=alpha)
    x = x.clone().requires_grad_()
    y = q(x)
    upstream = torch.linspace(-1.0, 3.0, x.numel())
    y.backward(upstream)
    out, dx, dalpha = pact_reference(x.detach(), alpha, bits, upstream)
    assert torch.equal(y.detach(), out)
    assert torch.equal(x.grad, dx)
    torch.testing.assert_close(q.alpha.grad, dalpha)


def test_pact_gradient_at_the_clip_level_goes_to_alpha():
    q = PACTQuantizer(bits=4, alpha=2.0)
    x = torch.tensor([0.0, 2.0, 3.0, -1.0], requires_grad=True)
    q(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert q.alpha.grad.item() == 2.0


@given(values, st.integers(1, 8), st.floats(0.5, 20, width=32))
def test_pact_on_grid_in_range_idempotent_and_to_int(x, bits, alpha):
    q = PACTQuantizer(bits=bits, alpha=alpha)
    y = q(x).detach()
    scale = q.qparams()["scale"]
    codes = torch.round(y / scale)
    assert torch.equal(codes * scale, y)  # on the grid
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert torch.equal(q(y).detach(), y)
    ints = q.to_int(x)
    assert ints.dtype == torch.uint8
    assert torch.equal(ints.float() * scale, y)


def test_pact_alpha_trains_and_round_trips():
    q = PACTQuantizer(bits=4, alpha=1.0)
    optimizer = torch.optim.SGD(q.parameters(), lr=0.1)
    x = torch.linspace(0, 4, 100)
    for _ in range(20):  # mean squared error against unclipped data pulls alpha up
        optimizer.zero_grad()
        ((q(x) - x) ** 2).mean().backward()
        optimizer.step()
    assert q.alpha.item() > 2.0
    fresh = PACTQuantizer(bits=4)
    fresh.load_state_dict(q.state_dict())
    assert fresh.alpha.item() == q.alpha.item()
    assert torch.equal(fresh(x), q(x))
    assert fresh.qparams()["scale"].item() == pytest.approx(q.alpha.item() / 15)


def test_pact_repr_and_bad_arguments():
    assert repr(PACTQuantizer(bits=4, alpha=3)) == "PACTQuantizer(bits=4, alpha=3)"
    with pytest.raises(ValueError, match="alpha must be positive"):
        PACTQuantizer(alpha=0.0)
    with pytest.raises(ValueError, match="alpha must be positive"):
        PACTQuantizer(alpha=float("inf"))
    with pytest.raises(TypeError, match="alpha"):
        PACTQuantizer(alpha="10")
    with pytest.raises(ValueError, match="bits=17"):
        PACTQuantizer(bits=17)
