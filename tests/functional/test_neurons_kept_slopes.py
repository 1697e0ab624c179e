"""Where backward reads nothing else of the membranes, the compiled forward loop keeps the
default surrogate's slopes in their place (``kept_slopes``): the results and gradients
are the bits of the membranes kept, everywhere else the membranes are kept, and the
PyTorch passes read or write the slopes where they stand in for a compiled one. Backward
writes the gradient over the slopes where the graph is not kept."""

import importlib.util

import pytest
import torch
from torch.utils.checkpoint import checkpoint

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

EXP = SingleExponential(width=0.4, scale=1.3)
#: the surrogates whose slopes the loops compute, and so keep
KEPT = [EXP, ArcTan(width=0.6, scale=0.8), FastSigmoid(slope=5.0, scale=0.7)]
KEPT += [Triangle(width=0.8, scale=1.3)]


class _Own(ArcTan):
    """A surrogate with its own slopes, which the loops do not compute (nor keep)."""

    def derivative(self, u):
        return super().derivative(u) ** 2

    def derivative_(self, u):
        return self.derivative(u)


#: (input shape, threshold shape): jobs of whole rows, of parts of rows (1100 features),
#: of many rows (40 samples of 3 features); a per-neuron threshold
SHAPES = [((5, 30, 64), ()), ((2, 9, 1100), ()), ((40, 6, 3), (3,)), ((64, 20, 512), ())]


def run(shape, th_shape, keep, monkeypatch, *, loss="spikes", dtype=torch.float32, **kw):
    """Results and gradients of one fused sequence, with the slopes kept or not."""
    monkeypatch.setattr(jit_backward, "KEEP_SLOPES", keep)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(shape, generator=gen, dtype=dtype) * 1.2 - 0.1).requires_grad_()
    v0 = (torch.rand(shape[:1] + shape[2:], generator=gen, dtype=dtype)).requires_grad_()
    threshold = torch.full(th_shape, 0.8, dtype=dtype)
    kw.setdefault("surrogate", EXP)
    out = lif_fused(x, 0.85, None, threshold, state=LIFState(v0), **kw)
    weights = torch.rand(out.output.shape, generator=gen, dtype=dtype)
    total = {
        "spikes": lambda: (out.output * weights).sum(),  # backward writes over the slopes
        "spike sum": lambda: out.output.sum() * 2,  # one value expanded
        "weighted": lambda: (out.output * weights).sum() + (out.state.v_mem * 0.3).sum(),
        "sums": lambda: out.output.sum() * 2 + out.state.v_mem.sum(),
        "final": lambda: (out.state.v_mem**2).sum(),  # no gradient of the spikes
    }[loss]()
    grads = torch.autograd.grad(total, (x, v0))
    return (out.output, out.state.v_mem) + grads


def saved_first(output: torch.Tensor) -> torch.Tensor:
    """What the fused sequence kept for backward in place of the membranes."""
    return output.grad_fn.saved_tensors[0]


@pytest.mark.parametrize("shape,th_shape", SHAPES)
@pytest.mark.parametrize("loss", ["spikes", "spike sum", "weighted", "sums", "final"])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_same_bits_as_the_membranes_kept(
    shape, th_shape, loss, threads, monkeypatch, set_threads, record_calls
):
    set_threads(threads)
    kept = record_calls(jit_backward, "kept_slopes")
    with_slopes = run(shape, th_shape, True, monkeypatch, loss=loss)
    assert kept[-1] is not None and kept[-1][0] == jit_backward.SURROGATE_CODES["exp"]
    without = run(shape, th_shape, False, monkeypatch, loss=loss)
    assert kept[-1] is None
    for a, b in zip(with_slopes, without):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "options",
    [dict(bias=0.05), dict(detach_reset=True), dict(dtype=torch.float64), dict(surrogate=None)]
    + [dict(surrogate=surrogate) for surrogate in KEPT[1:]]
    + [
        dict(surrogate=surrogate, bias=0.05, loss=loss)
        for surrogate in KEPT
        for loss in ("spikes", "final")
    ],
)
def test_options_that_keep_the_slopes(options, monkeypatch, record_calls):
    kept = record_calls(jit_backward, "kept_slopes")
    with_slopes = run((6, 15, 40), (), True, monkeypatch, **options)
    assert kept[-1] is not None
    without = run((6, 15, 40), (), False, monkeypatch, **options)
    for a, b in zip(with_slopes, without):
        assert torch.equal(a, b)


def test_what_is_kept_is_the_slopes_at_the_membranes(monkeypatch):
    x = torch.rand(4, 25, 33, requires_grad=True)
    monkeypatch.setattr(jit_backward, "KEEP_SLOPES", False)
    membranes = saved_first(lif_fused(x, 0.9, surrogate=EXP).output)
    monkeypatch.setattr(jit_backward, "KEEP_SLOPES", True)
    slopes = saved_first(lif_fused(x, 0.9, surrogate=EXP).output)
    assert slopes.shape == membranes.shape
    torch.testing.assert_close(slopes, EXP.derivative(membranes - 1.0), rtol=1e-6, atol=0)
    assert not torch.equal(slopes, membranes)


@pytest.mark.parametrize(
    "options",
    [
        dict(reset="zero"),
        dict(min_v_mem=-0.2),
        dict(norm_input=True),
        dict(record_states=True),
        dict(checkpoint=4),
        dict(surrogate=_Own()),
        dict(alpha_syn=0.7),
        dict(trainable="threshold"),
        dict(trainable="alpha"),
    ],
)
def test_the_membranes_are_kept_where_backward_reads_them(options, monkeypatch):
    options = dict(options)
    trainable = options.pop("trainable", None)
    alpha_syn = options.pop("alpha_syn", None)
    options.setdefault("surrogate", EXP)
    x = torch.rand(3, 12, 10, requires_grad=True)
    alpha = torch.tensor(0.9, requires_grad=trainable == "alpha")
    threshold = torch.tensor(1.0, requires_grad=trainable == "threshold")
    monkeypatch.setattr(jit_backward, "KEEP_SLOPES", True)
    out = lif_fused(x, alpha, alpha_syn, threshold, **options)
    kept = None if options.get("checkpoint") else saved_first(out.output)
    grads = torch.autograd.grad(out.output.sum(), x)
    if kept is not None:
        monkeypatch.setattr(jit_backward, "KEEP_SLOPES", False)
        membranes = saved_first(lif_fused(x, alpha, alpha_syn, threshold, **options).output)
        assert torch.equal(kept, membranes)
    monkeypatch.setattr(jit_backward, "KEEP_SLOPES", False)
    again = torch.autograd.grad(
        lif_fused(x, alpha, alpha_syn, threshold, **options).output.sum(), x
    )
    assert torch.equal(grads[0], again[0])


def test_the_pytorch_backward_reads_kept_slopes(monkeypatch, record_calls):
    # The compiled backward turned off after forward kept the slopes: the PyTorch
    # backward reads them, and gives the compiled gradients to rounding.
    x = torch.rand(5, 30, 20, requires_grad=True)
    expected = torch.autograd.grad(lif_fused(x, 0.85, surrogate=EXP).output.sum() * 3, x)[0]
    kept = record_calls(jit_backward, "kept_slopes")
    out = lif_fused(x, 0.85, surrogate=EXP)
    assert kept[-1] is not None
    monkeypatch.setattr(jit_backward, "ENABLED", False)
    segments = record_calls(jit_backward, "segment_backward")
    grad = torch.autograd.grad(out.output.sum() * 3, x)[0]
    assert segments == []
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


def test_the_pytorch_forward_keeps_the_slopes_asked_for(monkeypatch):
    # Asked for the slopes where the compiled loop does not run, the PyTorch loop
    # computes them from its membranes.
    x, v0 = torch.rand(3, 9, 7), torch.zeros(3, 7)
    options = Options("subtract", EXP, 1, None, False, False, True)
    alpha, threshold = torch.tensor(0.9), torch.tensor(0.7)
    args = (x, v0, None, alpha, None, threshold, None, options, False, True, False)
    membranes = kernel.sequence_forward(*args)[3]
    form = (jit_backward.SURROGATE_CODES["exp"], EXP.width, EXP.scale)
    compiled = kernel.sequence_forward(*args, None, form)[3]
    monkeypatch.setattr(jit, "ENABLED", False)
    in_pytorch = kernel.sequence_forward(*args, None, form)[3]
    torch.testing.assert_close(compiled, EXP.derivative(membranes - threshold), rtol=1e-6, atol=0)
    torch.testing.assert_close(in_pytorch, compiled, rtol=1e-6, atol=0)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("surrogate", [ArcTan(width=0.5, scale=0.9), EXP])
def test_the_loop_keeps_any_surrogates_slopes(reset, surrogate):
    # The compiled forward loop writes the slopes of any surrogate it knows, for any
    # reset (its general steps, beside the plainest ones that kept_slopes uses).
    x, v0 = torch.rand(4, 11, 6) * 1.5, torch.zeros(4, 6)
    options = Options(reset, surrogate, 1, None, False, False, True)
    alpha, threshold = torch.tensor(0.8), torch.tensor(0.6)
    args = (x, v0, None, alpha, None, threshold, None, options, False, True, False)
    membranes = jit.sequence_forward(*args)[3]
    kind, width, scale = surrogate.kernel_form()
    form = (jit_backward.SURROGATE_CODES[kind], width, scale)
    slopes = jit.sequence_forward(*args, None, form)[3]
    torch.testing.assert_close(
        slopes, surrogate.derivative(membranes - threshold), rtol=1e-6, atol=0
    )


def test_a_backward_that_reads_the_membranes_refuses_slopes():
    x, v0 = torch.rand(2, 5, 3), torch.zeros(2, 3)
    threshold = torch.tensor(1.0)
    saved = (x, None, None, v0, None, torch.tensor(0.9), None, threshold, None, None, None)
    options = Options("subtract", EXP, 1, None, False, False, True)
    needs = (True, False, False, False, False, True, False)
    with pytest.raises(RuntimeError, match="membranes were not kept"):
        kernel_backward.sequence_backward(
            options, needs, saved, (x, None, None, None, None), None, True
        )


@pytest.mark.parametrize("retain", [False, True])
def test_backward_writes_over_the_slopes_unless_the_graph_is_kept(retain, monkeypatch):
    x = torch.rand(6, 40, 96, requires_grad=True)
    monkeypatch.setattr(jit_backward, "KEEP_SLOPES", False)
    expected = torch.autograd.grad(lif_fused(x, 0.85, surrogate=EXP).output.sum(), x)[0]
    monkeypatch.setattr(jit_backward, "KEEP_SLOPES", True)
    out = lif_fused(x, 0.85, surrogate=EXP)
    address = saved_first(out.output).data_ptr()
    grad = torch.autograd.grad(out.output.sum(), x, retain_graph=retain)[0]
    assert torch.equal(grad, expected)
    assert (grad.data_ptr() == address) is not retain  # in the slopes' memory
    if retain:  # the slopes are still there for a second pass
        again = torch.autograd.grad(out.output.sum(), x)[0]
        assert torch.equal(again, expected)


@pytest.mark.parametrize("wrap", ["checkpoint", "save_on_cpu", "twice"])
def test_kept_slopes_under_pytorchs_saved_tensor_tools(wrap, monkeypatch):
    # torch.utils.checkpoint recomputes the saved slopes in backward; save_on_cpu packs
    # them; a layer used twice saves two sets: each is read, then written over, once.
    x = torch.rand(4, 20, 48, requires_grad=True)
    linear = torch.nn.Linear(48, 48)

    def model(data):
        first = lif_fused(data, 0.85, surrogate=EXP).output
        return lif_fused(linear(first) + data, 0.85, surrogate=EXP).output

    def gradient():
        if wrap == "checkpoint":
            total = checkpoint(model, x, use_reentrant=False).sum()
        elif wrap == "save_on_cpu":
            with torch.autograd.graph.save_on_cpu():
                total = model(x).sum()
        else:
            total = model(model(x)).sum()
        return torch.autograd.grad(total, (x, linear.weight))

    monkeypatch.setattr(jit_backward, "KEEP_SLOPES", False)
    expected = gradient()
    monkeypatch.setattr(jit_backward, "KEEP_SLOPES", True)
    for got, want in zip(gradient(), expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("surrogate", KEPT)
def test_non_finite_inputs_the_same_bits(surrogate, monkeypatch):
    # nan and infinite membranes give the slopes (and gradients) they give in backward
    x = torch.rand(3, 20, 9)
    x[0, 3, 2], x[1, 5, 1], x[2, 7, 0] = float("nan"), float("inf"), -float("inf")
    x.requires_grad_()
    grads = []
    for keep in (True, False):
        monkeypatch.setattr(jit_backward, "KEEP_SLOPES", keep)
        spikes = lif_fused(x, 0.9, surrogate=surrogate).output
        grads.append(torch.autograd.grad((spikes * torch.linspace(0, 1, 9)).sum(), x)[0])
    assert grads[0].isnan().any()
    assert torch.equal(grads[0].isnan(), grads[1].isnan())
    assert torch.equal(grads[0].nan_to_num(7.0), grads[1].nan_to_num(7.0))
