import math

import pytest
import torch

from aquatic.functional.surrogate import (
    ArcTan,
    FastSigmoid,
    SingleExponential,
    Surrogate,
    Triangle,
    check_surrogate,
    spike,
    spike_values,
)

SURROGATES = [
    SingleExponential(width=0.3, scale=2.0),
    FastSigmoid(slope=7.0, scale=0.5),
    ArcTan(width=0.4, scale=3.0),
    Triangle(width=0.7, scale=0.3),
]


def test_derivative_values_by_hand():
    u = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    # exp(-|u| / 0.5): 1, e^-1, e^-2
    expected = [1.0, math.exp(-1), math.exp(-2)]
    assert SingleExponential(width=0.5).derivative(u).tolist() == pytest.approx(expected)
    # 1 / (1 + 25 |u|)^2 at 0.04: 1 / 4; scale doubles it
    fast = FastSigmoid(slope=25.0, scale=2.0).derivative(torch.tensor([0.0, 0.04, -0.04]))
    assert fast.tolist() == pytest.approx([2.0, 0.5, 0.5])
    # 1 / (1 + (u / 0.5)^2): 1, 1/2, 1/5
    assert ArcTan(width=0.5).derivative(u).tolist() == pytest.approx([1.0, 0.5, 0.2])
    # max(0, 1 - |u| / 2): 1, 0.75, 0.5; zero outside the support
    tri = Triangle(width=2.0).derivative(torch.tensor([0.0, 0.5, -1.0, 2.5]))
    assert tri.tolist() == [1.0, 0.75, 0.5, 0.0]


def test_arctan_default_is_snntorch_atan():
    # snnTorch's atan(alpha=2): (alpha / 2) / (1 + (pi / 2 * alpha * u)^2)
    u = torch.linspace(-2, 2, 41, dtype=torch.float64)
    reference = 1.0 / (1 + (math.pi * u) ** 2)
    torch.testing.assert_close(ArcTan().derivative(u), reference)


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_derivative_is_derivative_of_primitive(surrogate):
    # Central differences in float64, away from the kinks at 0 and +-width.
    u = torch.linspace(-1.5, 1.5, 61, dtype=torch.float64) + 0.013
    h = 1e-6
    numeric = (surrogate.primitive(u + h) - surrogate.primitive(u - h)) / (2 * h)
    torch.testing.assert_close(surrogate.derivative(u), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_in_place_derivative_is_bitwise_equal(surrogate, dtype):
    # far out too: the exponential's floor (-86 widths in float32, -707 in float64)
    u = torch.cat([torch.randn(1000) * 2, torch.linspace(-400, 400, 1001)]).to(dtype)
    assert torch.equal(surrogate.derivative_(u.clone()), surrogate.derivative(u))


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_second_derivative_through_spikes(surrogate):
    # d/dv sum((w psi(v - theta))^2), by autograd through the spike's backward pass and
    # by autograd of the surrogate's derivative itself
    generator = torch.Generator().manual_seed(3)
    v = (torch.randn(50, generator=generator, dtype=torch.float64) * 0.5).requires_grad_()
    w = torch.randn(50, generator=generator, dtype=torch.float64)
    theta = torch.tensor(0.2, dtype=torch.float64)
    (g,) = torch.autograd.grad((spike(v, theta, surrogate) * w).sum(), v, create_graph=True)
    (second,) = torch.autograd.grad((g * g).sum(), v)
    leaf = v.detach().clone().requires_grad_()
    slope = surrogate.derivative(leaf - theta)
    (expected,) = torch.autograd.grad(((w * slope) ** 2).sum(), leaf)
    torch.testing.assert_close(g, w * slope.detach(), rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=1e-12, atol=0)
    assert second.abs().sum() > 0


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_peak_is_scale(surrogate):
    assert surrogate.derivative(torch.zeros(1)).item() == pytest.approx(surrogate.scale)


def test_spike_values_heaviside_and_counts():
    v = torch.tensor([-1.0, 0.999, 1.0, 2.5, 7.0])
    threshold = torch.tensor(1.0)
    # H(0) = 1: a neuron exactly at threshold fires.
    assert spike_values(v, threshold).tolist() == [0, 0, 1, 1, 1]
    # floor(v / threshold) in [0, 3]
    assert spike_values(v, threshold, max_spikes=3).tolist() == [0, 0, 1, 2, 3]
    assert spike_values(v, torch.tensor(0.5), max_spikes=4).tolist() == [0, 1, 2, 4, 4]


def test_spike_gradients_to_membrane_and_threshold():
    surrogate = SingleExponential(width=0.5)
    v = torch.tensor([[0.5, 1.0], [2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    threshold = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    s = spike(v, threshold, surrogate)
    assert s.tolist() == [[0, 1], [1, 0]]
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    (s * weights).sum().backward()
    # u = v - threshold = [[-0.5, 0.5], [1.0, -0.5]]; psi = exp(-2 |u|)
    psi = torch.exp(-2 * torch.tensor([[0.5, 0.5], [1.0, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(v.grad, weights * psi)
    # d s / d threshold = -psi, summed over the batch for a per-neuron threshold
    torch.testing.assert_close(threshold.grad, -(weights * psi).sum(0))


def test_multi_spike_gradient_uses_same_surrogate():
    v = torch.tensor([2.6, -3.0], requires_grad=True)
    s = spike(v, 1.0, Triangle(width=2.0), max_spikes=5)
    assert s.tolist() == [2.0, 0.0]
    s.sum().backward()
    # u = [1.6, -4.0]: 1 - 1.6 / 2 = 0.2; outside the support 0
    assert v.grad.tolist() == pytest.approx([0.2, 0.0])


def test_spike_gradcheck_of_surrogate_part():
    # The backward equals psi, which gradcheck can check on the smooth primitive.
    surrogate = FastSigmoid(slope=3.0)
    u = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(surrogate.primitive, (u,))
    v = u.detach().clone().requires_grad_()
    spike(v, 0.0, surrogate).sum().backward()
    torch.testing.assert_close(v.grad, surrogate.derivative(u.detach()))


@pytest.mark.parametrize("cls", [SingleExponential, ArcTan, Triangle])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_width(cls, bad):
    with pytest.raises(ValueError, match="width must be positive"):
        cls(width=bad)


def test_invalid_slope_and_scale():
    with pytest.raises(ValueError, match="slope"):
        FastSigmoid(slope=0)
    with pytest.raises(ValueError, match="scale"):
        Triangle(scale=-1.0)
    with pytest.raises(TypeError, match="width must be a number"):
        ArcTan(width="wide")


def test_check_surrogate():
    assert check_surrogate(None) == SingleExponential()
    with pytest.raises(TypeError, match=r"surrogate=FastSigmoid\(\)"):
        check_surrogate(FastSigmoid)
    with pytest.raises(TypeError, match="derivative"):
        check_surrogate("fast_sigmoid")


def test_repr_equality_hash():
    assert repr(FastSigmoid(slope=10)) == "FastSigmoid(slope=10, scale=1)"
    assert ArcTan(width=0.5) == ArcTan(width=0.5)
    assert ArcTan(width=0.5) != ArcTan(width=0.6)
    assert ArcTan(width=0.5) != Triangle(width=0.5)
    assert len({Triangle(), Triangle()}) == 1
    with pytest.raises(NotImplementedError):
        Surrogate().derivative(torch.zeros(1))


def test_spike_count_of_on_grid_values_equals_integer_division():
    # v = a s and threshold = b s on one grid: the count must be floor(a / b), as an
    # integer chip computes it, although v / threshold in float32 can round across an
    # integer (771 s / 257 s with s = 0.0123 gives 2.9999998).
    from aquatic.functional.surrogate import spike_values

    s = torch.tensor(0.0123)
    assert spike_values(771 * s, 257 * s, max_spikes=31).item() == 3.0
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-40000, 40000, (200000,), generator=generator)
    b = torch.randint(1, 30000, (200000,), generator=generator)
    expected = torch.clamp(torch.div(a, b, rounding_mode="floor"), 0, 31).float()
    counts = spike_values(a.float() * s, b.float() * s, max_spikes=31)
    assert torch.equal(counts, expected)
