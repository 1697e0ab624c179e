"""A per-channel weight quantizer's compiled step (observe and fake-quantize in one call)
gives the bits of its two PyTorch steps, falls back where it does not apply, and leaves
the range alone when it refuses a weight."""

import copy

import pytest
import torch
from torch import nn

import aquatic
from aquatic.functional import fake_quant_jit, jit_calls, jit_openmp
from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver
from aquatic.quantizers import UniformQuantizer, fused

pytestmark = pytest.mark.skipif(not fake_quant_jit.available(), reason="needs Numba")


def bits(t):
    return t.detach().contiguous().view(torch.int32)


class WideMinMax(MinMaxObserver):
    """A subclass that merges otherwise (its range still only widens): the compiled
    step, which merges by min and max, is not for it."""

    _widens_only = True

    def _combine(self, cur_min, cur_max):
        return super()._combine(cur_min * 2, cur_max * 2)


class OwnAverage(MovingAverageMinMaxObserver):
    """A subclass with its own float merge: not the compiled step's."""

    def _combine_float(self, cur_min, cur_max, old_min, old_max):
        return super()._combine_float(cur_min, cur_max, old_min, old_max)


def weights(shape, steps=6):
    """A drifting weight: growing and shrinking ranges, a zero row, tiny values, and
    ties: rows of (k + 1/2) s with their largest magnitude 127 s, so that their scale
    is about s and the codes land half-way (the last step has them)."""
    torch.manual_seed(sum(shape))
    w = torch.randn(shape)
    out = []
    for step in range(steps):
        w = w * (1.3 if step % 2 else 0.8) + 0.1 * torch.randn(shape)
        v = w.clone()
        if step == steps - 1:
            rows = v.view(shape[0], -1)
            s = torch.rand(shape[0], 1) * 0.1 + 1e-3
            k = torch.randint(-127, 127, rows.shape).float()
            rows.copy_((k + 0.5) * s)
            rows[:, :1] = 127 * s
        v[0] = 0.0
        v.view(shape[0], -1)[-1, :1] = 1e-30
        v.view(shape[0], -1)[-1, -1:] = -3e-39  # a subnormal too
        out.append(v)
    return out


def run(quantizer, inputs, enabled, monkeypatch):
    """Each step's output bits and input gradient, and the final observer buffers."""
    monkeypatch.setattr(fake_quant_jit, "ENABLED", enabled)
    results = []
    for step, data in enumerate(inputs):
        x = data.clone().requires_grad_()
        y = quantizer(x)
        y.backward(torch.full_like(y, float(step + 1)))
        results.append((bits(y), x.grad))
    observer = quantizer.observer
    return results, (bits(observer.min_val), bits(observer.max_val))


STEP_MODES = ["one call", "team", "function", "team, function"]


def step_mode(mode, threshold, monkeypatch, set_threads):
    """Set up ``mode``: every compiled step in one call on this thread; shared out on the
    OpenMP team (two threads, ``threshold`` of :mod:`fake_quant_jit` set to 1: every
    size); through the autograd.Function (every size); or both."""
    if "team" in mode:
        if not jit_openmp.usable():
            pytest.skip("no OpenMP team")
        set_threads(2)
        monkeypatch.setattr(fake_quant_jit, threshold, 1)
    if "function" in mode:
        for name in ("CLONE_LIMIT", "PRODUCT_LIMIT"):
            monkeypatch.setattr(fake_quant_jit, name, 1)


@pytest.mark.parametrize("shape", [(16, 40), (8, 3, 3, 3), (5, 1), (1, 300), (3, 5000)])
@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("mode", STEP_MODES)
def test_steps_equal_the_operations(shape, narrow, mode, monkeypatch, set_threads, record_calls):
    step_mode(mode, "PARALLEL_ABOVE", monkeypatch, set_threads)
    calls = record_calls(fake_quant_jit, "minmax_rows_step")
    q = UniformQuantizer(bits=8, ch_axis=0, narrow_range=narrow)
    inputs = weights(shape)
    ops = run(copy.deepcopy(q), inputs, False, monkeypatch)
    loop = run(copy.deepcopy(q), inputs, True, monkeypatch)
    assert len(calls) == len(inputs) - 1  # every step but the first (no range yet)
    assert all(result is not None for result in calls)
    for (ops_y, ops_g), (loop_y, loop_g) in zip(ops[0], loop[0]):
        assert torch.equal(loop_y, ops_y)
        assert torch.equal(loop_g, ops_g)
    assert torch.equal(loop[1][0], ops[1][0]) and torch.equal(loop[1][1], ops[1][1])
    # and torch's own per-channel kernel, with the scales of the final range
    scale, zero_point = q_final_qparams(loop, inputs, q, monkeypatch)
    expected = torch.fake_quantize_per_channel_affine(
        inputs[-1], scale, zero_point, 0, q.quant_min, q.quant_max
    )
    assert torch.equal(loop[0][-1][0], bits(expected))


def q_final_qparams(loop, inputs, q, monkeypatch):
    monkeypatch.setattr(fake_quant_jit, "ENABLED", True)
    fresh = copy.deepcopy(q)
    for data in inputs:
        fresh(data)
    assert torch.equal(bits(fresh.observer.min_val), loop[1][0])
    return fresh.observer.calculate_qparams()


@pytest.mark.parametrize(
    "build",
    [
        lambda: UniformQuantizer(bits=8, ch_axis=1),  # not the first axis
        lambda: UniformQuantizer(bits=8, ch_axis=0, symmetric=False),
        lambda: UniformQuantizer(bits=8, ch_axis=0, signed=False),
        lambda: UniformQuantizer(bits=8, ch_axis=0, power_of_two=True),
        lambda: UniformQuantizer(bits=8, ch_axis=0, rounding="floor"),
        lambda: UniformQuantizer(bits=8, ch_axis=0, observer=MovingAverageMinMaxObserver),
        lambda: UniformQuantizer(bits=8, power_of_two=True),
        lambda: UniformQuantizer(bits=8, rounding="stochastic"),
        lambda: UniformQuantizer(bits=8, observer=WideMinMax),
        lambda: UniformQuantizer(bits=8, observer=OwnAverage),
    ],
)
def test_other_quantizers_take_the_operations(build):
    q = build()
    q(torch.randn(6, 5))  # a range
    assert fused.fused_step(q, torch.randn(6, 5)) is None


def test_other_tensors_take_the_operations(monkeypatch):
    q = UniformQuantizer(bits=8, ch_axis=0)
    x = torch.randn(6, 5)
    assert fused.fused_step(q, x) is None  # no range yet
    q(x)
    assert fused.fused_step(q, torch.randn(5, 6).t()) is None  # not contiguous
    assert fused.fused_step(q, x.double()) is None
    assert fused.fused_step(q, torch.randn(7, 5)) is None  # other channels
    q.observer.min_val = q.observer.min_val.repeat_interleave(2)[::2]  # strided
    assert fused.fused_step(q, x) is None  # the loops write ranges by address
    q.observer.min_val = q.observer.min_val.contiguous()
    monkeypatch.setattr(fused, "distributed", lambda: True)
    assert fused.fused_step(q, x) is None  # ranks reduce their extrema first
    monkeypatch.undo()
    assert fused.fused_step(q, x) is not None


def test_an_observer_subclass_with_its_own_merge_takes_the_operations():
    q = UniformQuantizer(bits=8, ch_axis=0, observer=WideMinMax)
    q(torch.randn(6, 5))
    assert fused.fused_step(q, torch.randn(6, 5)) is None


def test_an_observer_on_another_range_takes_the_operations():
    q = UniformQuantizer(bits=8)
    q.observer.quant_max = 100
    assert fused.fused_step(q, torch.randn(6, 5)) is None


REFUSERS = {
    "per channel": lambda: UniformQuantizer(bits=8, ch_axis=0),
    "per tensor": lambda: UniformQuantizer(
        bits=8, signed=False, symmetric=False, observer=MovingAverageMinMaxObserver
    ),
}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 3.39e38])
@pytest.mark.parametrize("kind", REFUSERS)
@pytest.mark.parametrize("when", ["first", "later", "later, on the team"])
def test_a_refused_tensor_raises_as_before_and_keeps_the_range(
    bad, kind, when, monkeypatch, set_threads
):
    if when == "later, on the team":
        if not jit_openmp.usable():
            pytest.skip("no OpenMP team")
        set_threads(2)
        monkeypatch.setattr(fake_quant_jit, "PARALLEL_ABOVE", 1)
        monkeypatch.setattr(fake_quant_jit, "SHARE_OBSERVE_FROM", 1)
    messages = []
    for enabled in (False, True):
        monkeypatch.setattr(fake_quant_jit, "ENABLED", enabled)
        q = REFUSERS[kind]()
        if when != "first":
            q(torch.randn(6, 5))
        before = (bits(q.observer.min_val), bits(q.observer.max_val), q.observer.initialized)
        x = torch.randn(6, 5)
        x[3, 2] = bad
        with pytest.raises(ValueError) as error:
            q(x)
        messages.append(str(error.value))
        after = (bits(q.observer.min_val), bits(q.observer.max_val), q.observer.initialized)
        assert after[0].equal(before[0]) and after[1].equal(before[1])
        assert after[2] == before[2]
    assert messages[0] == messages[1]


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10)
    )


class Shared(nn.Module):
    """A forward of its own, with one layer used twice (its quantizers observe two
    tensors a step) and a residual sum."""

    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.inp = nn.Linear(48, 32)
        self.twice = nn.Linear(32, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.inp(self.flat(x)))
        h = h + torch.relu(self.twice(torch.relu(self.twice(h))))
        return self.out(h)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("model", [mlp, cnn, Shared])
@pytest.mark.parametrize("team", [False, True], ids=["sizes as they come", "on the team"])
def test_training_is_the_same_bits(model, per_channel, team, monkeypatch, set_threads):
    if team:  # every tensor's step shared out on the OpenMP team
        if not jit_openmp.usable():
            pytest.skip("no OpenMP team")
        set_threads(2)
        for name in ("PARALLEL_ABOVE", "SHARE_OBSERVE_FROM"):
            monkeypatch.setattr(fake_quant_jit, name, 1)
    qconfig = aquatic.qconfig.int8
    if per_channel:
        qconfig = qconfig._replace(weight=UniformQuantizer.with_args(bits=8, ch_axis=0))
    torch.manual_seed(0)
    float_model = model()
    x = torch.randn(16, 3, 4, 4)
    y = torch.randint(0, 10, (16,))
    states = []
    for enabled in (False, True):
        monkeypatch.setattr(fake_quant_jit, "ENABLED", enabled)
        qmodel = aquatic.quantize(float_model, qconfig)
        optimizer = torch.optim.SGD(qmodel.parameters(), lr=0.1)
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.cross_entropy(qmodel(x), y).backward()
            optimizer.step()
        states.append(qmodel.state_dict())
    assert states[0].keys() == states[1].keys()
    for name, value in states[0].items():
        assert torch.equal(states[1][name], value), name


class Noisy(UniformQuantizer):
    """A subclass that fake-quantizes in its own way: its ``fake_quantize`` must run."""

    def fake_quantize(self, input, extrema=None):
        return super().fake_quantize(input, extrema) + 1.0


class Counting(UniformQuantizer):
    """A subclass that observes in its own way: its ``observe`` must run."""

    seen = 0

    def observe(self, input):
        Counting.seen += 1
        return super().observe(input)


def test_subclasses_with_their_own_steps_keep_them():
    x = torch.randn(6, 5)
    noisy = Noisy(bits=8, ch_axis=0)
    plain = UniformQuantizer(bits=8, ch_axis=0)
    for _ in range(2):
        assert torch.equal(noisy(x), plain(x) + 1.0)
    counting = Counting(bits=8, ch_axis=0)
    for _ in range(3):
        counting(x)
    assert Counting.seen == 3


OBSERVERS = {
    "min/max": MinMaxObserver,
    "average 0.01": MovingAverageMinMaxObserver,
    "average 0.7": MovingAverageMinMaxObserver.with_args(averaging_constant=0.7),
    "average 1": MovingAverageMinMaxObserver.with_args(averaging_constant=1.0),
}
GRIDS = {
    "int8": dict(bits=8),
    "uint8 affine": dict(bits=8, signed=False, symmetric=False),
    "int4 affine": dict(bits=4, symmetric=False),
    "uint8 symmetric": dict(bits=8, signed=False),
    "int8 narrow": dict(bits=8, narrow_range=True),
}


def activations(steps=6):
    """Drifting batches: ranges that grow, shrink and move off zero; ties on the
    last range's grid; zeros, a subnormal, a constant batch and a range whose width
    overflows float32."""
    torch.manual_seed(5)
    out = [torch.randn(40, 30) * 1e-9]  # a first range under the smallest scale
    for step in range(steps):
        x = torch.randn(40, 30) * (2.0 if step % 2 else 0.5) + (step - 2)
        x[0, :3] = torch.tensor([0.0, -0.0, -3e-39])
        out.append(x)
    out.append(torch.full((40, 30), 1.5))
    ties = (torch.randint(-60, 60, (40, 30)).float() + 0.5) * 0.05
    out.append(ties)
    huge = torch.randn(40, 30) * 1e37
    huge[0, :2] = torch.tensor([-2.5e38, 2.5e38])  # max - min overflows float32
    out.append(huge)
    return out


def shared_entries(monkeypatch):
    """The names of the entry points run on the OpenMP team, in order."""
    names = []
    original = jit_calls.Call.run

    def run(call, name, parts):
        names.append(name)
        return original(call, name, parts)

    monkeypatch.setattr(jit_calls.Call, "run", run)
    return names


@pytest.mark.parametrize("observer", OBSERVERS, ids=str)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("mode", STEP_MODES)
def test_per_tensor_steps_equal_the_operations(
    observer, grid, grad, mode, monkeypatch, record_calls, set_threads
):
    step_mode(mode, "SHARE_OBSERVE_FROM", monkeypatch, set_threads)
    calls = record_calls(fake_quant_jit, "observe_scalar_step")
    shared = shared_entries(monkeypatch)
    q = UniformQuantizer(observer=OBSERVERS[observer], **GRIDS[grid])
    results = []
    for enabled in (False, True):
        monkeypatch.setattr(fake_quant_jit, "ENABLED", enabled)
        quantizer = copy.deepcopy(q)  # starts with no range: the first step sets it
        steps = []
        for step, data in enumerate(activations()):
            x = data.clone().requires_grad_(grad)
            y = quantizer(x)
            if grad:
                y.backward(torch.full_like(y, float(step + 1)))
            steps.append((bits(y), x.grad))
        observer_ = quantizer.observer
        steps.append((bits(observer_.min_val), bits(observer_.max_val)))
        assert observer_.initialized
        results.append(steps)
    assert len(calls) == len(activations()) and all(c is not None for c in calls)
    assert shared == (["scalar"] * len(calls) if "team" in mode else [])
    for ops, loop in zip(*results):
        assert torch.equal(loop[0], ops[0])
        assert (loop[1] is None and ops[1] is None) or torch.equal(loop[1], ops[1])


@pytest.mark.parametrize("shape", [(7, 173), (3,), (1, 1, 5)])
@pytest.mark.parametrize("threads", [2, 3])
def test_a_team_of_more_shares_than_values_or_uneven_ones(shape, threads, monkeypatch, set_threads):
    """Shares of every size, empty ones included (3 values in 6 shares), merge to the
    tensor's extrema."""
    if not jit_openmp.usable():
        pytest.skip("no OpenMP team")
    set_threads(threads)
    monkeypatch.setattr(fake_quant_jit, "SHARE_OBSERVE_FROM", 1)
    shared = shared_entries(monkeypatch)
    torch.manual_seed(threads)
    q = UniformQuantizer(bits=8, signed=False, symmetric=False)
    ops = copy.deepcopy(q)
    for step in range(3):
        x = torch.randn(shape) * (step + 1)
        x.view(-1)[-1] = 5.0 * (step + 1)  # the maximum in the last share
        y = q(x)
        monkeypatch.setattr(fake_quant_jit, "ENABLED", False)
        assert torch.equal(bits(y), bits(ops(x)))
        monkeypatch.setattr(fake_quant_jit, "ENABLED", True)
    assert torch.equal(bits(q.observer.max_val), bits(ops.observer.max_val))
    assert torch.equal(bits(q.observer.min_val), bits(ops.observer.min_val))
    assert shared == ["scalar"] * 3


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("team", [True, False], ids=["team", "no team"])
def test_large_tensors_take_the_team_or_torch_threads(
    threads, team, monkeypatch, set_threads, record_calls
):
    """From SHARE_OBSERVE_FROM values on more than one thread, the step is shared out on
    the OpenMP team; without a team, the observer's aminmax runs on PyTorch's threads
    (the compiled step declines); on one thread, one compiled call."""
    if team and not jit_openmp.usable():
        pytest.skip("no OpenMP team")
    set_threads(threads)
    monkeypatch.setattr(fake_quant_jit, "SHARE_OBSERVE_FROM", 100)  # every tensor here
    monkeypatch.setattr(jit_openmp, "ENABLED", team)
    calls = record_calls(fake_quant_jit, "observe_scalar_step")
    shared = shared_entries(monkeypatch)
    q = UniformQuantizer(bits=8, signed=False, symmetric=False)
    ops = copy.deepcopy(q)
    for data in activations()[:3]:
        y = q(data)
        monkeypatch.setattr(fake_quant_jit, "ENABLED", False)
        assert torch.equal(bits(y), bits(ops(data)))
        monkeypatch.setattr(fake_quant_jit, "ENABLED", True)
    declined = threads > 1 and not team
    assert len(calls) == 3 and all((c is None) == declined for c in calls)
    assert shared == (["scalar"] * 3 if threads > 1 and team else [])


def test_the_first_large_activation_settles_the_heap(monkeypatch):
    """A megabyte or more through the compiled step frees the block of cpu_heap.settle
    once (so glibc keeps what training steps free); smaller tensors do not."""
    from aquatic.functional import cpu_heap

    monkeypatch.setattr(cpu_heap, "_settled", False)
    q = UniformQuantizer(bits=8, signed=False, symmetric=False)
    q(torch.rand(64, 16, 8, 8))  # 256 KiB
    assert not cpu_heap._settled
    q(torch.rand(64, 16, 16, 16))  # 1 MiB
    assert cpu_heap._settled
