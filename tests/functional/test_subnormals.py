"""The fused backward passes flush subnormal gradients to zero (and nothing else), on the
calling thread and on PyTorch's OpenMP team, and leave the processor's mode as they
found it."""

import importlib.util
import platform
import warnings

import pytest
import torch

import aquatic.functional.neurons_jit as neurons_jit
import aquatic.nn as ann
from aquatic.functional import jit_openmp, subnormals
from aquatic.functional.subnormals import flushing, flushing_now
from aquatic.hw import loihi

TINY = torch.finfo(torch.float32).tiny

pytestmark = pytest.mark.skipif(
    not torch.set_flush_denormal(False), reason="the processor has no flush-to-zero mode"
)


def _subnormal(t):
    return (t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)


@pytest.fixture
def two_threads(set_threads):
    set_threads(2)


def _products(n=1 << 20):
    """``1e-30 * 1e-10`` over enough elements that PyTorch shares them over its threads:
    subnormal unless the threads flush."""
    return torch.full((n,), 1e-30) * 1e-10


def test_the_calling_thread_flushes_inside_and_not_after():
    tiny = torch.tensor([1e-30])
    assert not flushing_now()
    with flushing():
        assert flushing_now()
        assert torch.equal(tiny * 1e-10, torch.zeros(1))
    assert not flushing_now()
    assert _subnormal(tiny * 1e-10).all()


@pytest.mark.parametrize("compiled", [True, False], ids=["register", "probe"])
def test_the_mode_reads_the_same_from_the_register_and_the_probe(
    compiled, monkeypatch, record_calls
):
    """With the compiled loops flushing_now reads MXCSR's bits, without them it
    multiplies a subnormal number: both see either mode, set here or by the user."""
    monkeypatch.setattr(neurons_jit, "ENABLED", compiled)
    probes = record_calls(torch, "mul")  # flushing_now's probe
    seen = [flushing_now()]
    with flushing():
        seen.append(flushing_now())
    torch.set_flush_denormal(True)
    try:
        seen.append(flushing_now())
        with flushing():
            seen.append(flushing_now())
        seen.append(flushing_now())
    finally:
        torch.set_flush_denormal(False)
    seen.append(flushing_now())
    assert seen == [False, True, True, True, True, False]
    read_directly = compiled and subnormals._calls() is not None
    assert len(probes) == (0 if read_directly else 8)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert read_directly == (compiled and x86 and importlib.util.find_spec("numba") is not None)


def test_off_it_changes_nothing():
    with flushing(on=False):
        assert not flushing_now()
        assert _subnormal(torch.tensor([1e-30]) * 1e-10).all()


def test_a_mode_set_before_stays_set():
    torch.set_flush_denormal(True)
    try:
        with flushing():
            assert flushing_now()
        assert flushing_now()
    finally:
        torch.set_flush_denormal(False)
    assert not flushing_now()


def test_an_error_inside_restores_the_mode():
    with pytest.raises(KeyError):
        with flushing():
            raise KeyError("inside")
    assert not flushing_now()
    assert _subnormal(_products(8)).all()


@pytest.mark.skipif(not jit_openmp.usable(), reason="needs PyTorch's OpenMP runtime")
@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="needs numba")
def test_every_thread_of_the_team_flushes(two_threads):
    assert _subnormal(_products()).all()  # shared over two threads: none flushes
    with flushing():
        assert torch.equal(_products(), torch.zeros(1 << 20))
    assert _subnormal(_products()).all()


def test_without_the_team_the_calling_thread_still_flushes(monkeypatch, two_threads):
    from aquatic.functional import jit_fpenv

    def broken():
        raise OSError("no entry point")

    monkeypatch.setattr(jit_fpenv, "entry", broken)
    monkeypatch.setattr(subnormals, "_CALLS", [])
    monkeypatch.setattr(jit_openmp, "usable", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with flushing():
            assert flushing_now()
            assert torch.equal(torch.tensor([1e-30]) * 1e-10, torch.zeros(1))
        with flushing():  # tried once
            pass
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert len(messages) == 1 and "calling thread only" in messages[0]
    assert "OSError: no entry point" in messages[0]
    assert not flushing_now()


LAYERS = {
    "LIF": lambda: ann.LIF(tau_mem=10.0),
    "LIF with current": lambda: ann.LIF(tau_mem=10.0, tau_syn=5.0),
    "Loihi": lambda: ann.LIF(
        tau_mem=10.0, tau_syn=5.0, qconfig=loihi.qconfig(), **loihi.neuron_options()
    ),
}


def _run(make, method, x, weights):
    torch.manual_seed(0)
    layer = make()
    layer.method = method
    leaf = x.clone().requires_grad_()
    output = layer(leaf)
    (output * weights).sum().backward()
    return output.detach(), leaf.grad


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pytorch"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_fused_gradients_are_the_loops_with_subnormals_flushed(name, compiled, monkeypatch):
    # membranes 33 to 48 below the threshold: slopes e^(-|u|/0.5) times weights of 1e-5
    # fall on both sides of the smallest normal float32
    generator = torch.Generator().manual_seed(1)
    x = -(torch.rand(64, 4, 32, generator=generator) * 15 + 33)
    weights = torch.rand(64, 4, 32, generator=generator) * 1e-5
    output_ref, grad_ref = _run(LAYERS[name], "loop", x, weights)
    monkeypatch.setattr(neurons_jit, "ENABLED", compiled)
    output, grad = _run(LAYERS[name], "fused", x, weights)
    assert not flushing_now()  # the backward pass restored the mode
    assert torch.equal(output, output_ref)  # forward keeps every value
    assert _subnormal(grad_ref).any()  # the loop's autograd keeps subnormal gradients
    assert not _subnormal(grad).any()
    flushed = torch.where(_subnormal(grad_ref), torch.zeros_like(grad_ref), grad_ref)
    assert (grad != 0).any()
    torch.testing.assert_close(grad, flushed, rtol=1e-6, atol=0)  # to rounding


def test_a_compiled_backward_flushes_too():
    x = -(torch.rand(8, 4, 16, generator=torch.Generator().manual_seed(2)) * 15 + 33)
    weights = torch.full_like(x, 1e-5)
    _, grad_ref = _run(lambda: ann.LIF(tau_mem=10.0, tau_syn=5.0), "loop", x, weights)
    compiled = torch.compile(ann.LIF(tau_mem=10.0, tau_syn=5.0), fullgraph=True)
    leaf = x.clone().requires_grad_()
    (compiled(leaf) * weights).sum().backward()
    assert _subnormal(grad_ref).any()
    assert not _subnormal(leaf.grad).any()
    assert not flushing_now()
