"""The compiled forward loop of quantized states computes the NumPy loop's bits and tensors.

``grid_forward`` runs each sequence twice, compiled and with NumPy operations, and every
result (spikes, traces, the currents and membranes that backward reads, the quantizers'
masks, the final state) must be identical, NaN for NaN.
"""

import importlib.util

import pytest
import torch

import aquatic.functional.neurons_grid_fused as grid_fused
import aquatic.functional.neurons_jit as jit
from aquatic.functional import Grid, LIFState, NeuronSpec, StateOps, neuron_sequence
from aquatic.functional.neurons_grid_kernel import grid_forward
from aquatic.hw import loihi, xylo
from aquatic import nn as ann

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="needs numba (pip install aquatic[fast])"
)
F64 = torch.float64


class FixedGrid:
    """A state quantizer that describes its fixed grid (its own forward is not run here:
    the fused sequence runs the grid)."""

    def __init__(self, scale, low, high, zero_point=0):
        self.grid = Grid(
            torch.tensor(scale), torch.tensor(zero_point, dtype=torch.int32), low, high
        )

    def __call__(self, v):
        raise AssertionError("the fused sequence runs the grid itself")

    def fixed_grid(self):
        return self.grid


class RuleDecay:
    """A decay that describes a chip's rule on a grid (Xylo's bit shift, Loihi's 12-bit
    multiplication)."""

    def __init__(self, rule, codes, bits=12):
        self.rule, self.codes, self.bits = rule, torch.tensor(codes), bits

    def __call__(self, y, alpha):
        raise AssertionError("the fused sequence runs the rule itself")

    def fixed_rule(self, alpha):
        return self.rule, self.bits if self.rule == "multiplicative" else 0, self.codes


def _results(x, spec, state, record, monkeypatch):
    """``grid_forward``'s eight results, compiled and NumPy, for one call of the layer."""
    calls = []

    def capture(*args, **kwargs):
        calls.append((args, kwargs))
        return grid_forward(*args, **kwargs)

    monkeypatch.setattr(grid_fused, "grid_forward", capture)
    leaf = x.clone().requires_grad_()
    neuron_sequence(leaf, spec, state=state, record_states=record, method="fused")
    (args, kwargs), *_ = calls
    runs = []
    for enabled in (True, False):
        monkeypatch.setattr(jit, "ENABLED", enabled)
        runs.append(grid_forward(*args, **kwargs))
    return runs


def _assert_identical(compiled, numpy_loop):
    names = ("output", "trace", "current", "v_pre", "v_mask", "i_mask", "v_final", "i_final")
    for name, a, b in zip(names, compiled, numpy_loop):
        assert (a is None) == (b is None), name
        if a is None:
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert a.numel() == 0 or a.stride() == b.stride(), name
        nan = a.isnan() if a.is_floating_point() else torch.zeros_like(a, dtype=torch.bool)
        assert torch.equal(nan, b.isnan() if b.is_floating_point() else nan), name
        assert torch.equal(a[~nan], b[~nan]), name
        if a.is_floating_point():  # the sign of a zero too
            assert torch.equal(torch.signbit(a[~nan]), torch.signbit(b[~nan])), name


CASES = [
    dict(),
    dict(reset="zero"),
    dict(min_v_mem=-0.5, reset="zero"),
    dict(detach_reset=True, norm_input=True, bias=0.05),
    dict(strict_threshold=True),
    dict(strict_threshold=True, reset="zero", input_after_decay=True),
    dict(strict_threshold=True, input_after_decay=True, input_delay=True, min_v_mem=-1.0),
    dict(spiking=False, threshold=None, min_v_mem=-1.0),
    dict(spiking=False, threshold=None, input_delay=True, norm_input=True),
]
#: (rule, codes, bits, grid): Xylo's bit shift on a 16-bit state; Loihi's 12-bit
#: multiplication on 24-bit states (its product exceeds float32's significand: formed
#: in float64); a grid with a zero point and a scale that is not a power of two.
RULES = [
    ("", None, 0, (1 / 64, -512, 511, 0)),
    ("bitshift", [3, 1, 5, 2, 4, 6], 0, (1 / 64, -(2**15), 2**15 - 1, 0)),
    ("multiplicative", [512, 100, 4000, 1, 2048, 3000], 12, (2**-12, -(2**23), 2**23 - 1, 0)),
    ("multiplicative", [512, 100, 4000, 1, 2048, 3000], 12, (0.1, -300, 200, 7)),
]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("rule, codes, bits, grid", RULES, ids=lambda r: str(r)[:20])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_compiled_grid_forward_is_the_numpy_loop(case, rule, codes, bits, grid, dtype, monkeypatch):
    generator = torch.Generator().manual_seed(5)
    state_grid = FixedGrid(*grid)
    span = float(state_grid.grid.scale) * max(abs(grid[1]), grid[2])
    x = torch.randn(4, 25, 6, generator=generator, dtype=F64).to(dtype) * span / 3 + span / 10
    case = dict(case)
    synaptic = case.get("spiking", True) is not False or "input_delay" in case
    decay = RuleDecay(rule, codes, bits) if rule else None
    ops = StateOps(state_grid, state_grid if synaptic else None, decay, decay if synaptic else None)
    spec = NeuronSpec(
        torch.tensor([0.875, 0.5, 0.97, 0.9, 0.8, 0.6], dtype=dtype),
        torch.tensor(0.96875, dtype=dtype) if synaptic else None,
        case.pop("threshold", torch.tensor(span / 4, dtype=dtype)),
        state_ops=ops,
        **case,
    )
    v0 = torch.randint(-100, 100, (4, 6), generator=generator).to(dtype) * state_grid.grid.scale
    state = LIFState(v0.to(dtype), v0.flip(0).to(dtype) if synaptic else None)
    for record in (False, True):
        compiled, numpy_loop = _results(x, spec, state, record, monkeypatch)
        _assert_identical(compiled, numpy_loop)
    if case.get("spiking", True):
        assert 0 < compiled[0].sum() < compiled[0].numel()  # spikes, and silence


@pytest.mark.parametrize("preset", ["xylo", "loihi"])
def test_hostile_inputs_give_the_numpy_loops_values(preset, monkeypatch):
    # Values beyond the grid, beyond float32's integers and near its largest, and a
    # permuted (non-contiguous) input whose layout the results keep. (NaN and infinities
    # are refused before either runs: test_neurons_grid.py.)
    qconfig = xylo.qconfig() if preset == "xylo" else loihi.qconfig()
    options = loihi.neuron_options() if preset == "loihi" else {}
    layer = ann.LIF(tau_mem=10.0, tau_syn=5.0, qconfig=qconfig, **options)
    x = torch.randn(7, 3, 5, generator=torch.Generator().manual_seed(2)) * 3
    x[0, 0, :4] = torch.tensor([3.4e38, -3.4e38, 2.0**24 + 1, 3e38])
    x[2, 1, 1] = 1e30
    x = x.permute(1, 0, 2)
    spec = layer.spec()
    compiled, numpy_loop = _results(x, spec, None, True, monkeypatch)
    _assert_identical(compiled, numpy_loop)


#: Input shapes and the layout of the loop's jobs (512 neurons each): 1100 features make
#: three jobs per sample, the last of them partial (its neurons start at a feature
#: offset); three features make jobs of 170 samples, the last partial; a conv-like input
#: takes one decay and threshold per channel.
JOB_SHAPES = [((2, 6, 1100), (1100,)), ((400, 4, 3), (3,)), ((3, 5, 2, 3, 4), (2, 1, 1))]


@pytest.mark.parametrize("shape, param_shape", JOB_SHAPES, ids=str)
@pytest.mark.parametrize("delay", [False, True])
def test_every_job_layout_gives_the_numpy_loops_values(shape, param_shape, delay, monkeypatch):
    generator = torch.Generator().manual_seed(11)
    state_grid = FixedGrid(1 / 64, -(2**15), 2**15 - 1)
    codes = torch.randint(1, 7, param_shape, generator=generator)
    decay = RuleDecay("bitshift", codes.tolist())
    alpha = 1 - 2.0 ** -codes.double()
    spec = NeuronSpec(
        alpha.float(),
        alpha.float().flip(0),
        torch.rand(param_shape, generator=generator) * 8 + 4,
        state_ops=StateOps(
            state_grid, state_grid, decay, RuleDecay("bitshift", codes.flip(0).tolist())
        ),
        input_delay=delay,
        strict_threshold=delay,
    )
    x = torch.randn(shape, generator=generator) * 6 + 2
    step = (shape[0],) + shape[2:]
    v0 = torch.randint(-300, 300, step, generator=generator) / 64
    for record in (False, True):
        compiled, numpy_loop = _results(x, spec, LIFState(v0, -v0), record, monkeypatch)
        _assert_identical(compiled, numpy_loop)
    assert 0 < compiled[0].sum() < compiled[0].numel()  # spikes, and silence


def test_an_empty_batch_and_a_single_step(monkeypatch):
    layer = ann.LIF(tau_mem=10.0, tau_syn=5.0, qconfig=xylo.qconfig())
    for shape in ((0, 4, 3), (2, 1, 3)):
        compiled, numpy_loop = _results(
            torch.rand(shape) * 4, layer.spec(), None, True, monkeypatch
        )
        _assert_identical(compiled, numpy_loop)


def test_a_kernel_that_fails_to_compile_warns_and_falls_back(monkeypatch):
    import aquatic.functional.neurons_grid_jit as grid_jit

    def broken():
        raise RuntimeError("no LLVM for this CPU")

    monkeypatch.setattr(grid_jit, "grid_forward_kernel", broken)
    grid_jit._ready.cache_clear()
    try:
        layer = ann.LIF(tau_mem=10.0, tau_syn=5.0, qconfig=xylo.qconfig())
        x = torch.rand(2, 6, 3) * 4
        with pytest.warns(RuntimeWarning, match="using the NumPy loop"):
            out = layer(x)
        layer.method = "loop"
        assert torch.equal(out, layer(x))
    finally:
        monkeypatch.undo()
        grid_jit._ready.cache_clear()
    assert grid_jit._ready()
