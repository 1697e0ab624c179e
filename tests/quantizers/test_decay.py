import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aquatic.quantizers import BitShiftDecay, UniformDecay

bits_st = st.integers(1, 16)
alphas = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30).map(
    lambda v: torch.tensor(v, dtype=torch.float64)
)
# Open interval, away from 1 so that 1 - alpha is not clamped (alpha < 1 - 2**-40).
inner_alphas = st.lists(st.floats(1e-6, 1 - 2**-40), min_size=1, max_size=30).map(
    lambda v: torch.tensor(v, dtype=torch.float64)
)
taus = st.lists(st.floats(0.05, 1e4), min_size=1, max_size=30).map(
    lambda v: torch.tensor(v, dtype=torch.float64)
)


# Reference implementations, written from the formulas (float64 in, float64 out).


def bitshift_reference(alpha, bits):
    leak = torch.clamp(1 - alpha, min=torch.finfo(alpha.dtype).tiny)
    raw = torch.round(-torch.log2(leak))
    dash = torch.clamp(raw, 0, 2**bits - 1)
    inside = (raw >= 0) & (raw <= 2**bits - 1)
    return 1 - 2.0**-dash, dash, inside


def uniform_reference(alpha, bits, rounding="nearest"):
    raw = (1 - alpha) * 2**bits
    raw = torch.round(raw) if rounding == "nearest" else torch.floor(raw)
    d = torch.clamp(raw, 0, 2**bits - 1)
    inside = (raw >= 0) & (raw <= 2**bits - 1)
    return 1 - d / 2**bits, d, inside


def tau_of(alpha_q):
    return -1 / torch.log(alpha_q)


# --- forward ------------------------------------------------------------------------


@given(alphas, bits_st)
def test_bitshift_alpha_matches_reference(alpha, bits):
    q = BitShiftDecay(bits=bits)
    expected, dash, _ = bitshift_reference(alpha, bits)
    assert torch.equal(q(alpha), expected)
    assert torch.equal(q.to_int(alpha).long(), dash.long())


@given(taus, bits_st)
def test_bitshift_tau_matches_reference(tau, bits):
    q = BitShiftDecay(bits=bits, param="tau")
    alpha_q, dash, _ = bitshift_reference(torch.exp(-1 / tau), bits)
    assert torch.equal(q.to_int(tau).long(), dash.long())
    torch.testing.assert_close(q(tau), tau_of(alpha_q), rtol=1e-12, atol=0)


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
@given(alpha=alphas, bits=bits_st)
def test_uniform_alpha_matches_reference(rounding, alpha, bits):
    q = UniformDecay(bits=bits, rounding=rounding)
    expected, d, _ = uniform_reference(alpha, bits, rounding)
    assert torch.equal(q(alpha), expected)
    assert torch.equal(q.to_int(alpha).long(), d.long())


@given(taus, bits_st)
def test_uniform_tau_matches_reference(tau, bits):
    q = UniformDecay(bits=bits, param="tau")
    alpha_q, d, _ = uniform_reference(torch.exp(-1 / tau), bits)
    assert torch.equal(q.to_int(tau).long(), d.long())
    # d = 0 is "no decay": tau_q = inf (the reference's -1/log(1) is -inf).
    expected = torch.where(d == 0, math.inf, tau_of(alpha_q))
    torch.testing.assert_close(q(tau), expected, rtol=1e-12, atol=0)


def test_known_values():
    # Xylo-style: tau = 10 steps -> alpha = 0.905 -> 1 - alpha = 0.095 -> dash 3.
    q = BitShiftDecay(bits=4, param="tau")
    assert q.to_int(torch.tensor([10.0])).item() == 3
    assert q(torch.tensor([10.0])).item() == pytest.approx(-1 / math.log(0.875), rel=1e-6)
    # Loihi-style: alpha = 0.9 -> du = round(0.1 * 4096) = 410 -> alpha_q = 3686/4096.
    u = UniformDecay(bits=12)
    assert u.to_int(torch.tensor([0.9])).item() == 410
    assert u(torch.tensor([0.9])).item() == 3686 / 4096


# --- gradients ----------------------------------------------------------------------


@given(inner_alphas, bits_st)
def test_bitshift_alpha_gradient(alpha, bits):
    alpha = alpha.clone().requires_grad_()
    BitShiftDecay(bits=bits)(alpha).sum().backward()
    a = alpha.detach()
    _, dash, inside = bitshift_reference(a, bits)
    expected = torch.where(inside, 2.0**-dash / (1 - a), torch.zeros_like(a))
    torch.testing.assert_close(alpha.grad, expected, rtol=1e-9, atol=0)


@given(taus, bits_st)
def test_bitshift_tau_gradient(tau, bits):
    tau = tau.clone().requires_grad_()
    BitShiftDecay(bits=bits, param="tau")(tau).sum().backward()
    t = tau.detach()
    alpha = torch.exp(-1 / t)
    alpha_q, dash, inside = bitshift_reference(alpha, bits)
    tau_q = tau_of(alpha_q)
    # d tau_q/d alpha_q * d alpha_q/d alpha * d alpha/d tau; zero where dash is 0.
    chain = tau_q**2 / alpha_q * (2.0**-dash / (1 - alpha)) * (alpha / t**2)
    expected = torch.where(inside & (dash > 0), chain, torch.zeros_like(t))
    torch.testing.assert_close(tau.grad, expected, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
@given(alpha=inner_alphas, bits=bits_st)
def test_uniform_alpha_gradient_is_straight_through(rounding, alpha, bits):
    alpha = alpha.clone().requires_grad_()
    UniformDecay(bits=bits, rounding=rounding)(alpha).sum().backward()
    _, _, inside = uniform_reference(alpha.detach(), bits, rounding)
    assert torch.equal(alpha.grad, inside.double())


def test_uniform_stochastic_gradient_is_straight_through():
    # (1 - alpha) * 16 lies in [1.6, 14.4]: every draw rounds inside 0..15, so no clamp.
    alpha = torch.linspace(0.1, 0.9, 50, requires_grad=True)
    UniformDecay(bits=4, rounding="stochastic")(alpha).sum().backward()
    assert torch.equal(alpha.grad, torch.ones(50))


@given(taus, bits_st)
def test_uniform_tau_gradient(tau, bits):
    tau = tau.clone().requires_grad_()
    UniformDecay(bits=bits, param="tau")(tau).sum().backward()
    t = tau.detach()
    alpha = torch.exp(-1 / t)
    alpha_q, d, inside = uniform_reference(alpha, bits)
    tau_q = tau_of(alpha_q)
    chain = alpha * tau_q**2 / (alpha_q * t**2)
    expected = torch.where(inside & (d > 0), chain, torch.zeros_like(t))
    torch.testing.assert_close(tau.grad, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("cls", [BitShiftDecay, UniformDecay])
@pytest.mark.parametrize("bits", [1, 4, 8, 16])
def test_extreme_inputs_give_no_nan(cls, bits):
    alpha = torch.tensor([-math.inf, -1.0, 0.0, 1e-30, 1 - 1e-7, 1.0, 2.0, math.inf])
    alpha.requires_grad_()
    out = cls(bits=bits)(alpha)
    out.sum().backward()
    assert not out.isnan().any() and ((out >= 0) & (out <= 1)).all()
    assert torch.isfinite(alpha.grad).all()
    tau = torch.tensor([-5.0, 0.0, 1e-30, 1e-3, 0.5, 1e7, 1e30, math.inf], requires_grad=True)
    out = cls(bits=bits, param="tau")(tau)
    out.sum().backward()
    assert not out.isnan().any() and (out >= 0).all()
    assert torch.isfinite(tau.grad).all()


def test_tau_edges():
    # dash 0 is alpha_q = 0: tau_q = 0, with no gradient.
    tau = torch.tensor([0.1], requires_grad=True)
    y = BitShiftDecay(bits=4, param="tau")(tau)
    y.backward()
    assert y.item() == 0.0 and tau.grad.item() == 0.0
    # d = 0 is no decay at all: tau_q = inf, with no gradient.
    tau = torch.tensor([1e6], requires_grad=True)
    y = UniformDecay(bits=4, param="tau")(tau)
    y.backward()
    assert y.item() == math.inf and tau.grad.item() == 0.0


# --- grid, range, idempotence, export -----------------------------------------------


@pytest.mark.parametrize("cls", [BitShiftDecay, UniformDecay])
@given(alpha=alphas.map(torch.Tensor.float), bits=bits_st)
def test_alpha_on_grid_in_range_and_idempotent(cls, alpha, bits):
    q = cls(bits=bits)
    y = q(alpha)
    codes = q.to_int(alpha)
    assert not codes.is_floating_point()
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    if cls is BitShiftDecay:
        grid = 1 - 2.0 ** -codes.double()
    else:
        grid = 1 - codes.double() / 2**bits
    assert torch.equal(y, grid.float())
    assert torch.equal(q(y), y)
    assert torch.equal(q.dequantize(codes), y)


@pytest.mark.parametrize("cls", [BitShiftDecay, UniformDecay])
@given(tau=taus, bits=bits_st)
def test_tau_idempotent_and_dequantize(cls, tau, bits):
    q = cls(bits=bits, param="tau")
    y = q(tau)
    assert torch.equal(q(y), y)
    assert torch.equal(q.dequantize(q.to_int(tau), torch.float64), y)


def test_code_dtypes():
    alpha = torch.tensor([0.5])
    assert BitShiftDecay(bits=4).to_int(alpha).dtype == torch.uint8
    assert UniformDecay(bits=12).to_int(alpha).dtype == torch.int16
    assert UniformDecay(bits=16).to_int(alpha).dtype == torch.int32


@given(alphas.map(torch.Tensor.float), st.integers(1, 12))
def test_floor_never_decays_faster(alpha, bits):
    q = UniformDecay(bits=bits, rounding="floor")
    y = q(alpha)
    in_range = alpha >= 2.0**-bits  # below, d is clamped at 2**bits - 1
    gap = y[in_range] - alpha[in_range]
    assert (gap >= 0).all() and (gap < 2.0**-bits).all()
    assert (y[~in_range] == 2.0**-bits).all()


def test_stochastic_is_unbiased_and_reproducible():
    q = UniformDecay(bits=4, rounding="stochastic")
    alpha = torch.full((40000,), 0.3)  # (1 - 0.3) * 16 = 11.2: d is 11 or 12
    torch.manual_seed(3)
    first = q(alpha)
    assert set(first.unique().tolist()) == {1 - 12 / 16, 1 - 11 / 16}
    # E[alpha_q] = alpha; the standard error of the mean is 0.0625 * 0.4 / 200 = 1.25e-4.
    assert abs(first.mean().item() - 0.3) < 6e-4
    torch.manual_seed(3)
    assert torch.equal(q(alpha), first)
    assert not torch.equal(q(alpha), first)
    # to_int exports with nearest rounding: 11.2 -> 11.
    assert torch.equal(q.to_int(alpha[:200]), torch.full((200,), 11, dtype=torch.uint8))


def test_stochastic_generator():
    alpha = torch.full((100,), 0.3)
    a = UniformDecay(bits=4, rounding="stochastic", generator=torch.Generator().manual_seed(5))
    b = UniformDecay(bits=4, rounding="stochastic", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a(alpha), b(alpha))


# --- qparams, state, repr, errors ---------------------------------------------------


def test_qparams_record_the_last_tensor():
    q = BitShiftDecay(bits=4, param="tau")
    assert q.qparams()["dash"].numel() == 0
    q(torch.tensor([1.0, 10.0, 100.0]))
    params = q.qparams()
    assert params["dash"].tolist() == [1, 3, 7]
    assert (params["bits"], params["param"], params["quant_max"]) == (4, "tau", 15)
    u = UniformDecay(bits=12)
    u(torch.tensor([0.9, 0.5]))
    params = u.qparams()
    assert params["decrement"].tolist() == [410, 2048]
    assert params["scale"] == 2**-12


@pytest.mark.parametrize("cls,name", [(BitShiftDecay, "dash"), (UniformDecay, "decrement")])
def test_state_dict_round_trip(cls, name):
    tau = torch.tensor([[2.0, 5.0, 30.0], [1.5, 8.0, 300.0]])
    q = cls(bits=8, param="tau")
    y = q(tau)
    state = q.state_dict()
    assert list(state) == [name]
    fresh = cls(bits=8, param="tau")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.qparams()[name], q.qparams()[name])
    assert fresh.qparams()[name].shape == (2, 3)
    assert torch.equal(fresh(tau), y)


def test_repr():
    assert repr(BitShiftDecay()) == "BitShiftDecay(bits=4, param='alpha')"
    assert repr(UniformDecay(bits=12, param="tau", rounding="floor")) == (
        "UniformDecay(bits=12, param='tau', rounding='floor')"
    )
    q = UniformDecay()
    q.fake_quant_enabled = False
    assert repr(q) == "UniformDecay(bits=12, param='alpha', fake_quant_enabled=False)"


@pytest.mark.parametrize("cls", [BitShiftDecay, UniformDecay])
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"bits": 0}, ValueError, "bits=0"),
        ({"bits": 17}, ValueError, "bits=17"),
        ({"bits": 4.0}, TypeError, "bits"),
        ({"param": "beta"}, ValueError, "'beta'.*'alpha'|'alpha'.*'beta'"),
    ],
)
def test_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_bad_rounding():
    with pytest.raises(ValueError, match="'up'.*nearest"):
        UniformDecay(rounding="up")


# --- the chip's rule on integer states ----------------------------------------------
# Scalar references written from the chips' descriptions: Xylo (xylosim) subtracts
# x >> dash (toward -inf), or 1 toward zero where that is 0; Loihi multiplies by
# (2**bits - d) and shifts the magnitude (rounding toward zero).


def xylo_reference(x, dash):
    shifted = x >> dash
    if shifted == 0 and x != 0:
        shifted = 1 if x > 0 else -1
    return x - shifted


def loihi_reference(x, d, bits):
    product = x * (2**bits - d)
    magnitude = abs(product) >> bits
    return magnitude if product >= 0 else -magnitude


states = st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=20)


@given(states, st.integers(0, 15))
def test_bitshift_integer_decay_is_xylos_leak(values, dash):
    q = BitShiftDecay(bits=4)
    alpha = q(torch.tensor(1 - 2.0**-dash))  # a decay this quantizer produced
    got = q.integer_decay(torch.tensor(values), alpha)
    assert got.tolist() == [xylo_reference(x, dash) for x in values]
    assert got.dtype == torch.int64


@given(states, st.integers(0, 4095))
def test_uniform_integer_decay_is_loihis_leak(values, d):
    q = UniformDecay(bits=12)
    alpha = q(torch.tensor(1 - d / 4096))
    got = q.integer_decay(torch.tensor(values, dtype=torch.int32), alpha)
    assert got.tolist() == [loihi_reference(x, d, 12) for x in values]
    assert got.dtype == torch.int32


@pytest.mark.parametrize("cls", [BitShiftDecay, UniformDecay])
@given(alpha=alphas, bits=st.integers(1, 12))
def test_decay_codes_of_quantized_alphas_are_the_codes(cls, alpha, bits):
    q = cls(bits=bits)
    alpha_q = q(alpha)
    representable = alpha_q < 1  # a leak of 2**-dash that float64 still resolves
    codes = q.to_int(alpha).long()
    assert torch.equal(q.decay_codes(alpha_q)[representable], codes[representable])
    # tau-built: the decay forward uses is exp(-1 / tau_q), a few ulps off the grid
    q_tau = cls(bits=bits, param="tau")
    tau = -1 / torch.log(alpha.clamp(1e-6, 1 - 1e-6))
    tau_q = q_tau(tau)
    alpha_of_tau = torch.exp(-1 / tau_q)
    keep = (alpha_of_tau < 1) & (tau_q > 0)
    assert torch.equal(q_tau.decay_codes(alpha_of_tau)[keep], q_tau.to_int(tau).long()[keep])


def test_decay_codes_edges():
    # alpha 1 (no leak) takes the largest code; alpha 0 the smallest representable
    assert BitShiftDecay(bits=4).decay_codes(torch.tensor([1.0, 0.0])).tolist() == [15, 0]
    assert UniformDecay(bits=12).decay_codes(torch.tensor([1.0, 0.0])).tolist() == [0, 4095]
    # per-neuron decays broadcast against the states
    q = BitShiftDecay(bits=4)
    alpha = torch.tensor([0.5, 0.875])  # dash 1 and 3
    assert q.integer_decay(torch.tensor([[8, 8], [-8, -8]]), alpha).tolist() == [
        [4, 7],
        [-4, -7],
    ]


@pytest.mark.parametrize("cls", [BitShiftDecay, UniformDecay])
def test_decay_state_values_and_gradient(cls):
    q = cls(bits=4)
    alpha = q(torch.tensor(0.8)).requires_grad_()  # dash 2 / d 3: 0.75 / 0.8125
    scale = 0.125
    codes = torch.tensor([-37, -3, -1, 0, 1, 2, 5, 300])
    state = (codes * scale).float().requires_grad_()
    out = q.decay_state(state, alpha, scale)
    expected = q.integer_decay(codes, alpha) * scale
    assert torch.equal(out, expected.float())
    out.backward(torch.arange(8.0))
    assert torch.equal(state.grad, alpha.detach() * torch.arange(8.0))
    assert alpha.grad.item() == pytest.approx((state.detach() * torch.arange(8.0)).sum().item())


def test_decay_state_rounds_and_saturates_first():
    q = BitShiftDecay(bits=4)
    alpha = torch.tensor(0.5)  # dash 1
    # 1.3 / 0.5 = 2.6 -> code 3 -> 3 - 1 = 2; 40 -> code 80, saturated at 10 -> 5;
    # -40 -> -80, saturated at -12 -> -6
    out = q.decay_state(torch.tensor([1.3, 40.0, -40.0]), alpha, 0.5, quant_min=-12, quant_max=10)
    assert out.tolist() == [1.0, 2.5, -3.0]
    # per-channel scales broadcast: codes 4 and 4 -> 2 and 2
    out = q.decay_state(torch.tensor([[1.0, 2.0]]), alpha, torch.tensor([0.25, 0.5]))
    assert out.tolist() == [[0.5, 1.0]]


def test_decay_state_errors():
    q = UniformDecay()
    with pytest.raises(TypeError, match="floating-point"):
        q.decay_state(torch.tensor([1, 2]), 0.5, 1.0)
    with pytest.raises(ValueError, match="scale must be positive"):
        q.decay_state(torch.tensor([1.0]), 0.5, 0.0)
    with pytest.raises(TypeError, match="alpha must be a number or a tensor"):
        q.decay_state(torch.tensor([1.0]), "0.5", 1.0)
    with pytest.raises(ValueError, match="NaN"):
        q.decay_codes(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="integer tensor"):
        q.integer_decay(torch.tensor([1.5]), 0.5)
