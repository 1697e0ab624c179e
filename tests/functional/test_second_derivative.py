"""Second derivatives through spiking layers (create_graph=True: gradient penalties,
meta-learning): the per-step loop computes them; the fused sequences, whose backward
passes run without autograd, say so and name the loop, instead of leaving out the
slopes' dependence on the membrane."""

import pytest
import torch

import aquatic.nn as ann
from aquatic.functional.surrogate import ArcTan, SingleExponential
from aquatic.hw import loihi

F64 = torch.float64

LAYERS = {
    "LIF": lambda: ann.LIF(tau_mem=5.0, surrogate=ArcTan(width=0.5)),
    "LIF with current": lambda: ann.LIF(tau_mem=5.0, tau_syn=3.0),
    "IAF": lambda: ann.IAF(),
    "Loihi": lambda: ann.LIF(tau_mem=10.0, qconfig=loihi.qconfig(), **loihi.neuron_options()),
}


def _input(steps):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(3, steps, 5, generator=generator, dtype=F64) + 0.5).requires_grad_()


@pytest.mark.parametrize("name", list(LAYERS))
def test_fused_sequences_refuse_a_graph_of_their_backward(name):
    layer = LAYERS[name]().double()
    layer.method = "fused"
    x = _input(8)
    spikes = layer(x)
    with pytest.raises(RuntimeError, match=r"no second derivative.*method = 'loop'"):
        torch.autograd.grad(spikes.sum(), x, create_graph=True)
    # first derivatives as ever
    (g,) = torch.autograd.grad(layer(x).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("name", list(LAYERS))
def test_the_loop_computes_them(name):
    layer = LAYERS[name]().double()
    layer.method = "loop"
    x = _input(8)
    (g,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad((g * g).sum(), x)
    assert torch.isfinite(second).all() and second.abs().sum() > 0


def test_one_step_by_hand():
    # one step from rest: v = x, s = H(x - 1), ds/dx = psi(x - 1), and
    # d/dx sum(psi(x - 1)^2) = 2 psi psi' (autograd of the surrogate's own derivative)
    surrogate = SingleExponential(width=0.7)
    layer = ann.LIF(tau_mem=5.0, surrogate=surrogate).double()
    layer.method = "loop"
    x = _input(1)
    (g,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad((g * g).sum(), x)
    leaf = x.detach().clone().requires_grad_()
    slope = surrogate.derivative(leaf - 1.0)
    (expected,) = torch.autograd.grad((slope**2).sum(), leaf)
    torch.testing.assert_close(g, slope.detach(), rtol=1e-15, atol=0)
    torch.testing.assert_close(second, expected, rtol=1e-12, atol=0)
