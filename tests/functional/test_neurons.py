"""Neuron functions: golden trajectories, fused == loop, gradients, causality, snnTorch."""

import pytest
import torch

import aquatic.functional.neurons_fused_op as fused_op
import aquatic.functional.neurons_kernel as fused_module
from aquatic.functional.neurons import LIFState, exp_leak, lif, lif_loop, lif_step
from aquatic.functional.neurons_fused import lif_fused
from aquatic.functional.surrogate import ArcTan, FastSigmoid, Triangle

METHODS = ["loop", "fused"]
F64 = torch.float64


def seq(*values):
    """One sample, one neuron: shape (1, T, 1)."""
    return torch.tensor(values, dtype=F64).reshape(1, -1, 1)


def run(method, x, alpha_mem, **kwargs):
    return lif(x, alpha_mem, record_states=True, method=method, **kwargs)


def check(result, spikes, v_mem, i_syn=None):
    assert result.output.flatten().tolist() == spikes
    torch.testing.assert_close(result.v_mem.flatten(), torch.tensor(v_mem, dtype=F64))
    torch.testing.assert_close(result.state.v_mem.flatten(), torch.tensor(v_mem[-1:], dtype=F64))
    if i_syn is not None:
        torch.testing.assert_close(result.i_syn.flatten(), torch.tensor(i_syn, dtype=F64))


# -- golden trajectories, from the equations by hand -------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_golden_subtract_reset(method):
    # alpha 0.5, threshold 1, x = 0.8, 0.8, 0.8, 0:
    # v0 = 0.8; v1 = 0.4 + 0.8 = 1.2 -> spike, 1.2 - 1 = 0.2;
    # v2 = 0.1 + 0.8 = 0.9; v3 = 0.45 + 0 = 0.45
    result = run(method, seq(0.8, 0.8, 0.8, 0.0), 0.5)
    check(result, [0, 1, 0, 0], [0.8, 0.2, 0.9, 0.45])


@pytest.mark.parametrize("method", METHODS)
def test_golden_zero_reset(method):
    # as above, but the spike at step 1 resets to 0: v2 = 0 + 0.8; v3 = 0.4
    result = run(method, seq(0.8, 0.8, 0.8, 0.0), 0.5, reset="zero")
    check(result, [0, 1, 0, 0], [0.8, 0.0, 0.8, 0.4])


@pytest.mark.parametrize("method", METHODS)
def test_golden_threshold_crossing_fires_at_equality(method):
    # alpha 0, threshold 0.5: v = x; 0.5 >= 0.5 fires, 0.49 does not; reset to 0 / 0.49
    result = run(method, seq(0.5, 0.49), 0.0, threshold=0.5)
    check(result, [1, 0], [0.0, 0.49])


@pytest.mark.parametrize("method", METHODS)
def test_golden_multi_spike(method):
    # alpha 0.5, threshold 1, at most 3 spikes, x = 2.5, 0, 5, 0.3:
    # v0 = 2.5 -> floor 2 spikes -> 0.5; v1 = 0.25 -> 0;
    # v2 = 0.125 + 5 = 5.125 -> floor 5, capped at 3 -> 2.125;
    # v3 = 1.0625 + 0.3 = 1.3625 -> 1 spike -> 0.3625
    result = run(method, seq(2.5, 0.0, 5.0, 0.3), 0.5, max_spikes=3)
    check(result, [2, 0, 3, 1], [0.5, 0.25, 2.125, 0.3625])


@pytest.mark.parametrize("method", METHODS)
def test_golden_multi_spike_zero_reset(method):
    # v0 = 2.5 -> 2 spikes, reset to 0; v1 = 0; v2 = 5 -> 3 (capped), 0; v3 = 0.3
    result = run(method, seq(2.5, 0.0, 5.0, 0.3), 0.5, max_spikes=3, reset="zero")
    check(result, [2, 0, 3, 0], [0.0, 0.0, 0.0, 0.3])


@pytest.mark.parametrize("method", METHODS)
def test_golden_synaptic_current(method):
    # alpha_syn 0.5, alpha_mem 0.5, x = 1, 0, 0, 2; i[t] = 0.5 (i[t-1] + x[t]):
    # i = 0.5, 0.25, 0.125, 0.5 * (0.125 + 2) = 1.0625
    # v0 = 0.5; v1 = 0.25 + 0.25 = 0.5; v2 = 0.25 + 0.125 = 0.375;
    # v3 = 0.1875 + 1.0625 = 1.25 -> spike -> 0.25
    result = run(method, seq(1.0, 0.0, 0.0, 2.0), 0.5, alpha_syn=0.5)
    check(result, [0, 0, 0, 1], [0.5, 0.5, 0.375, 0.25], [0.5, 0.25, 0.125, 1.0625])
    assert result.state.i_syn.item() == 1.0625


@pytest.mark.parametrize("method", METHODS)
def test_golden_min_v_mem(method):
    # alpha 0.5, floor -0.5, x = -1, -1, 1.5, 0:
    # v0 = -1 -> -0.5; v1 = -0.25 - 1 = -1.25 -> -0.5;
    # v2 = -0.25 + 1.5 = 1.25 -> spike -> 0.25; v3 = 0.125
    result = run(method, seq(-1.0, -1.0, 1.5, 0.0), 0.5, min_v_mem=-0.5)
    check(result, [0, 0, 1, 0], [-0.5, -0.5, 0.25, 0.125])
    # without the floor: -1, -1.5, 0.75 (no spike), 0.375
    check(run(method, seq(-1.0, -1.0, 1.5, 0.0), 0.5), [0, 0, 0, 0], [-1, -1.5, 0.75, 0.375])


@pytest.mark.parametrize("method", METHODS)
def test_golden_norm_input(method):
    # alpha 0.75, x = 2 each step, input scaled by 1 - 0.75: 0.5 per step
    # v0 = 0.5; v1 = 0.375 + 0.5 = 0.875; v2 = 0.65625 + 0.5 = 1.15625 -> 0.15625;
    # v3 = 0.1171875 + 0.5 = 0.6171875
    result = run(method, seq(2.0, 2.0, 2.0, 2.0), 0.75, norm_input=True)
    check(result, [0, 0, 1, 0], [0.5, 0.875, 0.15625, 0.6171875])


@pytest.mark.parametrize("method", METHODS)
def test_golden_bias(method):
    # alpha 0.5, bias 0.3, x = 0.5, 0.5, 0, 0:
    # v0 = 0.8; v1 = 0.4 + 0.8 = 1.2 -> 0.2; v2 = 0.1 + 0.3 = 0.4; v3 = 0.2 + 0.3 = 0.5
    result = run(method, seq(0.5, 0.5, 0.0, 0.0), 0.5, bias=0.3)
    check(result, [0, 1, 0, 0], [0.8, 0.2, 0.4, 0.5])


@pytest.mark.parametrize("method", METHODS)
def test_golden_initial_state(method):
    # v starts at 0.9, i at 1: i0 = 0.5 (1 + 0.2) = 0.6; v0 = 0.45 + 0.6 = 1.05 -> 0.05
    state = LIFState(torch.tensor([[0.9]], dtype=F64), torch.tensor([[1.0]], dtype=F64))
    result = run(method, seq(0.2), 0.5, alpha_syn=0.5, state=state)
    check(result, [1], [0.05], [0.6])


@pytest.mark.parametrize("method", METHODS)
def test_golden_per_neuron_parameters(method):
    # two neurons, alpha (0.5, 1.0), threshold (1, 2), x = 0.8 each step:
    # n0: 0.8; 1.2 -> 0.2; 0.9      n1: 0.8; 1.6; 2.4 -> 0.4
    x = torch.full((1, 3, 2), 0.8, dtype=F64)
    alpha = torch.tensor([0.5, 1.0], dtype=F64)
    result = lif(x, alpha, threshold=torch.tensor([1.0, 2.0]), record_states=True, method=method)
    assert result.output[0].tolist() == [[0, 0], [1, 0], [0, 1]]
    expected = torch.tensor([[0.8, 0.8], [0.2, 1.6], [0.9, 0.4]], dtype=F64)
    torch.testing.assert_close(result.v_mem[0], expected)


@pytest.mark.parametrize("method", METHODS)
def test_golden_exp_leak(method):
    # alpha 0.5: 1; 0.5; 0.25 + 1 = 1.25; with norm_input: 0.5; 0.25; 0.625
    x = seq(1.0, 0.0, 1.0)
    assert exp_leak(x, 0.5, method=method).output.flatten().tolist() == [1.0, 0.5, 1.25]
    out = exp_leak(x, 0.5, norm_input=True, method=method).output
    assert out.flatten().tolist() == [0.5, 0.25, 0.625]
    # floor at 0.6: 1; max(0.5, 0.6) = 0.6; 0.3 + 1 = 1.3
    out = exp_leak(x, 0.5, min_v_mem=0.6, method=method).output
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 0.6, 1.3], dtype=F64))


def test_lif_step_is_one_step_of_the_sequence():
    x = torch.randn(3, 5, 4)
    state = None
    for t in range(5):
        s, state = lif_step(x[:, t], state, 0.8, 0.6, 0.7, reset="zero", norm_input=True)
    whole = lif_loop(x, 0.8, 0.6, 0.7, reset="zero", norm_input=True)
    assert torch.equal(s, whole.output[:, -1])
    assert torch.equal(state.v_mem, whole.state.v_mem)
    assert torch.equal(state.i_syn, whole.state.i_syn)


# -- the fused function equals the loop -------------------------------------------------

CONFIGS = [
    dict(),
    dict(reset="zero"),
    dict(max_spikes=3),
    dict(max_spikes=3, reset="zero"),
    dict(synaptic=True),
    dict(synaptic=True, norm_input=True),
    dict(min_v_mem=-0.5),
    dict(detach_reset=True),
    dict(detach_reset=True, reset="zero"),
    dict(bias=True, norm_input=True),
    dict(record_states=True, synaptic=True, min_v_mem=-0.3),
    dict(state=True, synaptic=True, norm_input=True, bias=True, reset="zero", min_v_mem=0.0),
    dict(spiking=False),
    dict(spiking=False, min_v_mem=0.1, norm_input=True, synaptic=True, state=True),
    dict(surrogate=Triangle(0.3), state=True, record_states=True),
    dict(surrogate=ArcTan()),
    dict(surrogate=FastSigmoid(), max_spikes=2, reset="zero", min_v_mem=0.1, synaptic=True),
]


def _inputs(config, dtype, n=3, steps=12, neurons=4):
    generator = torch.Generator().manual_seed(7)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    tensors = {
        "input": randn(n, steps, neurons) * 0.8 + 0.3,
        "alpha_mem": torch.rand(neurons, generator=generator, dtype=dtype) * 0.5 + 0.4,
        "threshold": torch.tensor(0.9, dtype=dtype),
    }
    if config.get("synaptic"):
        tensors["alpha_syn"] = torch.tensor(0.7, dtype=dtype)
    if config.get("bias"):
        tensors["bias"] = randn(neurons) * 0.1
    if config.get("state"):
        tensors["v0"] = randn(n, neurons)
        if config.get("synaptic"):
            tensors["i0"] = randn(n, neurons)
    return tensors


def _run(function, config, tensors):
    options = {k: v for k, v in config.items() if k not in ("synaptic", "bias", "state")}
    state = None
    if "v0" in tensors:
        state = LIFState(tensors["v0"], tensors.get("i0"))
    return function(
        tensors["input"],
        tensors["alpha_mem"],
        tensors.get("alpha_syn"),
        tensors["threshold"],
        bias=tensors.get("bias"),
        state=state,
        **options,
    )


def _loss(result):
    generator = torch.Generator().manual_seed(1)
    loss = (result.output * torch.randn(result.output.shape, generator=generator)).sum()
    loss = loss + (result.state.v_mem**2).sum()
    for trace in (result.v_mem, result.i_syn):
        if trace is not None:
            loss = loss + (trace * torch.randn(trace.shape, generator=generator)).sum()
    if result.state.i_syn is not None:
        loss = loss + (result.state.i_syn**3).sum()
    return loss


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_fused_forward_is_bitwise_the_loop(config):
    tensors = _inputs(config, torch.float32, n=8, steps=30, neurons=16)
    loop, fused = _run(lif_loop, config, tensors), _run(lif_fused, config, tensors)
    for a, b in zip(loop, fused):
        if isinstance(a, tuple):
            for c, d in zip(a, b):
                assert (c is None and d is None) or torch.equal(c, d)
        else:
            assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("block_elements", [1, 8, 1 << 20])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_fused_gradients_equal_the_loop(config, block_elements, monkeypatch):
    # block_elements 1 and 8 make blocks of 1 and 2 steps (4 neurons x 3 samples).
    monkeypatch.setattr(fused_module, "BLOCK_ELEMENTS", block_elements)
    grads = []
    for function in (lif_loop, lif_fused):
        tensors = _inputs(config, F64)
        leaves = {k: v.requires_grad_() for k, v in tensors.items()}
        result = _run(function, config, leaves)
        grads.append(torch.autograd.grad(_loss(result), list(leaves.values()), allow_unused=True))
    for name, a, b in zip(leaves, *grads):
        if a is None:  # the threshold of a non-spiking neuron
            assert b is None and not config.get("spiking", True)
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_fused_gradcheck_exp_leak():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 3, dtype=F64, generator=generator, requires_grad=True)
    alpha = torch.tensor([0.3, 0.6, 0.9], dtype=F64, requires_grad=True)
    bias = torch.tensor(0.1, dtype=F64, requires_grad=True)
    v0 = torch.randn(2, 3, dtype=F64, generator=generator, requires_grad=True)

    def f(x, alpha, bias, v0):
        result = lif_fused(x, alpha, bias=bias, state=LIFState(v0), spiking=False, norm_input=True)
        return result.output, result.state.v_mem

    assert torch.autograd.gradcheck(f, (x, alpha, bias, v0))


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_fused_gradcheck_between_spikes(reset):
    # A Triangle surrogate narrower than the distance of every membrane to the threshold
    # makes the spike pattern locally constant: then the membrane is piecewise linear in
    # every input and finite differences check the decay, synaptic, reset and threshold
    # gradients of the hand-written backward pass.
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 3, dtype=F64, generator=generator) * 0.7 + 0.4
    v0 = torch.randn(2, 3, dtype=F64, generator=generator)
    i0 = torch.randn(2, 3, dtype=F64, generator=generator)
    alpha = torch.tensor([0.5, 0.7, 0.9], dtype=F64)
    syn = torch.tensor(0.6, dtype=F64)
    threshold = torch.tensor(0.8, dtype=F64)
    bias = torch.tensor(0.05, dtype=F64)
    kwargs = dict(reset=reset, surrogate=Triangle(width=1e-5), min_v_mem=-0.7, norm_input=True)
    # The check is valid only with a margin around every threshold crossing and clamp:
    # recompute the membranes before the reset and before the clamp from the equations.
    v, i, margins, fired = v0, i0, [], 0
    for t in range(x.shape[1]):
        i = syn * (i + x[:, t])
        v = alpha * v + (1 - alpha) * i + bias
        s = (v >= threshold).to(F64)
        margins.append((v - threshold).abs().min())
        v = v - threshold * s if reset == "subtract" else v * (1 - s)
        margins.append((v - -0.7).abs().min())
        v, fired = v.clamp(min=-0.7), fired + s.sum()
    assert min(margins) > 1e-4 and fired > 0

    def f(x, v0, i0, alpha, syn, threshold, bias):
        result = lif_fused(
            x, alpha, syn, threshold, state=LIFState(v0, i0), bias=bias,
            record_states=True, **kwargs,
        )  # fmt: skip
        return result.v_mem, result.i_syn, result.state.v_mem

    inputs = [t.clone().requires_grad_() for t in (x, v0, i0, alpha, syn, threshold, bias)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-6)


def test_dispatch():
    x = torch.randn(2, 5, 3, requires_grad=True)
    assert "LIFSequence" in type(lif(x, 0.9).output.grad_fn).__name__
    assert "LIFSequence" not in type(lif(x, 0.9, method="loop").output.grad_fn).__name__
    calls = []

    def quantize(v):
        calls.append(v.shape)
        return torch.round(v * 8) / 8

    out = lif(x, 0.9, quantize_v_mem=quantize, record_states=True)
    assert len(calls) == 5  # one call per step: the loop ran
    assert torch.equal(out.v_mem * 8, torch.round(out.v_mem * 8))
    with pytest.raises(ValueError, match="method='loop'"):
        lif(x, 0.9, quantize_v_mem=quantize, method="fused")


@pytest.mark.parametrize("method", METHODS)
def test_quantized_synaptic_current_feeds_the_membrane(method):
    # i is quantized before it enters v: x = 0.3, alpha_syn 0.5 -> i = 0.15 -> 0.25 on a
    # grid of 0.25 (round(0.6) = 1); alpha_mem 0 -> v = i = 0.25
    calls = []

    def quantize(i):
        calls.append(1)
        return torch.round(i * 4) / 4

    out = lif(seq(0.3), 0.0, 0.5, quantize_i_syn=quantize, record_states=True)
    assert out.v_mem.item() == 0.25 and out.i_syn.item() == 0.25 and calls == [1]


def eighths(v):
    return torch.round(v * 8) / 8


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_state_is_quantized_before_the_spike_decision(reset):
    # alpha 0.5, threshold 1, grid 1/8. x = 0.95: v = Q(0.95) = 1.0 (round(7.6) = 8) >= 1
    # -> spike (unquantized, 0.95 would not fire), reset to 1.0 - 1 = 0 (either mode).
    # x = 0.3: v = Q(0 * 0.5 + 0.3) = 0.25 (round(2.4) = 2); x = 0.8: v = Q(0.125 + 0.8)
    # = Q(0.925) = 0.875 (round(7.4) = 7) < 1, no spike. Deciding the spike before the
    # quantizer (0.95 < 1) would have given no spike at step 0.
    calls = []

    def quantize(v):
        calls.append(v.detach().clone())
        return eighths(v)

    out = lif(seq(0.95, 0.3, 0.8), 0.5, reset=reset, quantize_v_mem=quantize, record_states=True)
    assert out.output.flatten().tolist() == [1.0, 0.0, 0.0]
    assert out.v_mem.flatten().tolist() == [0.0, 0.25, 0.875]
    # the quantizer saw the integrated membrane, before any reset
    assert [c.item() for c in calls] == pytest.approx([0.95, 0.3, 0.925])


def test_reset_by_an_on_grid_threshold_keeps_the_membrane_on_the_grid():
    # threshold 0.75 on the grid of 1/8; several spikes per step: v = Q(2.4) = 2.375,
    # floor(2.375 / 0.75) = 3 spikes, 2.375 - 2.25 = 0.125
    out = lif(seq(2.4), 0.5, threshold=0.75, max_spikes=5, quantize_v_mem=eighths)
    assert out.output.item() == 3.0 and out.state.v_mem.item() == 0.125


def test_min_v_mem_floors_after_the_quantizer():
    # v = Q(-0.93) = -0.875, then the floor -0.5 (after the reset, as without quantizer)
    out = exp_leak(seq(-0.93), 0.5, min_v_mem=-0.5, quantize_v_mem=eighths)
    assert out.output.item() == -0.5


def test_decay_functions_replace_the_products():
    # decay(y, alpha) is called with the previous membrane and with i[t-1] + x[t].
    seen = []

    def decay_mem(v, alpha):
        seen.append(("mem", v.item(), alpha.item()))
        return v - 0.25  # any rule: subtract a quarter

    def decay_syn(total, alpha):
        seen.append(("syn", total.item(), alpha.item()))
        return total / 2

    # step 0: i = (0 + 1) / 2 = 0.5; v = (0 - 0.25) + 0.5 = 0.25
    # step 1: i = (0.5 + 1) / 2 = 0.75; v = (0.25 - 0.25) + 0.75 = 0.75
    out = lif(
        seq(1.0, 1.0),
        0.9,
        0.6,
        threshold=5.0,
        decay_v_mem=decay_mem,
        decay_i_syn=decay_syn,
        record_states=True,
    )
    assert out.v_mem.flatten().tolist() == [0.25, 0.75]
    assert out.i_syn.flatten().tolist() == [0.5, 0.75]
    assert seen == [
        ("syn", 1.0, 0.6),
        ("mem", 0.0, 0.9),
        ("syn", 1.5, 0.6),
        ("mem", 0.25, 0.9),
    ]
    with pytest.raises(ValueError, match="decay functions"):
        lif(seq(1.0), 0.9, decay_v_mem=decay_mem, method="fused")
    # auto runs the loop; lif_step and exp_leak take them too
    assert (
        "LIFSequence"
        not in type(
            lif(seq(1.0).requires_grad_(), 0.9, decay_v_mem=decay_mem).output.grad_fn
        ).__name__
    )
    _, state = lif_step(
        torch.ones(1, 1, dtype=F64),
        LIFState(torch.ones(1, 1, dtype=F64)),
        0.9,
        threshold=5.0,
        decay_v_mem=decay_mem,
    )
    assert state.v_mem.item() == 1.75
    # exp_leak: v = (0 - 0.25) + 1 = 0.75, then (0.75 - 0.25) + 0 = 0.5
    leak = exp_leak(seq(1.0, 0.0), 0.9, decay_v_mem=decay_mem)
    assert leak.output.flatten().tolist() == [0.75, 0.5]


# -- properties that users rely on ---------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_causality(method):
    k = 6
    x = torch.randn(3, 12, 5, dtype=F64)
    x[:, :k] = 0
    x.requires_grad_()
    result = lif(x, 0.8, 0.7, 0.5, record_states=True, method=method)
    assert torch.all(result.v_mem[:, :k] == 0) and torch.all(result.i_syn[:, :k] == 0)
    assert torch.all(result.output[:, :k] == 0)
    assert result.output[:, k:].sum() > 0
    # and nothing after step k reaches back: outputs before k do not depend on x[k:]
    (grad,) = torch.autograd.grad(result.v_mem[:, k + 2].sum(), x)
    assert torch.all(grad[:, k + 3 :] == 0) and grad[:, k + 2].abs().sum() > 0


def _snntorch_leaky(x, beta, threshold):
    """snnTorch's Leaky (reset_mechanism="subtract", reset_delay=True), from its docs:
    U[t] = beta U[t-1] + x[t] - threshold S[t-1],  S[t] = H(U[t] - threshold) (strict >).
    Returns spikes and the membrane before the reset, (N, T, *)."""
    mem = torch.zeros_like(x[:, 0])
    spk = torch.zeros_like(mem)
    spikes, mems = [], []
    for t in range(x.shape[1]):
        mem = beta * mem + x[:, t] - threshold * spk
        spk = (mem > threshold).to(x.dtype)
        spikes.append(spk)
        mems.append(mem)
    return torch.stack(spikes, 1), torch.stack(mems, 1)


@pytest.mark.parametrize("method", METHODS)
def test_snntorch_leaky_equivalence(method):
    # beta = alpha = 1: the conventions coincide; snnTorch's membrane is ours before
    # the reset, v[t] + threshold s[t].
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(4, 40, 6, generator=generator, dtype=F64) * 0.6
    spikes, mem = _snntorch_leaky(x, 1.0, 1.0)
    ours = lif(x, 1.0, record_states=True, method=method)
    assert torch.equal(ours.output, spikes) and spikes.sum() > 20
    torch.testing.assert_close(ours.v_mem + ours.output, mem)

    # beta < 1: equal up to and including the first spike. After it snnTorch subtracts
    # the threshold one step later and undecayed, so while the spike trains agree
    # v_ours[t] - U[t] = threshold (1 - beta) sum_{k<t} beta^(t-1-k) s[k]  (before reset).
    x = torch.full((1, 30, 1), 0.6, dtype=F64)
    beta = 0.9
    spikes, mem = _snntorch_leaky(x, beta, 1.0)
    ours = lif(x, beta, record_states=True, method=method)
    assert not torch.equal(ours.output, spikes)  # the trains drift apart (at step 10) ...
    x, spikes, mem = x[:, :10], spikes[:, :10], mem[:, :10]
    ours = lif(x, beta, record_states=True, method=method)
    assert torch.equal(ours.output, spikes)  # ... but coincide before it
    first = int(spikes.flatten().nonzero()[0])
    v_before_reset = ours.v_mem + ours.output
    torch.testing.assert_close(v_before_reset[:, : first + 1], mem[:, : first + 1])
    offset = torch.zeros(1, dtype=F64)
    for t in range(10):
        torch.testing.assert_close(v_before_reset[0, t] - mem[0, t], offset)
        offset = beta * offset + (1 - beta) * spikes[0, t]


def test_snntorch_reference_matches_snntorch():
    snntorch = pytest.importorskip("snntorch")
    x = torch.rand(3, 25, 4, generator=torch.Generator().manual_seed(4)) * 0.7
    leaky = snntorch.Leaky(beta=0.8, threshold=1.0, reset_mechanism="subtract")
    mem = leaky.init_leaky()
    spikes = []
    for t in range(x.shape[1]):
        spk, mem = leaky(x[:, t], mem)
        spikes.append(spk)
    expected, _ = _snntorch_leaky(x, 0.8, 1.0)
    assert torch.equal(torch.stack(spikes, 1), expected)


@pytest.mark.parametrize("method", METHODS)
def test_iaf_is_lif_with_alpha_one(method):
    x = torch.randn(2, 20, 3)
    a = lif(x, 1.0, 0.8, 0.7, record_states=True, method=method)
    b = lif(x, torch.ones(3), 0.8, 0.7, record_states=True, method=method)
    assert torch.equal(a.output, b.output) and torch.equal(a.v_mem, b.v_mem)
    # no leak: with subtract reset, v[T] = sum of currents - threshold * spikes
    assert torch.allclose(a.state.v_mem, a.i_syn.sum(1) - 0.7 * a.output.sum(1), atol=1e-5)


# -- bad input -----------------------------------------------------------------------------


def test_bad_input():
    x = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match=r"\(N, T, \*\).*unsqueeze"):
        lif(torch.zeros(2, 3), 0.9)
    with pytest.raises(TypeError, match="floating point"):
        lif(torch.zeros(2, 5, 3, dtype=torch.int64), 0.9)
    with pytest.raises(ValueError, match="unknown reset mode 'none'"):
        lif(x, 0.9, reset="none")
    with pytest.raises(ValueError, match="max_spikes"):
        lif(x, 0.9, max_spikes=0)
    with pytest.raises(ValueError, match="unknown method"):
        lif(x, 0.9, method="jit")
    with pytest.raises(ValueError, match=r"alpha_mem of shape \(4,\)"):
        lif(x, torch.ones(4))
    with pytest.raises(ValueError, match=r"state.v_mem has shape \(3, 3\).*\(2, 3\)"):
        lif(x, 0.9, state=LIFState(torch.zeros(3, 3)))
    with pytest.raises(ValueError, match="no synaptic state"):
        lif(x, 0.9, state=LIFState(torch.zeros(2, 3), torch.zeros(2, 3)))
    with pytest.raises(TypeError, match="LIFState"):
        lif(x, 0.9, state=[1, 2])
    with pytest.raises(ValueError, match=r"\(N, \*\)"):
        lif_step(torch.zeros(3), None, 0.9)


def test_inference_without_autograd_gives_the_same_result():
    x = torch.randn(2, 10, 3, requires_grad=True)
    alpha = torch.tensor(0.8, requires_grad=True)
    expected = lif_fused(x, alpha, 0.5, record_states=True)
    with torch.no_grad():
        result = lif_fused(x, alpha, 0.5, record_states=True)
    assert result.output.grad_fn is None
    for name in ("output", "v_mem", "i_syn"):
        assert torch.equal(getattr(result, name), getattr(expected, name))
    assert torch.equal(result.state.v_mem, expected.state.v_mem)


def _as_operator(input, alpha_mem, alpha_syn=None, threshold=1.0, *, state=None, **kwargs):
    # lif_fused as it runs under torch.compile: the custom operators, called eagerly.
    from aquatic.functional.neuron_checks import prepare
    from aquatic.functional.neuron_types import Options

    record = kwargs.pop("record_states", False)
    bias = kwargs.pop("bias", None)
    checkpoint = kwargs.pop("checkpoint", None)
    defaults = dict(reset="subtract", surrogate=None, max_spikes=1, min_v_mem=None)
    defaults.update(norm_input=False, detach_reset=False, spiking=True)
    options = Options(**{**defaults, **kwargs})
    params, state, options = prepare(input, state, (alpha_mem, alpha_syn, threshold, bias), options)
    return fused_op.sequence_op(input, state, params, options, record, checkpoint)


def _tensors(result):
    """The tensors of a LIFOutput, its state's included (None where absent)."""
    return [result.output, *result.state, result.v_mem, result.i_syn]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_compiled_operator_is_bitwise_the_autograd_function(config):
    results = []
    for function in (lif_fused, _as_operator):
        tensors = _inputs(config, torch.float32)
        leaves = {k: v.requires_grad_() for k, v in tensors.items()}
        result = _run(function, config, leaves)
        grads = torch.autograd.grad(_loss(result), list(leaves.values()), allow_unused=True)
        results.append((_tensors(result), grads))
    (values, grads), (values_op, grads_op) = results
    for a, b in zip(values + list(grads), values_op + list(grads_op)):
        assert (a is None and b is None) or torch.equal(a, b)


def test_compiled_operators_pass_opcheck():
    x = torch.randn(2, 5, 3, requires_grad=True)
    alpha = torch.full((3,), 0.8, requires_grad=True)
    syn, threshold = torch.tensor(0.5), torch.tensor(1.0)
    v0, i0 = torch.zeros(2, 3), torch.zeros(2, 3)
    key = fused_op.surrogate_key(FastSigmoid())
    options = ["subtract", key, 2, -0.5, True, False, True]
    needs = [True, False, False, True, False, False, False]  # x and alpha
    args = (x, v0, i0, alpha, syn, threshold, None, *options, True, True, needs)
    torch.library.opcheck(torch.ops.aquatic.lif_sequence, args)
    # with checkpoints every 2 steps (forward returns them, backward reads them)
    torch.library.opcheck(torch.ops.aquatic.lif_sequence, args + (2,))


# -- checkpoint=K: the same values and gradients with less kept for backward ---------


def _with_checkpoint(function, checkpoint):
    def run(*args, **kwargs):
        return function(*args, checkpoint=checkpoint, **kwargs)

    return run


def _values_and_grads(function, config, dtype=F64):
    tensors = _inputs(config, dtype, n=3, steps=13, neurons=4)
    leaves = {k: v.requires_grad_() for k, v in tensors.items()}
    result = _run(function, config, leaves)
    grads = torch.autograd.grad(_loss(result), list(leaves.values()), allow_unused=True)
    return list(leaves), _tensors(result), grads


@pytest.mark.parametrize("block_elements", [8, 1 << 20])
@pytest.mark.parametrize("checkpoint", [1, 4, 13, 50])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_checkpointed_gradients_equal_the_default(config, checkpoint, block_elements, monkeypatch):
    # 13 steps: segments of 4 leave a last one of 1; block_elements 8 makes blocks of 2
    # steps (4 neurons x 3 samples) that do not line up with the segments.
    monkeypatch.setattr(fused_module, "BLOCK_ELEMENTS", block_elements)
    names, values, grads = _values_and_grads(lif_fused, config)
    _, values_k, grads_k = _values_and_grads(_with_checkpoint(lif_fused, checkpoint), config)
    for a, b in zip(values, values_k):
        assert (a is None and b is None) or torch.equal(a, b)
    for name, a, b in zip(names, grads, grads_k):
        if a is None:
            assert b is None
        elif name in ("input", "v0", "i0"):
            # elementwise and the same scans: the same bits
            assert torch.equal(a, b), name
        else:
            # parameter gradients: sums over the same terms, grouped by other blocks
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_checkpointed_operator_is_bitwise_the_autograd_function(config):
    # lif_fused as it runs under torch.compile (the custom operators, called eagerly)
    results = [
        _values_and_grads(_with_checkpoint(function, 5), config, torch.float32)[1:]
        for function in (lif_fused, _as_operator)
    ]
    (values, grads), (values_op, grads_op) = results
    for a, b in zip(values + list(grads), values_op + list(grads_op)):
        assert (a is None and b is None) or torch.equal(a, b)


def _kept_elements(checkpoint, synaptic=False, steps=40):
    """Elements that forward keeps for backward besides the input and the parameters."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, steps, 8, generator=generator, dtype=F64).requires_grad_()
    kept = []

    def pack(tensor):
        if tensor.data_ptr() != x.data_ptr() and tensor.dim() > 1:
            kept.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = lif_fused(x, 0.9, 0.8 if synaptic else None, 0.3, checkpoint=checkpoint)
    out.output.sum().backward()
    return sum(kept), x.grad


@pytest.mark.parametrize("synaptic", [False, True])
def test_checkpoints_keep_one_state_per_segment(synaptic):
    full, grad = _kept_elements(None, synaptic)
    kept, grad_k = _kept_elements(10, synaptic)
    step, states = 2 * 8, 2 if synaptic else 1  # elements of a step; v (and i)
    # the initial state, and every membrane (the currents are not read here)
    assert full == states * step + 40 * step
    # the initial state, and the state entering steps 0, 10, 20 and 30
    assert kept == states * step + 4 * states * step
    assert torch.equal(grad, grad_k)


def test_checkpoint_without_gradients_keeps_nothing():
    x = torch.rand(2, 9, 3)
    with torch.no_grad():
        out = lif_fused(x, 0.9, state=LIFState(torch.zeros(2, 3)), checkpoint=4)
    assert torch.equal(out.output, lif_fused(x, 0.9).output)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_checkpoint_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="checkpoint must be None .* int >= 1"):
        lif_fused(torch.rand(1, 4, 2), 0.9, checkpoint=bad)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_input_gradient_bits_do_not_depend_on_the_block(reset, monkeypatch):
    # float32 and rows long enough for vectorized kernels: a short last block computes
    # the bits of a whole one (checkpointed segments rely on it).
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(3, 37, 41, generator=generator) * 0.8 + 0.5
    weights = torch.randn(x.shape, generator=generator)
    grads = []
    for block_elements in (5 * 3 * 41, 1 << 20):  # blocks of 5 steps (the last of 2), one
        monkeypatch.setattr(fused_module, "BLOCK_ELEMENTS", block_elements)
        leaf = x.clone().requires_grad_()
        out = lif_fused(leaf, 0.9, threshold=0.7, reset=reset)
        grads.append(torch.autograd.grad((out.output * weights).sum(), leaf)[0])
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])
