"""The compiled loops' jobs shared out over threads give the bits of one thread.

``jit_jobs.run`` calls a loop once per share of its jobs, on several threads at once;
every result and gradient must be identical to the loop on one thread, for the forward
loop, the backward loop (kept, recomputed and given slopes) and the loop of quantized
states, and the pool must survive a fork and several callers at once.
"""

import importlib.util
import multiprocessing
import threading

import numpy as np
import pytest
import torch

import aquatic.functional.jit_jobs as jit_jobs
import aquatic.functional.jit_openmp as jit_openmp
from aquatic import nn as ann
from aquatic.functional.neurons import LIFState
from aquatic.functional.neurons_fused import lif_fused
from aquatic.functional.surrogate import ArcTan, SingleExponential
from aquatic.hw import loihi, xylo

needs_numba = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="needs numba (pip install aquatic[fast])"
)


@pytest.fixture
def threads(set_threads):
    """Three threads for PyTorch (and so for the loops), restored afterwards."""
    set_threads(3)
    return 3


@pytest.fixture(params=["openmp", "pool"])
def shares(request, monkeypatch):
    """Share every call's jobs (no size limit), on PyTorch's OpenMP threads or on the
    Python pool; returns the list of each call's parts."""
    monkeypatch.setattr(jit_jobs, "PARALLEL_ABOVE", 0)
    monkeypatch.setattr(jit_jobs, "POOL_ABOVE", 0)
    if request.param == "pool":
        monkeypatch.setattr(jit_openmp, "ENABLED", False)
    elif not jit_openmp.usable():
        pytest.skip("PyTorch's GNU OpenMP runtime is not loaded here")
    calls, real = [], jit_jobs.run

    def counted(kernel, flags, *arrays, parts=1, entry=""):
        calls.append(parts)
        return real(kernel, flags, *arrays, parts=parts, entry=entry)

    monkeypatch.setattr(jit_jobs, "run", counted)
    return calls


@pytest.mark.parametrize("jobs", [0, 1, 2, 5, 64, 67])
@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_the_shares_cover_every_job_once_in_order(jobs, parts):
    bounds = [jit_jobs.share(jobs, part, parts) for part in range(parts)]
    covered = [job for start, stop in bounds for job in range(start, stop)]
    assert covered == list(range(jobs))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1  # as even as they can be


@pytest.mark.parametrize(
    "n_batch, n_feat", [(64, 512), (64, 16), (3, 1100), (300, 3), (7, 513), (0, 5), (5, 0)]
)
def test_the_jobs_cover_every_neuron_once(n_batch, n_feat):
    rows, chunk, jobs = jit_jobs.layout(n_batch, n_feat)
    count = np.zeros((n_batch, n_feat), np.int64)
    for job in range(jobs):
        n0, n1, f0, f1 = jit_jobs.block(job, rows, chunk, n_batch, n_feat)
        assert 0 < (n1 - n0) * (f1 - f0) <= jit_jobs.JOB_LANES
        assert n1 - n0 == 1 or (f0, f1) == (0, n_feat)  # several samples: every feature
        count[n0:n1, f0:f1] += 1
    assert (count == 1).all()


def test_parts_follow_the_threads_the_jobs_and_the_switch(threads, monkeypatch):
    big = max(jit_jobs.PARALLEL_ABOVE, jit_jobs.POOL_ABOVE)
    assert jit_jobs.parts_for(64, big // (64 * 512) + 1, 512) == 3
    assert jit_jobs.parts_for(2, big, 16) == 1  # one job
    assert jit_jobs.parts_for(4, big, 512) == 3 and jit_jobs.parts_for(2, big, 512) == 2
    assert jit_jobs.parts_for(64, 1, 512) == 1  # small
    torch.set_num_threads(1)
    assert jit_jobs.parts_for(64, big, 512) == 1
    torch.set_num_threads(2)
    monkeypatch.setattr(jit_jobs, "ENABLED", False)
    assert jit_jobs.parts_for(64, big, 512) == 1


def test_run_waits_for_every_share_and_raises_the_first_error():
    seen, lock, release = [], threading.Lock(), threading.Event()

    def kernel(flags, out):
        part, parts = int(flags[-2]), int(flags[-1])
        if part == 2:
            release.wait(5)  # still running when the first share fails
        with lock:
            seen.append((part, parts))
        out[part] = 1
        if part == 0:
            release.set()
            raise ZeroDivisionError("share 0")
        if part == 1:
            raise KeyError("share 1")

    flags, out = np.zeros(4, np.int64), np.zeros(3)
    with pytest.raises(ZeroDivisionError, match="share 0"):
        jit_jobs.run(kernel, flags, out, parts=3)
    assert sorted(seen) == [(0, 3), (1, 3), (2, 3)] and out.tolist() == [1, 1, 1]
    assert flags[-2:].tolist() == [0, 1]  # the caller's flags as one share

    def only_a_worker_fails(flags, out):
        if flags[-2] == 1:
            raise KeyError("share 1")

    with pytest.raises(KeyError, match="share 1"):
        jit_jobs.run(only_a_worker_fails, flags, out, parts=3)


def _leaves(shape, synaptic, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    step, feat = (shape[0],) + shape[2:], shape[2:]
    leaves = dict(
        x=torch.randn(shape, generator=generator) * 0.8 + 0.3,
        v0=torch.randn(step, generator=generator) * 0.5,
        alpha=torch.rand(feat, generator=generator) * 0.5 + 0.4,
        threshold=torch.rand(feat, generator=generator) * 0.5 + 0.7,
        bias=torch.rand(feat, generator=generator) * 0.2 - 0.1,
    )
    if synaptic:
        leaves["i0"] = torch.randn(step, generator=generator) * 0.5
        leaves["syn"] = torch.rand(feat, generator=generator) * 0.5 + 0.3
    return {name: t.to(dtype).requires_grad_() for name, t in leaves.items()}


def _lif(leaves, options):
    """Every result of ``lif_fused`` and every leaf's gradient of a weighted loss."""
    result = lif_fused(
        leaves["x"],
        leaves["alpha"],
        leaves.get("syn"),
        leaves["threshold"],
        bias=leaves["bias"],
        state=LIFState(leaves["v0"], leaves.get("i0")),
        record_states=True,
        **options,
    )
    outputs = [result.output, result.v_mem, result.state.v_mem]
    outputs += [t for t in (result.i_syn, result.state.i_syn) if t is not None]
    generator = torch.Generator().manual_seed(1)
    loss = sum(
        (t * torch.randn(t.shape, generator=generator, dtype=t.dtype)).sum() for t in outputs
    )
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [t.detach() for t in outputs] + list(grads)


#: 1100 features: jobs of parts of rows; 300 samples of 3 features: jobs of 170 rows
#: (two jobs, the last partial); 16 x 512: one job per sample, more jobs than threads.
SHAPES = [(2, 9, 1100), (300, 7, 3), (16, 20, 512)]
OPTIONS = [
    dict(surrogate=ArcTan(width=0.6, scale=0.8)),
    dict(surrogate=ArcTan(), checkpoint=4, reset="zero", min_v_mem=-0.3),
    dict(surrogate=SingleExponential(width=0.4), norm_input=True),
    dict(surrogate=ArcTan(), norm_input=True, checkpoint=3),
]


@needs_numba
@pytest.mark.parametrize("synaptic", [False, True], ids=["membrane", "synaptic"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(sorted(o)))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shared_jobs_give_the_bits_of_one_thread(shape, options, synaptic, threads, shares):
    leaves = _leaves(shape, synaptic)
    shared = _lif(leaves, options)
    assert max(shares) > 1  # the forward and the backward loops ran shared
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jit_jobs, "ENABLED", False)
        one = _lif(leaves, options)
    for a, b in zip(shared, one):
        assert torch.equal(a, b)
    assert 0 < shared[0].sum() < shared[0].numel()  # spikes and silence


@needs_numba
@pytest.mark.parametrize("synaptic", [False, True], ids=["membrane", "synaptic"])
def test_float64_shares_give_the_bits_of_one_thread(synaptic, threads, shares):
    leaves = _leaves((6, 9, 600), synaptic, dtype=torch.float64)
    for options in (OPTIONS[1], OPTIONS[2]):  # recomputed; slopes given
        shared = _lif(leaves, options)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(jit_jobs, "ENABLED", False)
            one = _lif(leaves, options)
        assert all(torch.equal(a, b) for a, b in zip(shared, one))
        assert shared[0].dtype == torch.float64 and 0 < shared[0].sum() < shared[0].numel()
    assert max(shares) > 1


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("preset", [xylo, loihi], ids=lambda m: m.__name__.split(".")[-1])
def test_the_loop_of_quantized_states_shares_its_jobs(preset, dtype, threads, shares):
    torch.manual_seed(0)
    taus = torch.linspace(3.0, 30.0, 600)
    layer = ann.LIF(tau_mem=taus, tau_syn=taus.flip(0) / 2, qconfig=preset.qconfig())
    layer = layer.to(dtype)
    x = torch.rand(3, 30, 600, dtype=dtype) * 6

    def run():
        leaf = x.clone().requires_grad_()
        out = layer(leaf)
        weights = torch.linspace(0, 1, 600, dtype=dtype)
        grads = torch.autograd.grad((out * weights).sum(), [leaf])
        return out.detach(), grads[0]

    shared = run()
    assert max(shares) > 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jit_jobs, "ENABLED", False)
        one = run()
    assert torch.equal(shared[0], one[0]) and torch.equal(shared[1], one[1])
    assert 0 < shared[0].sum() < shared[0].numel()


def _child(queue):
    # As in a DataLoader worker: one thread for PyTorch, whose OpenMP pool does not
    # survive a fork. The loops still share their jobs here (two parts, forced).
    torch.set_num_threads(1)
    jit_jobs.parts_for = lambda *sizes: 2
    leaves = _leaves((16, 20, 512), False)
    queue.put([t.numpy() for t in _lif(leaves, OPTIONS[0])])


@needs_numba
def test_a_forked_child_runs_shared_jobs(threads, monkeypatch):
    monkeypatch.setattr(jit_jobs, "PARALLEL_ABOVE", 0)
    leaves = _leaves((16, 20, 512), False)
    parent = _lif(leaves, OPTIONS[0])
    assert jit_jobs._pool is not None and jit_jobs._pool_pid > 0  # the parent's pool
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,), daemon=True)
    child.start()
    try:
        results = queue.get(timeout=60)  # a pool of the parent's threads would hang
    finally:
        child.join(10)
        child.kill()
    assert child.exitcode == 0
    for a, b in zip(results, parent):
        assert np.array_equal(a, b.numpy())


@needs_numba
def test_several_callers_at_once_get_their_own_results(threads, shares):
    inputs = [_leaves((16, 20, 512), synaptic=k % 2 == 1, seed=k) for k in range(4)]
    alone = [_lif(leaves, OPTIONS[k % 2]) for k, leaves in enumerate(inputs)]
    together, errors = [None] * 4, []

    def call(k):
        try:
            together[k] = _lif(inputs[k], OPTIONS[k % 2])
        except Exception as error:  # reported below
            errors.append(error)

    callers = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(120)
    assert errors == []
    for a, b in zip(together, alone):
        assert all(torch.equal(s, t) for s, t in zip(a, b))


@needs_numba
def test_compiled_graphs_share_the_jobs_too(threads, shares):
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        ann.Linear(40, 600), ann.LIF(tau_mem=8.0, tau_syn=4.0, surrogate=ArcTan())
    )
    x = torch.rand(4, 25, 40)

    def step(run):
        out = run(x)
        grads = torch.autograd.grad((out * torch.linspace(0, 1, 600)).sum(), model[0].weight)
        return out.detach(), grads[0]

    eager = step(model)
    shares.clear()
    compiled = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    assert len(shares) == 2 and min(shares) == 3  # the custom operators' loops, shared
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])
    assert 0 < eager[0].sum() < eager[0].numel()


@needs_numba
def test_openmp_runs_every_share_once_and_declines_what_it_cannot_run(
    threads, monkeypatch, record_calls
):
    if not jit_openmp.usable():
        pytest.skip("PyTorch's GNU OpenMP runtime is not loaded here")
    real = jit_openmp.run
    runs = record_calls(jit_openmp, "run")
    monkeypatch.setattr(jit_jobs, "PARALLEL_ABOVE", 0)
    leaves = _leaves((16, 20, 512), True)
    shared = _lif(leaves, OPTIONS[3])
    assert runs and all(runs)  # forward and backward on the OpenMP team
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jit_jobs, "ENABLED", False)
        one = _lif(leaves, OPTIONS[3])
    assert all(torch.equal(a, b) for a, b in zip(shared, one))
    # what it cannot run, it leaves to the caller (nothing written)
    from aquatic.functional import jit_bridges

    kernel, count, _ = jit_bridges.LOOPS["forward"]
    flags = np.zeros(12, np.int64)
    arrays = [np.zeros((2, 3), np.float32)[:, ::2]] * count  # not contiguous
    assert not real("forward", kernel, flags, arrays, 2)
    assert not real("backward", kernel, flags, arrays, 2)  # another loop's entry
    assert not real("forward", kernel, flags, arrays[:-1], 2)  # arguments missing
    monkeypatch.setattr(jit_openmp, "_PID", -1)  # as in a forked child
    assert not jit_openmp.usable()


def test_describe_says_where_the_jobs_run(threads, monkeypatch):
    if jit_openmp.usable():
        assert jit_jobs.describe() == "jobs shared over 3 threads on PyTorch's OpenMP team"
    monkeypatch.setattr(jit_openmp, "ENABLED", False)
    assert jit_jobs.describe() == "jobs shared over 3 threads on Python threads"
    torch.set_num_threads(1)
    assert jit_jobs.describe() == "jobs on the calling thread"
    torch.set_num_threads(2)
    monkeypatch.setattr(jit_jobs, "ENABLED", False)
    assert jit_jobs.describe() == "jobs on the calling thread"
