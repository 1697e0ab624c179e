"""The fused LIF forward loop compiled by Numba computes the bits of the PyTorch loop."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import aquatic.functional.neurons_jit as jit
import aquatic.functional.neurons_kernel as kernel
from aquatic.functional.neuron_types import Options
from aquatic.functional.neurons import LIFState, lif_loop
from aquatic.functional.neurons_fused import lif_fused
from aquatic.functional.surrogate import ArcTan, SingleExponential

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="needs numba (pip install aquatic[fast])"
)

OPTIONS = [
    dict(),
    dict(reset="zero"),
    dict(min_v_mem=-0.3),
    dict(reset="zero", min_v_mem=0.1),
    dict(norm_input=True),
    dict(spiking=False),
    dict(spiking=False, min_v_mem=-0.2, norm_input=True),
]
#: (input shape, parameter shape): one neuron per feature; 1100 features make three
#: jobs of up to 512; 40 samples of 3 features make jobs of many rows; a conv-like
#: input takes one parameter per channel. The loops take a parameter that every sample
#: shares as one row (the layers' case), and one per sample as it is (the last two).
SHAPES = [
    ((3, 12, 4), (4,)),
    ((1, 5, 1100), ()),
    ((40, 6, 3), (3,)),
    ((2, 7, 3, 5, 4), (3, 1, 1)),
    ((40, 6, 3), (40, 3)),
    ((2, 5, 700), (2, 1)),
]


def _tensors(shape, param_shape, dtype, synaptic, bias, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def rand(*size):
        return torch.rand(size, generator=generator, dtype=dtype)

    step = (shape[0],) + shape[2:]
    return dict(
        x=torch.randn(shape, generator=generator, dtype=dtype) * 0.8 + 0.3,
        v0=torch.randn(step, generator=generator, dtype=dtype) * 0.5,
        i0=torch.randn(step, generator=generator, dtype=dtype) * 0.5 if synaptic else None,
        alpha_mem=rand(*param_shape) * 0.5 + 0.4,
        alpha_syn=rand(*param_shape) * 0.5 + 0.3 if synaptic else None,
        threshold=rand(*param_shape) * 0.5 + 0.7,
        bias=rand(*param_shape) * 0.2 - 0.1 if bias else None,
    )


def _forward(enabled, monkeypatch, t, options, record, need_grad, keep_current, checkpoint):
    monkeypatch.setattr(jit, "ENABLED", enabled)
    return kernel.sequence_forward(
        t["x"],
        t["v0"],
        t["i0"],
        t["alpha_mem"],
        t["alpha_syn"],
        t["threshold"],
        t["bias"],
        options,
        record,
        need_grad,
        keep_current,
        checkpoint,
    )


def _options(**kwargs):
    defaults = dict(
        reset="subtract",
        surrogate=SingleExponential(),
        max_spikes=1,
        min_v_mem=None,
        norm_input=False,
        detach_reset=False,
        spiking=True,
    )
    defaults.update(kwargs)
    return Options(**defaults)


def _assert_same(a, b):
    for name, p, q in zip(("output", "trace", "current", "v_pre", "v", "i", "vs", "is"), a, b):
        assert (p is None) == (q is None), name
        if p is not None:
            assert p.shape == q.shape, name
            assert torch.equal(p, q) or torch.equal(p.isnan(), q.isnan()), name
            assert torch.equal(torch.nan_to_num(p), torch.nan_to_num(q)), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, param_shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", OPTIONS, ids=str)
@pytest.mark.parametrize("synaptic, bias", [(False, False), (False, True), (True, True)])
def test_forward_is_bitwise_the_pytorch_loop(
    dtype, shape, param_shape, config, synaptic, bias, monkeypatch
):
    assert jit.available()
    t = _tensors(shape, param_shape, dtype, synaptic, bias)
    options = _options(**config)
    for record, need_grad, keep_current, checkpoint in [
        (False, True, False, None),
        (True, True, synaptic, None),
        (False, False, True, 3),  # a current asked for without a synaptic state: None
    ]:
        args = (t, options, record, need_grad, keep_current, checkpoint)
        compiled = _forward(True, monkeypatch, *args)
        _assert_same(compiled, _forward(False, monkeypatch, *args))
        assert (compiled[2] is not None) == (synaptic and keep_current)


#: Gradients of the compiled backward against the PyTorch backward: the same equations,
#: summed in another order and without the PyTorch backward's fused multiply-adds.
GRAD_TOLERANCE = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("surrogate", [ArcTan(), SingleExponential(width=0.3)], ids=repr)
def test_layer_outputs_are_bitwise_and_gradients_close_to_the_pytorch_loop(
    surrogate, dtype, monkeypatch
):
    # The backward pass runs on what the compiled forward saved: the same outputs,
    # also for a time-major (non-contiguous) input and learnable decays and threshold;
    # the gradients of the compiled backward agree to rounding (its own slopes for
    # ArcTan, SingleExponential's by its derivative_).
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(20, 4, 6, generator=generator, dtype=dtype) + 0.4
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(jit, "ENABLED", enabled)
        x = base.clone().requires_grad_()
        alpha = torch.full((6,), 0.8, dtype=dtype, requires_grad=True)
        syn = torch.full((6,), 0.6, dtype=dtype, requires_grad=True)
        threshold = torch.tensor(0.9, dtype=dtype, requires_grad=True)
        v0 = torch.zeros(4, 6, dtype=dtype, requires_grad=True)
        out = lif_fused(
            x.transpose(0, 1),
            alpha,
            syn,
            threshold,
            state=LIFState(v0, torch.zeros(4, 6, dtype=dtype)),
            surrogate=surrogate,
            record_states=True,
            min_v_mem=-0.5,
        )
        loss = (out.output * torch.linspace(-1, 1, 6, dtype=dtype)).sum()
        loss = loss + out.v_mem.square().sum() + out.state.v_mem.sum()
        grads = torch.autograd.grad(loss, (x, alpha, syn, threshold, v0))
        results.append(((out.output, out.v_mem, out.i_syn, out.state.v_mem), grads))
    for a, b in zip(results[0][0], results[1][0]):
        assert torch.equal(a, b)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, **GRAD_TOLERANCE[dtype])
    assert results[0][0][0].sum() > 0  # the neurons fired


def test_fused_forward_equals_the_step_by_step_loop_on_the_compiled_path():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 30, 7, generator=generator) * 0.8 + 0.3
    kwargs = dict(reset="zero", min_v_mem=-0.4, norm_input=True, bias=torch.tensor(0.05))
    loop = lif_loop(x, 0.85, 0.7, 0.8, record_states=True, **kwargs)
    fused = lif_fused(x, 0.85, 0.7, 0.8, record_states=True, **kwargs)
    assert jit.forward_ok(x, _options())
    for a, b in zip((loop.output, loop.v_mem, loop.i_syn) + tuple(loop.state[:2]),
                    (fused.output, fused.v_mem, fused.i_syn) + tuple(fused.state[:2])):  # fmt: skip
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 4, 0), (3, 1, 2)], ids=str)
def test_empty_and_single_step_sequences(shape, monkeypatch):
    x = torch.randn(shape) + 1
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(jit, "ENABLED", enabled)
        results.append(lif_fused(x, 0.9, 0.8))
    assert results[0].output.shape == shape
    assert torch.equal(results[0].output, results[1].output)
    assert torch.equal(results[0].state.v_mem, results[1].state.v_mem)


def test_nan_and_inf_inputs_give_the_pytorch_loops_values(monkeypatch):
    x = torch.tensor([[[float("nan"), 1.0, float("inf"), -float("inf"), 0.5]]]).transpose(1, 2)
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(jit, "ENABLED", enabled)
        results.append(lif_fused(x.contiguous(), 0.9, 0.8, record_states=True, min_v_mem=-1.0))
    for a, b in zip(results[0][:1] + results[0][2:3], results[1][:1] + results[1][2:3]):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def test_not_used_where_it_does_not_apply(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the compiled loop ran")

    monkeypatch.setattr(jit, "sequence_forward", refuse)
    x = torch.randn(2, 5, 3) + 0.5
    lif_fused(x, 0.9, max_spikes=3)  # spike counts: the PyTorch loop
    lif_fused(x.to(torch.bfloat16), 0.9)
    monkeypatch.setattr(jit, "ENABLED", False)
    assert not jit.available()
    lif_fused(x, 0.9)


def test_a_numba_that_fails_warns_and_falls_back(monkeypatch):
    def broken():
        raise ImportError("Numba needs NumPy 2.3 or less")

    monkeypatch.setattr(jit, "_kernel", broken)
    jit._ready.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="using the PyTorch loop"):
            assert not jit.available()
        x = torch.randn(2, 5, 3) + 0.5
        assert torch.equal(lif_fused(x, 0.9).output, lif_loop(x, 0.9).output)
    finally:
        monkeypatch.undo()
        jit._ready.cache_clear()
    assert jit.available()


def test_the_environment_variable_turns_it_off():
    code = "import aquatic.functional.neurons_jit as j; print(j.ENABLED, j.available())"
    for value, expected in (("0", "False False"), ("1", "True True")):
        env = dict(os.environ, AQUATIC_NUMBA=value)
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True
        )
        assert result.stdout.split() == expected.split(), result.stderr


def test_results_take_the_layout_of_a_permuted_input(monkeypatch):
    # empty_like keeps a dense input's layout: the results have the PyTorch loop's strides
    # (what torch.compile's fake implementation of the operator promises).
    x = (torch.randn(6, 4, 5) + 0.5).permute(1, 0, 2)
    strides = []
    for enabled in (True, False):
        monkeypatch.setattr(jit, "ENABLED", enabled)
        out = lif_fused(x, 0.9, 0.8, record_states=True)
        strides.append((out.output.stride(), out.v_mem.stride(), out.i_syn.stride()))
        assert torch.equal(out.output, lif_loop(x, 0.9, 0.8).output)
    assert strides[0] == strides[1]


class _Shared(torch.nn.Module):
    """A model with its own forward that runs one quantized-state layer twice and a float
    layer between (the compiled loops hold no state, so reuse is safe)."""

    def __init__(self):
        super().__init__()
        from aquatic import nn as ann
        from aquatic.hw import xylo

        self.chip = ann.LIF(tau_mem=8.0, tau_syn=4.0, qconfig=xylo.qconfig())
        self.leaky = ann.LIF(tau_mem=6.0, surrogate=ArcTan())
        self.mix = ann.Linear(5, 5)

    def forward(self, x):
        first = self.chip(x * 4)
        return self.chip(self.mix(self.leaky(first + x)) * 4) + first


def test_compiled_fullgraph_model_with_a_reused_layer_equals_eager(monkeypatch):
    # Compiled and eager run the same loops: the same bits. Without Numba (the PyTorch
    # loops) the outputs are the same bits and the gradients agree to rounding (the
    # float layer's backward is compiled with Numba, not with PyTorch).
    assert jit.available()
    torch.manual_seed(0)
    model = _Shared()
    x = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(4))
    results = []
    for enabled, compiled in ((True, True), (True, False), (False, False)):
        monkeypatch.setattr(jit, "ENABLED", enabled)
        run = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
        leaf = x.clone().requires_grad_()
        out = run(leaf)
        grads = torch.autograd.grad(out.square().sum(), [leaf] + list(model.parameters()))
        results.append((out,) + grads)
    for a, b in zip(results[0], results[1]):
        assert torch.equal(a, b)
    assert torch.equal(results[0][0], results[2][0])
    for a, b in zip(results[0][1:], results[2][1:]):
        torch.testing.assert_close(a, b, **GRAD_TOLERANCE[torch.float32])
    assert results[0][0].abs().sum() > 0
