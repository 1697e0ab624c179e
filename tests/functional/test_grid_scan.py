"""The compiled recurrence of the quantized states' backward pass (``jit_scan``) gives the
``addcmul_`` steps' gradients bit for bit: over the grid sequences' options, blocks of
steps, masks of saturated states, per-neuron decays (which it leaves to PyTorch),
float32 and float64, and the delayed input's buffer layout."""

import importlib.util

import pytest
import torch

from aquatic.functional import Grid, LIFState, NeuronSpec, StateOps, neuron_sequence
from aquatic.functional import neurons_grid_jit
from aquatic.functional import neurons_kernel as kernel_module

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="needs numba (pip install aquatic[fast])"
)


class FixedGrid:
    """A state quantizer that describes its fixed grid (the fused sequence runs it)."""

    def __init__(self, scale, low, high):
        self.grid = Grid(torch.tensor(scale), torch.tensor(0, dtype=torch.int32), low, high)

    def __call__(self, v):
        raise AssertionError("the fused sequence runs the grid itself")

    def fixed_grid(self):
        return self.grid


GRID = FixedGrid(1 / 64, -512, 511)  # saturates at about +-8

CASES = [
    dict(),
    dict(reset="zero"),
    dict(reset="zero", min_v_mem=-0.5, bias=0.05),
    dict(detach_reset=True, norm_input=True),
    dict(strict_threshold=True, input_after_decay=True, input_delay=True, reset="zero"),
    dict(spiking=False, threshold=None, input_delay=True),
]


def _gradients(spec, x, state, monkeypatch, record_calls, compiled):
    monkeypatch.setattr(neurons_grid_jit, "SCAN_MAX", neurons_grid_jit.SCAN_MAX if compiled else 0)
    scan = neurons_grid_jit.scan
    ran = record_calls(neurons_grid_jit, "scan")
    leaves = [x.clone().requires_grad_()]
    params = [spec.alpha_mem, spec.alpha_syn, spec.threshold, spec.bias]
    params = [p.clone().requires_grad_() if isinstance(p, torch.Tensor) else p for p in params]
    leaves += [p for p in params if isinstance(p, torch.Tensor)]
    run = spec._replace(
        alpha_mem=params[0], alpha_syn=params[1], threshold=params[2], bias=params[3]
    )
    result = neuron_sequence(leaves[0], run, state=state, record_states=True, method="fused")
    generator = torch.Generator().manual_seed(3)
    loss = (result.output * torch.randn(result.output.shape, generator=generator)).sum()
    loss = loss + (result.state.v_mem**2).sum() + (result.v_mem * 0.1).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    monkeypatch.setattr(neurons_grid_jit, "scan", scan)  # the next call records afresh
    return grads, ran


@pytest.mark.parametrize("per_neuron", [False, True], ids=["scalar decay", "per-neuron decay"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block_elements", [48, kernel_module.BLOCK_ELEMENTS])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_compiled_recurrence_is_the_addcmul_steps(
    case, block_elements, dtype, per_neuron, monkeypatch, record_calls
):
    monkeypatch.setattr(kernel_module, "BLOCK_ELEMENTS", block_elements)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4, 25, 6, generator=generator, dtype=torch.float64).to(dtype) * 6 + 2
    case = dict(case)
    synaptic = case.get("spiking", True)
    ops = StateOps(GRID, GRID if synaptic else None)
    shape = (6,) if per_neuron else ()
    spec = NeuronSpec(
        torch.full(shape, 0.875, dtype=dtype),
        torch.full(shape, 0.96875, dtype=dtype) if synaptic else None,
        case.pop("threshold", torch.tensor(0.75, dtype=dtype)),
        state_ops=ops,
        **case,
    )
    v0 = torch.randint(-100, 100, (4, 6), generator=generator).to(dtype) / 64
    state = LIFState(v0, v0.flip(0) if synaptic else None)
    compiled, ran = _gradients(spec, x, state, monkeypatch, record_calls, True)
    stepwise, ran_off = _gradients(spec, x, state, monkeypatch, record_calls, False)
    assert any(ran) and not any(ran_off)  # (the per-neuron decay's unmasked blocks: PyTorch)
    for a, b in zip(compiled, stepwise):
        assert (a is None) == (b is None)
        assert a is None or torch.equal(a, b)
