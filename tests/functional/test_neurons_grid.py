"""The fused sequence with quantized states equals the step-by-step loop.

Values bit for bit, gradients to float32 rounding, over the hardware presets, their
options (Loihi's orderings, multi-spike counts, resets, floors, saturation) and state
operations written here from their definitions (a fixed grid, Xylo's and Loihi's decay
rules).
"""

import copy

import numpy as np
import pytest
import torch

from aquatic import QConfig
from aquatic import nn as ann
from aquatic.functional import Grid, LIFState, NeuronSpec, StateOps, neuron_sequence, neuron_step
from aquatic.functional.neurons_spec import lif_recurrent
from aquatic.functional.neurons_grid_backward import _passing
from aquatic.functional.neuron_types import Options
from aquatic.functional.neurons_grid import GridRules, StateGrid, decay_on_grid, grid_rules
from aquatic.functional import neurons_kernel as kernel_module
from aquatic.functional.neurons_grid_kernel import _subtract_stays_in_range as stays
from aquatic.functional.neurons_grid_kernel import grid_decayer, grid_quantizer
from aquatic.functional.neurons_grid_kernel import reset_of, spikes_of
from aquatic.functional.neurons_grid_steps import StepQuantizer
from aquatic.hw import loihi, xylo
from aquatic.quantizers import BitShiftDecay, UniformDecay, UniformQuantizer

FUSED = "_GridSequenceBackward"
F64 = torch.float64


class FixedGrid:
    """A state quantizer written from its definition: round to the grid, saturate."""

    def __init__(self, scale, low, high):
        self.grid = Grid(torch.tensor(scale), torch.tensor(0, dtype=torch.int32), low, high)

    def __call__(self, v):
        codes = torch.clamp(
            torch.round(v / self.grid.scale), self.grid.quant_min, self.grid.quant_max
        )
        inside = (torch.round(v / self.grid.scale) >= self.grid.quant_min) & (
            torch.round(v / self.grid.scale) <= self.grid.quant_max
        )
        value = codes * self.grid.scale
        return value.detach() + (v - v.detach()) * inside  # straight through inside the range

    def fixed_grid(self):
        return self.grid


class RuleDecay:
    """A chip's decay written from its definition (Xylo: x - max(x >> dash, 1) toward
    zero; Loihi: (4096 - d) x >> 12 toward zero) on a grid, gradient of alpha * y."""

    def __init__(self, rule, grid):
        self.rule, self.grid = rule, grid

    def _codes(self, alpha):
        leak = 1 - alpha.detach().double()
        if self.rule == "bitshift":
            return torch.round(-torch.log2(leak)).long()
        return torch.round(leak * 4096).long()

    def __call__(self, y, alpha):
        scale = self.grid.scale
        q = torch.clamp(torch.round(y.detach() / scale), self.grid.quant_min, self.grid.quant_max)
        q = q.long()
        codes = self._codes(alpha)
        if self.rule == "bitshift":
            shifted = q >> codes
            decayed = q - torch.where(q > 0, torch.clamp(shifted, min=1), shifted)
        else:
            product = q * (4096 - codes)
            decayed = torch.sign(product) * (product.abs() >> 12)
        value = decayed.to(y.dtype) * scale
        return value + (alpha * y - (alpha * y).detach())

    def fixed_rule(self, alpha):
        return self.rule, 12 if self.rule == "multiplicative" else 0, self._codes(alpha)


def _loss(result, generator):
    loss = (result.output * torch.randn(result.output.shape, generator=generator)).sum()
    loss = loss + (result.state.v_mem**2).sum()
    for trace in (result.v_mem, result.i_syn):
        if trace is not None:
            loss = loss + (trace * torch.randn(trace.shape, generator=generator)).sum()
    return loss


def _compare(spec, x, state=None, record=True, tolerance=1e-5):
    results, grads = [], []
    for method in ("loop", "auto"):
        leaves = [x.clone().requires_grad_()]
        params = [p for p in (spec.alpha_mem, spec.alpha_syn, spec.threshold, spec.bias)]
        params = [p.clone().requires_grad_() if isinstance(p, torch.Tensor) else p for p in params]
        leaves += [p for p in params if isinstance(p, torch.Tensor)]
        run = spec._replace(
            alpha_mem=params[0], alpha_syn=params[1], threshold=params[2], bias=params[3]
        )
        result = neuron_sequence(leaves[0], run, state=state, record_states=record, method=method)
        results.append(result)
        loss = _loss(result, torch.Generator().manual_seed(3))
        grads.append(torch.autograd.grad(loss, leaves, allow_unused=True))
    loop, fused = results
    assert type(fused.output.grad_fn).__name__ == FUSED
    assert type(loop.output.grad_fn).__name__ != FUSED
    for a, b in zip(loop, fused):
        for c, d in zip(a, b) if isinstance(a, tuple) else [(a, b)]:
            assert (c is None and d is None) or torch.equal(c, d)
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            atol = tolerance * float(a.abs().max()) + tolerance * 1e-2
            torch.testing.assert_close(b, a, rtol=tolerance, atol=atol)
    return loop


GRID = FixedGrid(1 / 64, -512, 511)  # saturates at about +-8

CASES = [
    dict(),
    dict(reset="zero"),
    dict(max_spikes=31),
    dict(max_spikes=4, reset="zero", min_v_mem=-0.5),
    dict(detach_reset=True, norm_input=True, bias=0.05),
    dict(strict_threshold=True),
    dict(strict_threshold=True, reset="zero", input_after_decay=True),
    dict(strict_threshold=True, input_after_decay=True, input_delay=True, reset="zero"),
    dict(spiking=False, threshold=None, min_v_mem=-1.0),
    dict(spiking=False, threshold=None, input_delay=True),
]


@pytest.mark.parametrize("rule", ["", "bitshift", "multiplicative"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_grid_states_fused_equal_the_loop(case, rule, dtype=F64):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4, 25, 6, generator=generator, dtype=F64).to(dtype) * 6 + 2  # reaches the range
    case = dict(case)
    synaptic = not case.get("spiking", True) is False
    decay = RuleDecay(rule, GRID.grid) if rule else None
    ops = StateOps(GRID, GRID if synaptic else None, decay, decay if synaptic else None)
    alpha_mem = torch.tensor(0.875, dtype=dtype)  # 1 - 2**-3 = 1 - 512 / 4096
    spec = NeuronSpec(
        alpha_mem,
        torch.tensor(0.96875, dtype=dtype) if synaptic else None,  # 1 - 2**-5 = 1 - 128 / 4096
        case.pop("threshold", torch.tensor(0.75, dtype=dtype)),
        state_ops=ops,
        **case,
    )
    v0 = torch.randint(-100, 100, (4, 6), generator=generator).to(dtype) / 64
    state = LIFState(v0, v0.flip(0) if synaptic else None)
    loop = _compare(spec, x, state, tolerance=1e-10 if dtype == F64 else 1e-5)
    states = loop.i_syn if synaptic else loop.v_mem
    assert states.abs().max() >= 7.5  # the states reach the end of their range
    assert torch.equal(torch.round(states * 64) / 64, states)  # on the grid


@pytest.mark.parametrize("block_elements", [1, 48, 72])  # blocks of 1, 2 and 3 steps
@pytest.mark.parametrize("case", [CASES[2], CASES[4], CASES[7], CASES[8]], ids=str)
def test_blocks_of_steps_equal_the_loop(case, block_elements, monkeypatch):
    monkeypatch.setattr(kernel_module, "BLOCK_ELEMENTS", block_elements)
    test_grid_states_fused_equal_the_loop(case, "multiplicative")


@pytest.mark.parametrize("record", [False, True])
@pytest.mark.parametrize("preset", ["xylo", "loihi"])
def test_inference_equals_the_loop(preset, record):
    model = _preset_pair(preset, record_states=record)
    x = torch.rand(3, 20, 6, generator=torch.Generator().manual_seed(4)) * 4
    outputs = []
    with torch.no_grad():
        for method in ("loop", "auto"):
            model[1].method = method
            outputs.append((model(x), dict(model[1].recordings)))
    (out_l, rec_l), (out_f, rec_f) = outputs
    assert torch.equal(out_l, out_f) and out_l.sum() > 0
    assert rec_l.keys() == rec_f.keys() and bool(rec_l) == record
    for key in rec_l:
        assert torch.equal(rec_l[key], rec_f[key])


def test_a_mask_block_that_passes_every_gradient_is_skipped():
    mask = torch.ones(3, 2, 4, dtype=torch.bool)
    assert _passing(mask) is None and _passing(None) is None
    mask[2, 1, 3] = False  # one saturated value keeps the block's mask
    assert _passing(mask) is mask
    assert _passing(mask[:2]) is None


def test_decay_on_grid_is_the_quantizers_rule():
    grid = UniformQuantizer(bits=12, scale=0.125).grid()
    states = torch.arange(-300, 300, dtype=torch.float32) * 0.125
    for quantizer, rule, bits in (
        (BitShiftDecay(), "bitshift", 0),
        (UniformDecay(), "multiplicative", 12),
    ):
        alpha = quantizer(torch.tensor(0.9))
        codes = quantizer.decay_codes(alpha)
        state_grid = StateGrid(grid.scale, grid.zero_point, -2048, 2047, rule, bits, codes)
        expected = quantizer.decay_state(states, alpha, 0.125, -2048, 2047)
        assert torch.equal(decay_on_grid(states, alpha, state_grid), expected)


def test_inputs_beyond_cpu_float32_and_float64_run_the_loop():
    ops = StateOps(GRID, None, RuleDecay("bitshift", GRID.grid), None)
    spec = NeuronSpec(torch.tensor(0.875), threshold=torch.tensor(0.75), state_ops=ops)
    x = (torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(0)) * 2).requires_grad_()
    assert type(neuron_sequence(x, spec).output.grad_fn).__name__ == FUSED
    half = x.detach().half().requires_grad_()
    assert type(neuron_sequence(half, spec).output.grad_fn).__name__ != FUSED
    with pytest.raises(ValueError, match="float16.*method='loop'"):
        neuron_sequence(half, spec, method="fused")


@pytest.mark.parametrize("method", ["auto", "fused"])
def test_an_input_that_is_not_a_tensor_is_a_type_error(method):
    ops = StateOps(GRID, None, RuleDecay("bitshift", GRID.grid), None)
    spec = NeuronSpec(torch.tensor(0.875), threshold=torch.tensor(0.75), state_ops=ops)
    with pytest.raises(TypeError, match="ndarray"):
        neuron_sequence(np.zeros((2, 5, 3), np.float32), spec, method=method)


def test_undescribed_operations_run_the_loop():
    x = torch.rand(2, 5, 3, requires_grad=True)
    plain = StateOps(quantize_v_mem=lambda v: torch.round(v * 8) / 8)
    assert grid_rules(plain, 0.9, None, False, False) is None
    out = neuron_sequence(x, NeuronSpec(0.9, state_ops=plain)).output
    assert type(out.grad_fn).__name__ != FUSED
    # An observing quantizer moves its grid during a sequence: the loop runs it.
    observed = ann.LIF(tau_mem=4.0, qconfig=QConfig(state=UniformQuantizer.with_args(bits=8)))
    assert type(observed(x).grad_fn).__name__ != FUSED
    assert grid_rules(StateOps(), 0.9, None, True, False) == GridRules(strict=True)


def _preset_pair(preset, **kwargs):
    torch.manual_seed(0)
    if preset == "xylo":
        q = xylo.qconfig()
        neuron = ann.LIF(tau_mem=8.0, tau_syn=4.0, max_spikes=31, qconfig=q, **kwargs)
    else:
        q = loihi.qconfig()
        neuron = ann.LIF(tau_mem=8.0, tau_syn=4.0, qconfig=q, **loihi.neuron_options(), **kwargs)
    return torch.nn.Sequential(ann.Linear(6, 5, qconfig=q), neuron)


@pytest.mark.parametrize(
    "preset, kwargs",
    [
        ("xylo", dict(train_threshold=True, train_decay=True)),
        ("xylo", dict(reset="zero", record_states=True)),
        ("loihi", dict(train_threshold=True, train_decay=True)),
        ("loihi", dict(record_states=True)),
    ],
    ids=str,
)
def test_presets_train_as_the_loop(preset, kwargs):
    model = _preset_pair(preset, **kwargs)
    x = torch.rand(3, 20, 6, generator=torch.Generator().manual_seed(2)) * 4
    results = []
    for method in ("loop", "auto"):
        copy_ = copy.deepcopy(model)
        copy_[1].method = method
        inputs = x.clone().requires_grad_()
        out = copy_(inputs)
        ((out - 0.5) ** 2).sum().backward()
        grads = [inputs.grad] + [p.grad for p in copy_.parameters()]
        results.append((out, grads, copy_[1].recordings))
    (out_l, grads_l, rec_l), (out_f, grads_f, rec_f) = results
    assert type(out_f.grad_fn).__name__ == FUSED
    assert torch.equal(out_l, out_f) and out_l.sum() > 0
    assert rec_l.keys() == rec_f.keys()
    for key in rec_l:
        assert torch.equal(rec_l[key], rec_f[key])
    for a, b in zip(grads_l, grads_f):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()) + 1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("zero_point", [0, 3])
@pytest.mark.parametrize("high", [100, 2**23 - 1])  # rounded by additions, by torch.round
def test_grid_quantizer_is_torch_fake_quantization(dtype, zero_point, high):
    scale = torch.tensor(0.1)  # not a power of two: products round
    grid = StateGrid(scale, torch.tensor(zero_point, dtype=torch.int32), -high, high)
    steps = torch.cat([torch.arange(-250, 250), torch.arange(-250, 250) + high - 100])
    ties = (steps + 0.5) * 0.1  # halfway between grid points, and beyond the range
    noise = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 8
    values = torch.cat([ties, noise, torch.tensor([1e30, -1e30, 4.2e6, -4.3e6])]).to(dtype)
    value, mask = grid_quantizer(grid, dtype)(values)
    enabled = torch.ones(1, dtype=torch.long)
    expected, expected_mask = torch._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
        values, scale, grid.zero_point, enabled, -high, high
    )
    assert torch.equal(value, expected) and torch.equal(mask, expected_mask)
    assert not mask.all() and mask.any()


@pytest.mark.parametrize("high", [2**15 - 1, 2**23 - 1])  # Xylo's, Loihi's states
@pytest.mark.parametrize("rule", ["bitshift", "multiplicative"])
def test_grid_decayer_is_the_integer_rule(rule, high):
    quantizer = BitShiftDecay() if rule == "bitshift" else UniformDecay()
    alpha = quantizer(torch.tensor([0.0, 0.5, 0.9, 0.999, 1.0]))
    codes = quantizer.decay_codes(alpha)
    low = -high
    grid = StateGrid(
        torch.tensor(0.3),
        torch.tensor(0, dtype=torch.int32),
        low,
        high,
        rule,
        12 if rule == "multiplicative" else 0,
        codes,
    )
    edges = torch.tensor([low, high, low + 7, high - 9, 2 * high, -3 * high])
    states = torch.cat([torch.arange(-40, 40), edges])
    states = states.unsqueeze(1).float() * torch.tensor(0.3)
    expected = quantizer.decay_state(states, alpha, torch.tensor(0.3), low, high)
    assert torch.equal(grid_decayer(grid, alpha, torch.float32)(states), expected)


def test_subtract_reset_codes_are_clamped_unless_they_stay_in_range():
    def quantizer(low, high):
        grid = StateGrid(torch.tensor(0.25), torch.tensor(0, dtype=torch.int32), low, high)
        return StepQuantizer(grid, torch.float32)

    assert stays(quantizer(-8, 7), torch.tensor([0.0, 3.0]))
    assert not stays(quantizer(-8, 7), torch.tensor([-1.0]))
    assert not stays(quantizer(2, 7), torch.tensor([3.0]))


@pytest.mark.parametrize("rule", ["bitshift", "multiplicative"])
@pytest.mark.parametrize("case", [CASES[0], CASES[5], CASES[4], CASES[6], CASES[7]], ids=str)
def test_float32_grid_states_equal_the_loop(case, rule):
    # float32: the current's quantizer passes its decay, and without norm_input or a
    # bias the membrane's quantizer takes the sum of the codes.
    test_grid_states_fused_equal_the_loop(case, rule, torch.float32)


@pytest.mark.parametrize("after_decay", [False, True])
def test_inputs_near_the_float32_range_equal_the_loop(after_decay):
    # On a power-of-two grid the current's codes add the input divided by the step,
    # which overflows first; the clamp and the masks see the same codes.
    decay = RuleDecay("multiplicative", GRID.grid)
    spec = NeuronSpec(
        torch.tensor(0.875),
        torch.tensor(0.96875),
        torch.tensor(0.75),
        reset="zero",
        input_after_decay=after_decay,
        state_ops=StateOps(GRID, GRID, decay, decay),
    )
    x = torch.randn(3, 12, 5, generator=torch.Generator().manual_seed(1)) * 4
    x[0, 3:6, :2] = torch.tensor([3e38, -3e38, 1e37]).view(3, 1)
    x[1, 2, 1] = 6e36
    with torch.no_grad():
        loop, fused = (
            neuron_sequence(x, spec, method=m, record_states=True) for m in ("loop", "fused")
        )
    for a, b in zip(loop, fused):
        for c, d in zip(a, b) if isinstance(a, tuple) else [(a, b)]:
            assert (c is None and d is None) or torch.equal(c, d)
    assert loop.i_syn.abs().max() >= 7.5  # saturated (then decayed)


@pytest.mark.parametrize("synaptic", [False, True])
def test_delayed_input_gradient_of_several_dimensions_equals_the_loop(synaptic):
    # The input's gradient is read one step late from the buffer of the steps' gradients.
    decay = RuleDecay("multiplicative", GRID.grid)
    spec = NeuronSpec(
        torch.tensor(0.875, dtype=F64),
        torch.tensor(0.96875, dtype=F64) if synaptic else None,
        torch.tensor(0.75, dtype=F64),
        reset="zero",
        strict_threshold=True,
        input_delay=True,
        input_after_decay=synaptic,
        state_ops=StateOps(GRID, GRID if synaptic else None, decay, decay if synaptic else None),
    )
    x = torch.randn(3, 9, 2, 5, generator=torch.Generator().manual_seed(1), dtype=F64) * 4
    weights = torch.randn(3, 9, 2, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    grads = []
    for method in ("loop", "fused"):
        leaf = x.clone().requires_grad_()
        result = neuron_sequence(leaf, spec, method=method)
        loss = (result.output * weights).sum() + result.state.v_mem.sum()
        grads.append(torch.autograd.grad(loss, leaf)[0])
    assert grads[1].shape == x.shape and grads[1].is_contiguous()
    assert torch.equal(grads[1][:, -1], torch.zeros_like(x[:, -1]))  # reached no step
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("preset", ["xylo", "loihi"])
def test_an_empty_batch_trains(preset):
    # Loihi delays its input: backward lays out its gradient by the step's size, which
    # an empty batch has no element to read.
    model = _preset_pair(preset, train_threshold=True, train_decay=True)
    x = torch.rand(0, 5, 6, requires_grad=True)
    out = model(x)
    out.sum().backward()
    assert out.shape == (0, 5, 5) and x.grad.shape == x.shape
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_zero_reset_of_a_block_is_torch_where(dtype):
    v = torch.tensor([[-0.0, 0.5, 2.0], [float("inf"), -3.0, float("nan")]], dtype=dtype)
    threshold = torch.tensor(1.0, dtype=dtype)
    options = Options("zero", None, 1, None, False, False, True)
    for strict in (False, True):
        fired = torch.gt(v, threshold) if strict else torch.ge(v, threshold)
        expected = torch.where(fired, torch.zeros((), dtype=dtype), v)
        reset = reset_of(v, threshold, options, strict)
        assert torch.equal(reset.isnan(), expected.isnan())
        finite = ~expected.isnan()
        assert torch.equal(reset[finite], expected[finite])
        assert torch.equal(reset[finite].signbit(), expected[finite].signbit())  # +0 where fired
        spikes = spikes_of(v, threshold, options, strict)
        assert spikes.dtype == dtype and torch.equal(spikes, fired.to(dtype))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("preset", ["xylo", "loihi"])
def test_nan_and_infinite_inputs_to_quantized_states_are_refused(preset, bad):
    # A grid has no code for them: every way (the loop, the fused sequence, one step,
    # the recurrent loop) refuses them before running, instead of disagreeing silently.
    layer = _preset_pair(preset)[1]
    spec = layer.spec()
    x = torch.rand(2, 4, 5)
    x[1, 2, 3] = bad
    for method in ("loop", "auto"):
        with pytest.raises(ValueError, match="NaN or infinite.*nan_to_num"):
            neuron_sequence(x, spec, method=method)
    with pytest.raises(ValueError, match="NaN or infinite"):
        neuron_step(x[:, 2], spec._replace(input_delay=False))
    with pytest.raises(ValueError, match="NaN or infinite"):
        lif_recurrent(x, spec._replace(input_delay=False), torch.zeros(5, 5))
    with pytest.raises(ValueError, match="NaN or infinite"):
        layer(x)
    # Float neurons pass them through, as torch does.
    float_spec = NeuronSpec(torch.tensor(0.9), None, torch.tensor(1.0))
    out = neuron_sequence(x, float_spec, record_states=True)
    assert not torch.isfinite(out.v_mem[1, 2:, 3]).any()
