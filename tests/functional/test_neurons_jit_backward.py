"""The fused LIF backward pass compiled by Numba gives the PyTorch backward's gradients
(to rounding) for every surrogate, and leaves spike counts to the PyTorch backward. It
recomputes checkpointed membranes itself, and large sequences checkpoint by themselves:
the gradients are bit for bit those of the kept membranes."""

import importlib.util
import sys

import pytest
import torch

import aquatic.functional.neurons_jit as jit
import aquatic.functional.neurons_jit_backward as jit_backward
import aquatic.functional.neurons_kernel as kernel
import aquatic.functional.neurons_kernel_backward as kernel_backward
from aquatic.functional.neuron_types import Options
from aquatic.functional.neurons import LIFState
from aquatic.functional.neurons_fused import lif_fused
from aquatic.functional.surrogate import ArcTan, FastSigmoid, SingleExponential, Triangle

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="needs numba (pip install aquatic[fast])"
)

F64 = torch.float64


class _Sharper(ArcTan):
    """A subclass with its own slope: the compiled backward must not assume ArcTan's."""

    def derivative(self, u):
        return super().derivative(u) ** 2

    def derivative_(self, u):
        return self.derivative(u)


class _Duck:
    """Not a Surrogate: any object with a derivative is accepted as one."""

    def derivative(self, u):
        return torch.exp(-u.abs())

    derivative_ = derivative


#: Those whose slopes the loop computes, then others' (computed by their derivative_, a
#: block of steps at a time)
SURROGATES = [ArcTan(width=0.6, scale=0.8), FastSigmoid(slope=5.0, scale=0.7)]
SURROGATES += [Triangle(width=0.8, scale=1.3)]
SURROGATES += [SingleExponential(width=0.4), _Sharper(), _Duck()]
#: the surrogates whose slopes the loop computes (it recomputes the membranes for them)
IN_LOOP = SURROGATES[:4]
CONFIGS = [
    dict(),
    dict(reset="zero"),
    dict(min_v_mem=-0.3),
    dict(reset="zero", min_v_mem=0.05, detach_reset=True),
    dict(detach_reset=True),
    dict(norm_input=True, synaptic=True),
    dict(norm_input=True, bias=True, record_states=True),
    dict(spiking=False),
    dict(spiking=False, min_v_mem=-0.2, norm_input=True, record_states=True),
    dict(record_states=True, synaptic=True, reset="zero"),
    dict(bias=True),  # the plainest loops with the bias's gradient
    dict(reset="zero", bias=True),
]
#: (input shape, parameter shape): 1100 features make jobs of parts of rows; 40 samples
#: of 3 features make jobs of many rows; a conv-like input has one parameter per channel.
SHAPES = [
    ((3, 12, 4), (4,)),
    ((1, 5, 1100), ()),
    ((40, 6, 3), (3,)),
    ((2, 7, 3, 5, 4), (3, 1, 1)),
]
#: the gradients flowing in: a weighted sum of every result, or multiples of sums
#: (PyTorch passes a sum's gradient as one value expanded to the whole tensor)
LOSSES = ["weighted", "sums"]


def _leaves(shape, param_shape, dtype, config, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def rand(*size):
        return torch.rand(size, generator=generator, dtype=dtype)

    step = (shape[0],) + shape[2:]
    leaves = dict(
        x=torch.randn(shape, generator=generator, dtype=dtype) * 0.8 + 0.3,
        v0=torch.randn(step, generator=generator, dtype=dtype) * 0.5,
        alpha=rand(*param_shape) * 0.5 + 0.4,
        threshold=rand(*param_shape) * 0.5 + 0.7,
    )
    if config.get("synaptic"):
        leaves["i0"] = torch.randn(step, generator=generator, dtype=dtype) * 0.5
        leaves["syn"] = rand(*param_shape) * 0.5 + 0.3
    if config.get("bias"):
        leaves["bias"] = rand(*param_shape) * 0.2 - 0.1
    return {name: t.requires_grad_() for name, t in leaves.items()}


def _loss(result, kind):
    terms = [result.output, result.state.v_mem]
    terms += [t for t in (result.v_mem, result.i_syn, result.state.i_syn) if t is not None]
    if kind == "sums":  # each term's gradient one value, expanded
        return sum(t.sum() * (0.5 + k) for k, t in enumerate(terms))
    generator = torch.Generator().manual_seed(1)
    return sum((t * torch.randn(t.shape, generator=generator, dtype=t.dtype)).sum() for t in terms)


def _forward(leaves, config, surrogate, checkpoint):
    """``lif_fused`` on the leaves with the options of ``config``."""
    options = {k: v for k, v in config.items() if k not in ("synaptic", "bias")}
    return lif_fused(
        leaves["x"],
        leaves["alpha"],
        leaves.get("syn"),
        leaves["threshold"],
        bias=leaves.get("bias"),
        state=LIFState(leaves["v0"], leaves.get("i0")),
        surrogate=surrogate,
        checkpoint=checkpoint,
        **options,
    )


def _gradients(compiled, leaves, config, surrogate, loss, checkpoint=None):
    """The leaves' gradients with the compiled backward (``compiled``) or the PyTorch
    backward, and the segments that the compiled backward ran (its own patches only:
    the caller's stay)."""
    calls = []
    real = jit_backward.segment_backward

    def counted(*args, **kwargs):
        calls.append(args[1:3])
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jit_backward, "segment_backward", counted)
        if not compiled:
            patch.setattr(jit_backward, "backward_ok", lambda *args: False)
        result = _forward(leaves, config, surrogate, checkpoint)
        # a non-spiking neuron has no threshold gradient
        loss_value = _loss(result, loss)
        grads = torch.autograd.grad(loss_value, list(leaves.values()), allow_unused=True)
    return dict(zip(leaves, grads)), calls


@pytest.mark.parametrize("checkpoint", [None, 4], ids=["kept", "checkpoint4"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])))
@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=lambda i: str(CONFIGS[i]))
def test_gradients_equal_the_pytorch_backward(index, shape, checkpoint):
    config, surrogate = CONFIGS[index], SURROGATES[index % len(SURROGATES)]
    loss = LOSSES[index % len(LOSSES)]
    leaves = _leaves(*shape, F64, config)
    ours, calls = _gradients(True, leaves, config, surrogate, loss, checkpoint)
    theirs, none = _gradients(False, leaves, config, surrogate, loss, checkpoint)
    n_steps = shape[0][1]
    # one call: the whole sequence, or every checkpointed stretch of steps recomputed
    # in the loop; where the surrogate's derivative_ gives the slopes, one call per
    # stretch from the last, on the membranes that PyTorch recomputes
    in_loop = config.get("spiking") is False or index % len(SURROGATES) < len(IN_LOOP)
    expected = [(0, n_steps)] if checkpoint is None or in_loop else [
        (start, min(start + checkpoint, n_steps))
        for start in reversed(range(0, n_steps, checkpoint))
    ]  # fmt: skip
    assert calls == expected and none == []
    for name in leaves:
        if theirs[name] is None:
            assert ours[name] is None and name == "threshold" and config.get("spiking") is False
        else:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-10, atol=1e-12, msg=name)
    assert ours["x"].abs().sum() > 0


def _spike_gradients(leaves, config, surrogate, loss):
    """The trained leaves' gradients of a loss on the spikes alone: compiled, PyTorch's,
    and compiled through checkpoints (the general loop), and the compiled segments run."""
    trained = [t for t in leaves.values() if t.requires_grad]
    grads, segments = [], []
    for compiled, checkpoint in ((True, None), (False, None), (True, 4)):
        with pytest.MonkeyPatch.context() as patch:
            real = jit_backward.segment_backward
            patch.setattr(
                jit_backward,
                "segment_backward",
                lambda *args, **kw: segments.append(args[1:3]) or real(*args, **kw),
            )
            if not compiled:
                patch.setattr(jit_backward, "backward_ok", lambda *args: False)
            spikes = _forward(leaves, config, surrogate, checkpoint).output  # the spikes only
            weights = torch.randn(spikes.shape, generator=torch.Generator().manual_seed(1))
            value = (spikes * (weights.to(spikes.dtype) if loss == "weighted" else 0.5)).sum()
            grads.append(torch.autograd.grad(value, trained))
    return grads, segments


@pytest.mark.parametrize("config", [dict(), dict(reset="zero"), dict(bias=True)], ids=str)
@pytest.mark.parametrize("surrogate", IN_LOOP, ids=repr)
@pytest.mark.parametrize("loss", LOSSES)
def test_the_plainest_loops_of_every_surrogate(config, surrogate, loss):
    # binary spikes and nothing else: each surrogate and reset has a loop of its own
    # (the spikes' gradient only, fixed decay and threshold: a final state's gradient
    # and the decay's and threshold's sums take the general loop)
    leaves = _leaves((5, 13, 600), (600,), F64, config, seed=3)
    leaves["alpha"].requires_grad_(False), leaves["threshold"].requires_grad_(False)
    grads, segments = _spike_gradients(leaves, config, surrogate, loss)
    assert segments == [(0, 13), (0, 13)]  # compiled: kept and recomputed membranes
    for ours, theirs, recomputed in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
        # the general loop (recomputing checkpointed segments): the same bits
        assert torch.equal(ours, recomputed)
    assert grads[0][0].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("surrogate", IN_LOOP, ids=repr)
def test_nan_and_inf_through_the_plainest_loops(surrogate, dtype):
    leaves = _leaves((4, 10, 6), (6,), dtype, {})
    leaves["alpha"].requires_grad_(False), leaves["threshold"].requires_grad_(False)
    with torch.no_grad():
        leaves["x"][0, 3, 1] = float("nan")
        leaves["x"][1, 5, 2] = float("inf")
        leaves["x"][2, 2, 4] = -float("inf")
        leaves["x"][3, 4, 0] = -1e30  # an exponent far below any normal slope
    grads, segments = _spike_gradients(leaves, {}, surrogate, "weighted")
    assert segments == [(0, 10), (0, 10)]
    for ours, theirs, recomputed in zip(*grads):
        assert torch.equal(ours.isnan(), theirs.isnan())
        torch.testing.assert_close(ours, theirs, equal_nan=True)
        assert torch.equal(ours.nan_to_num(), recomputed.nan_to_num())
    assert grads[0][0].isnan().any() and grads[0][0].nan_to_num().abs().sum() > 0


@pytest.mark.parametrize("surrogate", IN_LOOP, ids=repr)
@pytest.mark.parametrize("loss", LOSSES)
def test_float32_gradients_are_close(surrogate, loss):
    config = dict(record_states=True, synaptic=True, min_v_mem=-0.4, norm_input=True)
    leaves = _leaves((8, 30, 16), (16,), torch.float32, config, seed=2)
    ours, calls = _gradients(True, leaves, config, surrogate, loss)
    theirs, _ = _gradients(False, leaves, config, surrogate, loss)
    assert calls == [(0, 30)]
    for name in leaves:
        scale = theirs[name].abs().max()
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("surrogate", [ArcTan(), SingleExponential()], ids=repr)
def test_spike_counts_run_the_pytorch_backward(surrogate):
    config = dict(max_spikes=3)
    leaves = _leaves((3, 9, 5), (5,), F64, config)
    ours, calls = _gradients(True, leaves, config, surrogate, "weighted")
    theirs, _ = _gradients(False, leaves, config, surrogate, "weighted")
    assert calls == []
    for name in leaves:
        assert torch.equal(ours[name], theirs[name]), name
    assert ours["x"].abs().sum() > 0


@pytest.mark.parametrize("block_elements", [1, 8, 1 << 20])
@pytest.mark.parametrize(
    "config",
    [
        {},
        dict(reset="zero", min_v_mem=-0.2),
        dict(synaptic=True, norm_input=True, record_states=True),
    ],
    ids=str,
)
@pytest.mark.parametrize("checkpoint", [None, 3], ids=["kept", "checkpoint3"])
def test_slopes_given_by_the_surrogate_block_by_block(
    block_elements, config, checkpoint, monkeypatch
):
    # A subclass's slopes come from its derivative_, in blocks of steps (1 and 8
    # elements: blocks of 1 and 2 steps of 4 neurons x 2 samples) that need not align
    # with the checkpointed segments.
    leaves = _leaves((2, 11, 4), (4,), F64, config, seed=4)
    theirs, _ = _gradients(False, leaves, config, _Sharper(), "weighted", checkpoint)
    monkeypatch.setattr(kernel, "BLOCK_ELEMENTS", block_elements)
    ours, calls = _gradients(True, leaves, config, _Sharper(), "weighted", checkpoint)
    assert calls
    for name in leaves:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    "surrogate, checkpoint, compiled",
    [
        (_Sharper(), None, False),  # 88 elements: above the limit of 16
        (_Sharper(), 2, True),  # segments of 2 x 8 elements
        (ArcTan(), None, True),  # its slopes in the loop: no limit
        (SingleExponential(), None, True),
    ],
    ids=["given-long", "given-checkpointed", "arctan", "exp"],
)
def test_slopes_given_run_compiled_up_to_a_sequence_size(
    surrogate, checkpoint, compiled, monkeypatch
):
    leaves = _leaves((2, 11, 4), (4,), F64, {})
    theirs, _ = _gradients(False, leaves, {}, surrogate, "weighted", checkpoint)
    monkeypatch.setattr(jit_backward, "GIVEN_LIMIT", 16)
    ours, calls = _gradients(True, leaves, {}, surrogate, "weighted", checkpoint)
    assert bool(calls) == compiled
    for name in leaves:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-10, atol=1e-12, msg=name)


def test_kernel_forms_name_only_the_built_in_surrogates():
    assert ArcTan(width=0.5, scale=2.0).kernel_form() == ("arctan", 0.5, 2.0)
    assert FastSigmoid(slope=3.0).kernel_form() == ("fast_sigmoid", 3.0, 1.0)
    assert Triangle().kernel_form() == ("triangle", 1.0, 1.0)
    assert SingleExponential(width=0.2).kernel_form() == ("exp", 0.2, 1.0)
    assert _Sharper().kernel_form() is None


@pytest.mark.parametrize("checkpoint", [None, 3], ids=["kept", "checkpoint3"])
def test_nan_and_inf_inputs_give_the_pytorch_backwards_gradients(checkpoint):
    for config in (dict(), dict(reset="zero", min_v_mem=-0.5)):
        leaves = _leaves((4, 10, 6), (6,), F64, config)
        with torch.no_grad():
            leaves["x"][0, 3, 1] = float("nan")
            leaves["x"][1, 5, 2] = float("inf")
            leaves["x"][2, 2, 4] = -float("inf")
        ours, calls = _gradients(True, leaves, config, ArcTan(), "weighted", checkpoint)
        theirs, _ = _gradients(False, leaves, config, ArcTan(), "weighted", checkpoint)
        assert calls
        for name in leaves:
            assert torch.equal(ours[name].isnan(), theirs[name].isnan()), name
            torch.testing.assert_close(ours[name], theirs[name], equal_nan=True, msg=name)
        assert ours["x"].isnan().any()


@pytest.mark.parametrize("checkpoint", [None, 2], ids=["kept", "checkpoint2"])
@pytest.mark.parametrize("shape", [(2, 1, 3), (0, 4, 3), (2, 3, 0)], ids=str)
def test_single_step_and_empty_sequences(shape, checkpoint):
    config = dict(synaptic=True, norm_input=True)
    leaves = _leaves(shape, (shape[2],), F64, config)
    ours, _ = _gradients(True, leaves, config, ArcTan(), "weighted", checkpoint)
    theirs, _ = _gradients(False, leaves, config, ArcTan(), "weighted", checkpoint)
    for name in leaves:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-12, atol=0.0, msg=name)


def test_turned_off_with_the_forward_loop(monkeypatch):
    leaves = _leaves((2, 5, 3), (3,), F64, {})
    monkeypatch.setattr(jit, "ENABLED", False)
    calls = []
    monkeypatch.setattr(jit_backward, "segment_backward", lambda *a: calls.append(a))
    out = lif_fused(leaves["x"], leaves["alpha"], None, leaves["threshold"], surrogate=ArcTan())
    out.output.sum().backward()
    assert calls == [] and leaves["x"].grad is not None and leaves["x"].grad.abs().sum() > 0


def test_its_own_switch_keeps_the_pytorch_backward_bits(monkeypatch):
    leaves = _leaves((3, 8, 5), (5,), torch.float32, {})
    theirs, _ = _gradients(False, leaves, {}, ArcTan(), "weighted")
    monkeypatch.setattr(jit_backward, "ENABLED", False)
    calls = []
    real = jit_backward.segment_backward
    monkeypatch.setattr(jit_backward, "segment_backward", lambda *a: calls.append(a) or real(*a))
    out = lif_fused(leaves["x"], leaves["alpha"], None, leaves["threshold"], bias=None,
                    state=LIFState(leaves["v0"]), surrogate=ArcTan())  # fmt: skip
    grads = torch.autograd.grad(_loss(out, "weighted"), list(leaves.values()))
    assert calls == []
    for name, grad in zip(leaves, grads):
        assert torch.equal(grad, theirs[name]), name


def test_a_backward_kernel_that_fails_to_compile_warns_and_falls_back(monkeypatch):
    def broken():
        raise ImportError("Numba needs NumPy 2.3 or less")

    leaves = _leaves((3, 8, 5), (5,), torch.float32, {})
    theirs, _ = _gradients(False, leaves, {}, ArcTan(), "weighted")
    monkeypatch.setattr(jit_backward, "_kernel", broken)
    jit_backward._ready.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="using the PyTorch backward"):
            out = lif_fused(leaves["x"], leaves["alpha"], None, leaves["threshold"],
                            state=LIFState(leaves["v0"]), surrogate=ArcTan())  # fmt: skip
            grads = torch.autograd.grad(_loss(out, "weighted"), list(leaves.values()))
        for name, grad in zip(leaves, grads):
            assert torch.equal(grad, theirs[name]), name
    finally:
        monkeypatch.undo()
        jit_backward._ready.cache_clear()
    assert jit_backward._ready()


# ------------------------------------------------- recomputed membranes


def _run(leaves, config, surrogate, loss, checkpoint=None):
    """Outputs and the leaves' gradients, and the shapes of the tensors kept for backward."""
    kept = []

    def pack(t):  # each kept tensor's shape, and whether it is the input itself
        kept.append((tuple(t.shape), t.data_ptr() == leaves["x"].data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = _forward(leaves, config, surrogate, checkpoint)
    value = _loss(result, loss)
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    outputs = [t for t in (result.output, result.state.v_mem, result.v_mem) if t is not None]
    return outputs, dict(zip(leaves, grads)), kept


def _options(**given):
    options = dict(reset="subtract", surrogate=ArcTan(), max_spikes=1, min_v_mem=None)
    options.update(norm_input=False, detach_reset=False, spiking=True)
    return Options(**{**options, **given})


def _assert_equal(ours, theirs):
    """Equal gradients; the synaptic decay's close (the PyTorch code sums it one
    checkpointed segment at a time, in another order)."""
    for name in theirs:
        if theirs[name] is None:
            assert ours[name] is None
        elif name == "syn":
            rtol = 1e-12 if theirs[name].dtype == F64 else 1e-5
            torch.testing.assert_close(ours[name], theirs[name], rtol=rtol, atol=0)
        else:
            assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.parametrize("checkpoint", [1, 5, 50], ids=lambda k: f"every{k}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])))
@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=lambda i: str(CONFIGS[i]))
def test_recomputed_segments_give_the_kept_membranes_gradients(index, shape, checkpoint):
    config, surrogate = CONFIGS[index], IN_LOOP[index % len(IN_LOOP)]
    loss = LOSSES[index % len(LOSSES)]
    leaves = _leaves(*shape, F64, config, seed=index)
    calls = []
    real = jit_backward.segment_backward

    def counted(*args, **kwargs):
        calls.append(kwargs.get("states", args[14] if len(args) > 14 else None))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jit_backward, "segment_backward", counted)
        out_kept, kept, _ = _run(leaves, config, surrogate, loss)
        out_ours, ours, _ = _run(leaves, config, surrogate, loss, checkpoint)
    # kept: one call on the membranes; checkpointed: one call that recomputes them
    assert calls[0] is None and calls[1][-1] == checkpoint and len(calls) == 2
    for a, b in zip(out_ours, out_kept):
        assert torch.equal(a, b)
    _assert_equal(ours, kept)
    assert ours["x"].abs().sum() > 0


def test_recomputed_segments_in_float32_of_a_job_of_part_rows():
    config = dict(norm_input=True, synaptic=True, bias=True, record_states=True)
    leaves = _leaves((2, 9, 1100), (), torch.float32, config)
    kept = _run(leaves, config, ArcTan(), "weighted")
    ours = _run(leaves, config, ArcTan(), "weighted", checkpoint=4)
    _assert_equal(ours[1], kept[1])


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_large_sequences_keep_the_input_not_the_membranes(monkeypatch, dtype):
    config = dict(synaptic=True, norm_input=True)
    leaves = _leaves((3, 20, 7), (7,), dtype, config)
    _, kept, kept_shapes = _run(leaves, config, ArcTan(), "weighted")
    monkeypatch.setattr(jit_backward, "RECOMPUTE_ABOVE", 0)
    _, ours, our_shapes = _run(leaves, config, ArcTan(), "weighted")
    _assert_equal(ours, kept)
    # kept: the membranes before the reset and the currents, sequences besides the
    # input; now no sequence but the input, and the states every RECOMPUTE_BYTES of a
    # job's membranes (one here, the sequence is short)
    assert ((3, 20, 7), False) in kept_shapes and ((3, 20, 7), False) not in our_shapes
    assert ((3, 20, 7), True) in our_shapes
    assert ((1, 3, 7), False) in our_shapes and ((1, 3, 7), False) not in kept_shapes
    steps = jit_backward.own_checkpoint(torch.empty(1000, 1000, 10, dtype=dtype), _options())
    assert steps == jit_backward.RECOMPUTE_BYTES // (512 * (4 if dtype == torch.float32 else 8))


def test_own_checkpoint_only_where_the_compiled_backward_recomputes(monkeypatch):
    monkeypatch.setattr(jit_backward, "RECOMPUTE_ABOVE", 0)
    x = torch.empty(2, 3, 4)

    def own(x=x, **options):
        return jit_backward.own_checkpoint(x, _options(**options))

    assert own() > 0 and own(spiking=False, min_v_mem=-1.0) > 0
    assert own(surrogate=SingleExponential()) > 0  # its slopes in the loop
    assert own(surrogate=_Sharper()) is None  # slopes from its derivative_
    assert own(max_spikes=2) is None  # spike counts: the PyTorch backward
    assert own(spiking=False) is None  # the membrane is the output
    assert own(x.to(torch.bfloat16)) is None and own(x.to("meta")) is None
    monkeypatch.setattr(jit_backward, "RECOMPUTE_ABOVE", x.numel() * 4)
    assert own() is None  # small enough to keep
    monkeypatch.setattr(jit_backward, "RECOMPUTE_ABOVE", 0)
    monkeypatch.setattr(jit_backward, "ENABLED", False)
    assert own() is None
    monkeypatch.setattr(jit_backward, "ENABLED", True)
    monkeypatch.setattr(jit, "ENABLED", False)
    assert own() is None


def test_turned_off_between_forward_and_backward_recomputes_in_pytorch(monkeypatch):
    config = dict(synaptic=True, bias=True)
    leaves = _leaves((3, 11, 5), (5,), F64, config)
    _, kept, _ = _run(leaves, config, FastSigmoid(), "sums")
    monkeypatch.setattr(jit_backward, "RECOMPUTE_ABOVE", 0)
    recomputed = []
    real = kernel_backward.sequence_forward

    def counted(*args, **kwargs):
        recomputed.append(args[0].shape[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel_backward, "sequence_forward", counted)
    original = lif_fused

    def forward_then_off(*args, **kwargs):
        result = original(*args, **kwargs)
        monkeypatch.setattr(jit_backward, "ENABLED", False)
        return result

    monkeypatch.setattr(sys.modules[__name__], "lif_fused", forward_then_off)
    _, ours, _ = _run(leaves, config, FastSigmoid(), "sums")
    assert recomputed == [11]  # the PyTorch backward recomputed the one segment
    for name in kept:
        torch.testing.assert_close(ours[name], kept[name], rtol=1e-10, atol=1e-12, msg=name)


def test_compiled_fullgraph_with_its_own_checkpoint_equals_eager(monkeypatch):
    monkeypatch.setattr(jit_backward, "RECOMPUTE_ABOVE", 0)
    torch.manual_seed(0)
    x = torch.randn(4, 30, 6) * 0.8 + 0.3
    alpha = torch.full((6,), 0.8, requires_grad=True)
    surrogate = ArcTan()

    def step(x):
        out = lif_fused(x, alpha, 0.7, surrogate=surrogate, norm_input=True)
        return out.output, out.state.v_mem

    results, states = [], []
    real = jit_backward.segment_backward

    def counted(*args, **kwargs):
        states.append(args[14][-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(jit_backward, "segment_backward", counted)
    for run in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        x_ = x.clone().requires_grad_()
        spikes, v = run(x_)
        grads = torch.autograd.grad((spikes * 0.3).sum() + v.sum(), [x_, alpha])
        results.append((spikes, v) + grads)
    assert states == [jit_backward.own_checkpoint(x, _options())] * 2  # recomputed, both
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_a_checkpoint_longer_than_the_sequence_recomputes_only_its_steps():
    # the loop's buffer holds the steps there are, not the checkpoint's (10**10 steps of
    # a job's 10 lanes would not fit in memory)
    config = dict(synaptic=True, norm_input=True)
    leaves = _leaves((2, 6, 5), (5,), F64, config)
    _, kept, _ = _run(leaves, config, ArcTan(), "weighted")
    _, ours, _ = _run(leaves, config, ArcTan(), "weighted", checkpoint=10**10)
    _assert_equal(ours, kept)
