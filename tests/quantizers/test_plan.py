"""A quantizer in training keeps what its compiled step decided (a Plan), and its next
steps give the bits of deciding afresh: values, gradients and ranges, through every
change that could alter the decision (mode, switches, settings, observer, buffers,
tensors), each of which drops the plan or makes it decline."""

import copy
import pickle

import pytest
import torch
from torch import nn

import aquatic
from aquatic.functional import fake_quant_jit
from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver
from aquatic.quantizers import Quantizer, UniformQuantizer, fused

pytestmark = pytest.mark.skipif(not fake_quant_jit.available(), reason="needs Numba")

QUANTIZERS = {
    "per tensor": lambda: UniformQuantizer(bits=8),
    "per tensor, moving average": lambda: UniformQuantizer(
        bits=8, signed=False, symmetric=False, observer=MovingAverageMinMaxObserver
    ),
    "per channel": lambda: UniformQuantizer(bits=8, ch_axis=0),
}


def swap_buffer(q):
    """The range's memory swapped under the same tensor object."""
    buffer = q.observer.min_val
    torch.utils.swap_tensors(buffer, buffer.clone())


def replace_behind(q):
    """A buffer replaced in the dictionary, as ``.to()`` does, without ``setattr``."""
    q.observer._buffers["max_val"] = q.observer._buffers["max_val"].clone()


def reload(q):
    other = copy.deepcopy(q)
    other(torch.randn(6, 5) * 7)
    q.load_state_dict(other.state_dict())


CHANGES = {
    "nothing": lambda q: None,
    "eval, a step, train": lambda q: (q.eval(), q(torch.randn(6, 5) * 9), q.train()),
    "fake quantization off and on": lambda q: (
        setattr(q, "fake_quant_enabled", False),
        q(torch.randn(6, 5)),
        setattr(q, "fake_quant_enabled", True),
    ),
    "observer off": lambda q: setattr(q, "observer_enabled", False),
    "a new observer": lambda q: setattr(q, "observer", copy.deepcopy(q.observer)),
    "the observer's range narrowed": lambda q: setattr(q.observer, "quant_max", 100),
    "the observer in eval mode": lambda q: q.observer.eval(),
    "rounding to floor": lambda q: setattr(q, "rounding", "floor"),
    "a buffer set": lambda q: setattr(q.observer, "min_val", q.observer.min_val * 2),
    "a buffer replaced behind the observer": replace_behind,
    "a buffer's memory swapped": swap_buffer,
    "to float64 and back": lambda q: (q.double(), q.float()),
    "a range loaded": reload,
    "the range written in place": lambda q: q.observer.max_val.mul_(3),
    "the range written behind its version": lambda q: q.observer.min_val.data.mul_(3),
}

INPUTS = {
    "float32": lambda: torch.randn(6, 5) * 3,
    "float64": lambda: torch.randn(6, 5, dtype=torch.float64),
    "not contiguous": lambda: torch.randn(5, 6).t() * 2,
    "a parameter": lambda: nn.Parameter(torch.randn(6, 5)),
}


def run(build, change, make_input, plans, monkeypatch):
    """Three steps, the change, three more: each step's value, input gradient and range."""
    monkeypatch.undo()
    if not plans:
        monkeypatch.setattr(Quantizer, "keep_plan", lambda self, plan: None)
    torch.manual_seed(0)
    q = build()
    results = []
    for step in range(6):
        if step == 3:
            change(q)
        x = (make_input() if step >= 3 else torch.randn(6, 5) * 2).detach().requires_grad_()
        y = q(x)
        y.backward(torch.randn(y.shape, dtype=y.dtype))
        results.append((y.detach(), x.grad, q.observer.min_val.clone(), q.observer.max_val.clone()))
    return results


@pytest.mark.parametrize("make_input", INPUTS.values(), ids=INPUTS.keys())
@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
@pytest.mark.parametrize("build", QUANTIZERS.values(), ids=QUANTIZERS.keys())
def test_steps_with_a_plan_equal_steps_without(build, change, make_input, monkeypatch):
    expected = run(build, change, make_input, False, monkeypatch)
    got = run(build, change, make_input, True, monkeypatch)
    for step, (left, right) in enumerate(zip(expected, got)):
        for a, b in zip(left, right):
            assert a.dtype == b.dtype and torch.equal(a, b), step


def run_repeats(build, change, plans, monkeypatch):
    """One weight, the same tensor at every call: four calls (repeats from the third),
    the change, four more; each call's value and range, and the weight's gradient."""
    monkeypatch.undo()
    if not plans:
        monkeypatch.setattr(Quantizer, "keep_plan", lambda self, plan: None)
    torch.manual_seed(0)
    q, w = build(), nn.Parameter(torch.randn(6, 5) * 2)
    results = []
    for call in range(8):
        if call == 4:
            change(q)
        y = q(w)
        y.backward(torch.randn(y.shape))
        results.append((y.detach(), q.observer.min_val.clone(), q.observer.max_val.clone()))
    return results, w.grad


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
@pytest.mark.parametrize("build", QUANTIZERS.values(), ids=QUANTIZERS.keys())
def test_repeats_with_a_plan_equal_calls_without(build, change, monkeypatch):
    (expected, grad), (got, other) = (
        run_repeats(build, change, plans, monkeypatch) for plans in (False, True)
    )
    assert torch.equal(grad, other)
    for call, (left, right) in enumerate(zip(expected, got)):
        for a, b in zip(left, right):
            assert a.dtype == b.dtype and torch.equal(a, b), call


@pytest.mark.parametrize("build", QUANTIZERS.values(), ids=QUANTIZERS.keys())
def test_later_steps_take_the_plan(build, record_calls):
    q = build()
    x = torch.randn(6, 5, requires_grad=True)
    q(x)  # per channel: the first step takes the operations (no range to widen yet)
    q(x)
    assert isinstance(q._plan, fused.Plan)
    results = record_calls(fused.Plan, "__call__")
    decided = record_calls(fused, "fused_step")
    for _ in range(3):
        q(x)
    assert len(results) == 3 and all(isinstance(r, torch.Tensor) for r in results)
    assert decided == []


def test_a_plan_is_made_in_training_only():
    q = UniformQuantizer(bits=8).eval()
    q(torch.randn(6, 5))  # eval mode fills a range never observed
    assert q._plan is None
    q.train()
    q(torch.randn(6, 5))
    assert q._plan is not None


@pytest.mark.parametrize(
    "reason",
    ["float64", "other channels", "distributed", "observer edited", "buffer swapped"],
)
def test_a_plan_declines_and_changes_nothing(reason, monkeypatch):
    q = UniformQuantizer(bits=8, ch_axis=0)
    q(torch.randn(6, 5))  # a range
    q(torch.randn(6, 5))  # the compiled step, and its plan
    plan = q._plan
    x = torch.randn(6, 5) * 10
    if reason == "float64":
        x = x.double()
    elif reason == "other channels":
        x = torch.randn(7, 5) * 10
    elif reason == "distributed":
        monkeypatch.setattr(fused, "distributed", lambda: True)
    elif reason == "observer edited":
        q.observer.symmetric = True  # the same value: still an edit
    else:
        swap_buffer(q)
    before = (q.observer.min_val.clone(), q.observer.max_val.clone())
    assert plan(x) is None
    assert torch.equal(q.observer.min_val, before[0]) and torch.equal(q.observer.max_val, before[1])


def test_setting_any_attribute_drops_the_plan():
    q = UniformQuantizer(bits=8)
    q(torch.randn(6, 5))
    assert q._plan is not None
    q.anything = 1
    assert q._plan is None
    q(torch.randn(6, 5))
    del q.anything
    assert q._plan is None


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda q: pickle.loads(pickle.dumps(q))])
def test_copies_decide_afresh_on_their_own_buffers(copier):
    q = UniformQuantizer(bits=8)
    q(torch.randn(6, 5))
    twin = copier(q)
    assert twin._plan is None and q._plan is not None
    twin(torch.randn(6, 5) * 50)  # widens the copy's range only
    assert twin.observer.max_val > q.observer.max_val
    assert twin._plan is not None and twin._plan.observer is twin.observer


def test_a_model_trained_eagerly_then_compiled_equals_eager(monkeypatch):
    """Quantizers that hold plans from eager steps compile with ``fullgraph=True``; the
    compiled steps give the eager steps' values and ranges."""
    torch.manual_seed(0)
    model = aquatic.quantize(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), aquatic.qconfig.int8
    )
    x = torch.randn(5, 8)
    model(x)
    assert all(q._plan is not None for q in model.modules() if isinstance(q, UniformQuantizer))
    twin = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for scale in (1.0, 3.0):
        out, expected = compiled(x * scale), twin(x * scale)
        assert torch.equal(out, expected)
    for (name, value), (_, other) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(value, other), name


def test_observers_count_their_edits():
    obs = MinMaxObserver()
    before = obs.edits
    obs.quant_max = 127
    obs.train()
    assert obs.edits == before + 2


class TimeLoop(nn.Module):
    """A Linear called at every time step (a cell's pattern), the first layer's
    quantized weight kept by nothing (its input needs no gradient)."""

    def __init__(self, qconfig):
        super().__init__()
        self.inp = aquatic.nn.Linear(6, 16, qconfig=qconfig)
        self.rec = aquatic.nn.Linear(16, 16, qconfig=qconfig)
        self.out = aquatic.nn.Linear(16, 3, qconfig=qconfig)

    def forward(self, x):
        h = torch.zeros(x.shape[1], 16)
        total = 0
        for t in range(x.shape[0]):
            h = torch.tanh(self.inp(x[t]) + self.rec(h))
            total = total + self.out(h)
        return total


QCONFIGS = {
    "per tensor": aquatic.qconfig.int8._replace(activation=None),
    "per channel": aquatic.qconfig.int8._replace(
        activation=None, weight=UniformQuantizer.with_args(bits=8, ch_axis=0)
    ),
    "with activations": aquatic.qconfig.int8,
}


def train_time_loop(qconfig, plans, monkeypatch, steps=4, accumulate=False, trust=False):
    monkeypatch.undo()
    if not plans:
        monkeypatch.setattr(Quantizer, "keep_plan", lambda self, plan: None)
    torch.manual_seed(0)
    model = TimeLoop(qconfig)
    aquatic.trust_weight_versions(model, trust)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(5, 4, 6) * 2, torch.randint(0, 3, (4,))
    for step in range(steps):
        optimizer.zero_grad()
        for _ in range(2 if accumulate else 1):  # two backward passes, one weight version
            nn.functional.cross_entropy(model(x * (step + 1)), y).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("trust", [False, True], ids=["bits compared", "versions trusted"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["a step each", "accumulated"])
@pytest.mark.parametrize("qconfig", QCONFIGS.values(), ids=QCONFIGS.keys())
def test_a_layer_called_at_every_time_step_trains_to_the_same_bits(
    qconfig, accumulate, trust, monkeypatch
):
    expected = train_time_loop(qconfig, False, monkeypatch, accumulate=accumulate)
    got = train_time_loop(qconfig, True, monkeypatch, accumulate=accumulate, trust=trust)
    weights = [layer.quantizers["weight"] for layer in (got.inp, got.rec, got.out)]
    assert all(q._plan is not None and q._plan.repeating for q in weights)
    for (name, value), (_, other) in zip(expected.state_dict().items(), got.state_dict().items()):
        assert torch.equal(value, other), name
    for name, param in expected.named_parameters():
        assert torch.equal(param.grad, dict(got.named_parameters())[name].grad), name


def repeating(q, w):
    """``q`` after steps on ``w`` that show it a repeat; the output it now keeps."""
    for _ in range(4):  # decides (per channel: after a first range), keeps a plan
        if q._plan is not None and q._plan.last is not None:
            break
        q(w)
    assert not q._plan.repeating
    kept = q(w)  # the first repeat: quantized afresh, and kept with copies from now on
    assert q._plan.repeating
    return kept


def test_repeats_return_the_last_output_until_something_changes():
    q = UniformQuantizer(bits=8)
    w = nn.Parameter(torch.randn(6, 5))
    first = repeating(q, w)
    assert q(w) is first and q(w) is first
    before = q.observer.max_val.item()
    with torch.no_grad():
        w.mul_(1.5)  # a new version: observed again (the range widens)
    second = q(w)
    assert second is not first and q(w) is second
    assert q.observer.max_val.item() == max(before, w.max().item())
    q.observer.max_val.fill_(100.0)  # the range written in place: a new scale
    third = q(w)
    assert third is not second and not torch.equal(third, second)
    with torch.no_grad():
        assert q(w) is not third  # another mode of autograd
    fourth = q(w)
    fourth.detach().mul_(0)  # the output changed in place
    assert q(w) is not fourth
    assert q(w.detach().clone()) is not q(w)  # another tensor
    fifth = q(w)
    w.requires_grad_(False)
    assert q(w) is not fifth and not q(w).requires_grad


@pytest.mark.parametrize("per_channel", [False, True])
def test_changes_no_version_counter_sees_make_it_quantize_afresh(per_channel):
    """``weight.data`` edits leave the version as it is; so does a range written by a
    compiled loop (another quantizer sharing the observer)."""
    q = UniformQuantizer(bits=8, ch_axis=0 if per_channel else None)
    w = nn.Parameter(torch.randn(6, 5))
    kept = repeating(q, w)
    version = w._version
    w.data.mul_(3)  # pruning, clipping and hand-written updates look like this
    assert w._version == version
    fresh = q(w)
    assert fresh is not kept
    twin = UniformQuantizer(bits=8, ch_axis=0 if per_channel else None)
    twin(w.detach())  # a range
    twin.load_state_dict(q.state_dict())
    assert torch.equal(fresh, twin.eval()(w.detach()))  # the values of the range it has now
    w.data[0, 0] = -w.data[0, 0]  # one value, one sign
    assert q(w) is not fresh
    again = q(w)
    assert q(w) is again
    q.observer.min_val.data.mul_(4)  # the range, its version as it was
    assert q(w) is not again
    again = q(w)
    assert q(w) is again
    q.observer.max_val.data.mul_(4)
    assert q(w) is not again


def test_a_shared_observer_widened_by_another_quantizer():
    """Two quantizers on one observer: the other's compiled step widens the range by
    address (no version changes); the first then quantizes its repeat afresh."""
    first = UniformQuantizer(bits=8)
    second = UniformQuantizer(bits=8)
    second.observer = first.observer
    w, big = nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(6, 5) * 10)
    kept = repeating(first, w)
    second(big)  # decides
    second(big)  # the compiled step: the range widened by address
    assert first.observer.max_val.item() >= big.max().item()
    fresh = first(w)
    assert fresh is not kept and not torch.equal(fresh, kept)


@pytest.mark.parametrize("per_channel", [False, True])
def test_alternating_tensors_stop_the_copies_until_the_next_repeat(per_channel):
    """A quantizer shared by two weights that take turns repeats nothing: after two
    calls in a row that are no repeat, it keeps no copies (a new version between runs
    of repeats misses once, and keeps them); values as a quantizer without plans."""
    q = UniformQuantizer(bits=8, ch_axis=0 if per_channel else None)
    plain = UniformQuantizer(bits=8, ch_axis=0 if per_channel else None)
    plain.keep_plan = lambda plan: None
    a, b = nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(6, 5) * 3)
    for w in (a, a, a, a, a):
        plain(w)
    repeating(q, a)
    for factor in (0.5, 1.5):  # runs of repeats, each after a step's new version
        with torch.no_grad():
            a.mul_(factor)  # one miss: still repeating
        for w in (a, a):
            assert torch.equal(q(w), plain(w))
            assert q._plan.repeating and len(q._plan.last) > 2
    for w in (b, a, b, a):
        assert torch.equal(q(w), plain(w))
    assert not q._plan.repeating and len(q._plan.last) == 2  # no output, no copies
    assert torch.equal(q(a), plain(a))  # a repeat again: kept from now on
    assert q._plan.repeating
    kept = q(a)
    assert q(a) is kept and torch.equal(kept, plain(a))


@pytest.mark.parametrize(
    "build",
    [
        lambda: UniformQuantizer(bits=8, signed=False, symmetric=False),  # a masked gradient
        lambda: UniformQuantizer(bits=8, observer=MovingAverageMinMaxObserver),  # moves
    ],
    ids=["masked gradient", "moving average"],
)
def test_no_repeat_where_observing_again_or_backward_would_differ(build):
    q = build()
    w = nn.Parameter(torch.randn(6, 5))
    q(w)
    q(w)
    plan = q._plan
    first = q(w)
    assert plan is not None and q._plan is plan
    assert q(w) is not first


def test_inference_tensors_are_quantized_afresh():
    q = UniformQuantizer(bits=8)
    q(torch.randn(6, 5))
    with torch.inference_mode():
        x = torch.randn(6, 5)
        y = q(x)
        assert q(x) is not y and torch.equal(q(x), y)


def test_a_replica_decides_afresh():
    """``nn.DataParallel``'s replicas copy a module's attributes: a replica's plan would
    write the original observer's range."""
    q = UniformQuantizer(bits=8)
    q(torch.randn(6, 5))
    assert q._plan is not None
    assert q._replicate_for_data_parallel()._plan is None


@pytest.mark.parametrize("per_channel", [False, True])
def test_trusted_versions_skip_the_comparison(per_channel, record_calls):
    """With the weights' versions trusted, a repeat compares no bits of the weight (an
    edit through ``.data`` then goes unseen, as documented) and a new version still
    quantizes afresh; the switch restores the quantizer's own setting."""
    q = UniformQuantizer(bits=8, ch_axis=0 if per_channel else None)
    w = nn.Parameter(torch.randn(6, 5))
    with aquatic.trust_weight_versions(q):
        kept = repeating(q, w)
        compared = record_calls(fake_quant_jit, "same_bits")
        assert q(w) is kept and len(compared) == 2  # the range's two buffers only
        w.data.mul_(3)
        assert q(w) is kept  # unseen: the version is as it was
        with torch.no_grad():
            w.mul_(1.0)  # a new version
        assert q(w) is not kept
    assert q.trusts_weight_versions is False and q._plan is None
    fresh = repeating(q, w)
    w.data.mul_(2)
    assert q(w) is not fresh


@pytest.mark.parametrize("trust", ["yes", 1, None])
def test_trust_takes_a_bool(trust):
    with pytest.raises(TypeError, match="trust must be True or False"):
        aquatic.trust_weight_versions(UniformQuantizer(), trust)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        aquatic.trust_weight_versions("model")
