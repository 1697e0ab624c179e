"""The compiled fake-quantization loops give the PyTorch operations' bits: values,
gradients and observer ranges, on one thread, on the OpenMP team and through the
autograd.Function of large tensors."""

import pytest
import torch

from aquatic.functional import fake_quant_jit, fake_quantize_nearest_scalar, jit_openmp

pytestmark = pytest.mark.skipif(not fake_quant_jit.available(), reason="needs Numba")

RANGES = [(-128, 127, 0), (0, 255, 37), (-8, 7, 3), (0, 65535, 100), (0, 1, 0)]


def bits(t):
    return t.detach().view(torch.int32)


def hard_inputs(scale, n):
    """Ties (k + 0.5) s, grid points k s, far out-of-range values, signed zeros,
    infinities and NaN."""
    k = torch.randint(-400, 400, (n,)).double()
    x = torch.cat([(k + 0.5) * scale, k * scale, torch.randn(n).double() * 400 * scale])
    x[:5] = torch.tensor([-0.0, -1e-9, float("inf"), float("-inf"), float("nan")])
    return x.float()


@pytest.fixture(params=["one thread", "team", "function", "team, function"])
def path(request, monkeypatch, set_threads, record_calls):
    """How the loop runs: on this thread; shared on the OpenMP team (two threads, every
    size); through the autograd.Function (every size: a byte mask, and the gradient's
    product with it in a loop too); or both. Yields a list of the team's runs (whether
    each ran)."""
    runs = []
    if "team" in request.param:
        if not jit_openmp.usable():
            pytest.skip("no OpenMP team to share calls on")
        set_threads(2)
        monkeypatch.setattr(fake_quant_jit, "PARALLEL_ABOVE", 1)
        runs = record_calls(jit_openmp, "run_on_team")
    if "function" in request.param:
        for name in ("CLONE_LIMIT", "PRODUCT_LIMIT"):
            monkeypatch.setattr(fake_quant_jit, name, 1)
    yield request.param, runs


def ops_and_loop(compute, data, monkeypatch):
    """``compute`` on a fresh leaf of ``data`` with the PyTorch operations and with the
    loops: each ``(value, input gradient)`` for the same random output gradient."""
    grad = torch.randn(data.shape)
    results = []
    for enabled in (False, True):
        monkeypatch.setattr(fake_quant_jit, "ENABLED", enabled)
        x = data.clone().requires_grad_()
        y = compute(x)
        y.backward(grad)
        results.append((y, x.grad))
    return results


@pytest.mark.parametrize("qmin,qmax,zp", RANGES)
@pytest.mark.parametrize("clips", [True, False])
def test_scalar_path_equals_the_operations(qmin, qmax, zp, clips, path, monkeypatch):
    torch.manual_seed(qmax + zp)
    for _ in range(3):
        scale = float(torch.rand(()) * 0.1 + 1e-4)
        x = hard_inputs(scale, 300)
        if not clips:  # the caller's promise: every code in range (NaN aside)
            codes = torch.round(x * torch.tensor(1 / scale).float()) + zp
            x = x[((codes >= qmin) & (codes <= qmax)) | x.isnan()]
        compute = lambda t: fake_quantize_nearest_scalar(t, scale, zp, qmin, qmax, clips)
        (ops, ops_grad), (loop, loop_grad) = ops_and_loop(compute, x, monkeypatch)
        assert torch.equal(bits(loop), bits(ops))  # NaN, +-0.0 and all
        assert torch.equal(bits(loop_grad), bits(ops_grad))  # -0.0 where masked
        function = loop.grad_fn.name() in ("_IdentityBackward", "_MaskedBackward")
        assert function == ("function" in path[0])
        if clips:  # and torch's own kernel, on the finite values
            finite = x[x.isfinite()].clone().requires_grad_()
            expected = torch.fake_quantize_per_tensor_affine(finite, scale, zp, qmin, qmax)
            assert torch.equal(bits(loop[x.isfinite()]), bits(expected))
    if "team" in path[0]:
        assert path[1] and all(path[1]), "the calls did not run on the team"
        # forward and backward of each of the three steps, where there is a mask
        assert len(path[1]) == (6 if clips and "function" in path[0] else 3)


def masked_step(data, monkeypatch):
    """The loops' fake quantization of a leaf of ``data`` through the autograd.Function
    (a byte mask), codes clipping at both ends."""
    for name in ("CLONE_LIMIT", "PRODUCT_LIMIT"):
        monkeypatch.setattr(fake_quant_jit, name, 1)
    x = data.clone().requires_grad_()
    return x, fake_quantize_nearest_scalar(x, 0.05, 3, -8, 7, True)


def test_a_large_tensor_keeps_a_byte_mask_for_backward(monkeypatch):
    x, y = masked_step(torch.randn(4, 50), monkeypatch)
    (mask,) = y.grad_fn.saved_tensors
    assert mask.dtype == torch.uint8 and mask.shape == x.shape
    codes = torch.round(x.detach() / 0.05) + 3
    assert torch.equal(mask.bool(), (codes >= -8) & (codes <= 7))
    assert 0 < int(mask.sum()) < x.numel()


@pytest.mark.parametrize("layout", ["transposed", "expanded", "float64"])
def test_a_gradient_the_product_loop_cannot_take_gets_pytorch_product(layout, monkeypatch):
    """Strided, broadcast or double gradients: PyTorch's product with the byte mask, the
    same bits as the operations' product with a float mask."""
    data = hard_inputs(0.05, 40).view(12, 10)
    grad = {
        "transposed": -torch.randn(10, 12).t(),
        "expanded": torch.tensor(-1.5).expand(12, 10),
        "float64": torch.randn(12, 10, dtype=torch.float64),
    }[layout]
    results = []
    for enabled in (False, True):
        monkeypatch.setattr(fake_quant_jit, "ENABLED", enabled)
        x, y = masked_step(data, monkeypatch)
        assert (y.grad_fn.name() == "_MaskedBackward") == enabled
        y.backward(grad.to(y.dtype) if layout != "float64" else grad.float())
        results.append(x.grad)
    assert torch.equal(bits(results[1]), bits(results[0]))


def test_a_second_derivative_goes_through_the_mask(monkeypatch):
    """With ``create_graph``, the gradient times the mask stays differentiable: the
    derivative of sum(w * dL/dx) by w is the mask, as with the operations."""
    data = hard_inputs(0.05, 40)
    results = []
    for enabled in (False, True):
        monkeypatch.setattr(fake_quant_jit, "ENABLED", enabled)
        x, y = masked_step(data, monkeypatch)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
        (dx,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        (dw,) = torch.autograd.grad(dx.sum(), w)
        results.append((dx.detach(), dw))
    assert torch.equal(bits(results[1][0]), bits(results[0][0]))
    assert torch.equal(results[1][1], results[0][1])
    assert 0 < int(results[1][1].sum()) < data.numel()  # the mask: some codes clip


def test_scalar_path_without_gradient(monkeypatch):
    x = hard_inputs(0.02, 200)
    with torch.no_grad():
        for enabled in (False, True):
            monkeypatch.setattr(fake_quant_jit, "ENABLED", enabled)
            y = fake_quantize_nearest_scalar(x.clone().requires_grad_(), 0.02, 3, -8, 7)
            assert not y.requires_grad
            if enabled:
                assert torch.equal(bits(y), bits(previous))
            previous = y


def test_only_plain_float32_tensors_take_the_loop():
    assert fake_quant_jit.applies(torch.randn(3, 4))
    assert not fake_quant_jit.applies(torch.randn(3, 4).t())  # not contiguous
    assert not fake_quant_jit.applies(torch.randn(3, 4, dtype=torch.float64))
    assert not fake_quant_jit.applies(torch.randn(3, 4).half())
    assert not fake_quant_jit.applies(torch.randn(0))


def test_turned_off_by_enabled(monkeypatch):
    monkeypatch.setattr(fake_quant_jit, "ENABLED", False)
    assert not fake_quant_jit.available()
    assert not fake_quant_jit.applies(torch.randn(3))


@pytest.mark.parametrize("clips", [True, False])
@pytest.mark.parametrize("function", [False, True], ids=["small", "function"])
def test_channels_last_tensors_take_the_loop_in_their_memory_order(clips, function, monkeypatch):
    """Also through the autograd.Function: a channels-last byte mask, which the gradient's
    product loop leaves to PyTorch's product (it reads contiguous memory only)."""
    if function:
        for name in ("CLONE_LIMIT", "PRODUCT_LIMIT"):
            monkeypatch.setattr(fake_quant_jit, name, 1)
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, 6) * 3 if clips else torch.rand(3, 4, 5, 6) * 0.7 - 0.45
    x = x.to(memory_format=torch.channels_last)  # without clips: codes in -8..7
    assert fake_quant_jit.applies(x, dense=True) and not fake_quant_jit.applies(x)
    compute = lambda t: fake_quantize_nearest_scalar(t, 0.05, 2, -8, 7, clips)
    (ops, ops_grad), (loop, loop_grad) = ops_and_loop(compute, x, monkeypatch)
    assert loop.stride() == x.stride()
    assert torch.equal(bits(loop.contiguous()), bits(ops.contiguous()))
    assert torch.equal(bits(loop_grad.contiguous()), bits(ops_grad.contiguous()))
    assert (loop.grad_fn.name() == "_MaskedBackward") == (function and clips)


class Marked(torch.Tensor):
    """A tensor subclass: its operations may mean something else."""


def test_what_records_or_wraps_operations_takes_them():
    x = torch.randn(4, 5)
    assert fake_quant_jit.applies(x) and fake_quant_jit.applies(torch.nn.Parameter(x))
    assert not fake_quant_jit.applies(x.as_subclass(Marked))
    seen = []
    torch.func.grad(lambda t: seen.append(fake_quant_jit.applies(t)) or t.sum())(x)
    assert seen == [False]  # a torch.func transform's tensor has no memory of its own


def quantized_mlp(per_channel):
    import aquatic
    from aquatic.quantizers import UniformQuantizer

    qconfig = aquatic.qconfig.int8
    if per_channel:
        qconfig = qconfig._replace(weight=UniformQuantizer.with_args(bits=8, ch_axis=0))
    torch.manual_seed(0)
    float_model = torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    model = aquatic.quantize(float_model, qconfig)
    model(torch.randn(32, 12) * 2)  # ranges
    return model


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_traced_model_keeps_its_quantization(per_channel):
    model = quantized_mlp(per_channel).eval()
    # (check_trace off: its second run takes the no-gradient branch, the same values)
    # 512 x 16 activations: large enough that eager mode checks whether any code clips
    # (none does for these small inputs), which a traced graph must not bake in
    traced = torch.jit.trace(model, torch.randn(512, 12) * 0.1, check_trace=False)
    x = torch.randn(512, 12) * 3  # codes that clip: the graph must clamp them
    assert torch.equal(traced(x), model(x))
    float_output = torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(x, model[0].weight, model[0].bias)),
        model[2].weight,
        model[2].bias,
    )
    assert not torch.equal(traced(x), float_output)


@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_func_gradients_equal_the_operations(per_channel, monkeypatch):
    # eval: observers that update mutate their buffers, which torch.func refuses
    model = quantized_mlp(per_channel).eval()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.randn(8, 12)
    grads = []
    for enabled in (False, True):
        monkeypatch.setattr(fake_quant_jit, "ENABLED", enabled)
        trial = {k: v.clone() for k, v in params.items()}
        state = {k: v.clone() for k, v in model.state_dict().items()}
        loss = lambda p: torch.func.functional_call(model, p, (x,)).square().sum()
        grads.append(torch.func.grad(loss)(trial))
        model.load_state_dict(state)
    for name in params:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_extrema_keys_stay_32_bit_integers():
    """The keys' loop works on int32 (Numba widens int32 arithmetic to int64 unless told
    otherwise, and int64 keys vectorize at half the width), and the keys order as the
    floats do, signed zeros, infinities and NaN included."""
    np = pytest.importorskip("numpy")
    from aquatic.functional import jit_ranges

    values = np.array([0.5, -0.0, 0.0, -np.inf, 3.0, np.inf, -2.0], np.float32)
    low, high = jit_ranges.extrema_keys(values.view(np.int32))
    assert jit_ranges.key_floats(low, high, np.empty(2, np.int32)) == (-np.inf, np.inf)
    signature = jit_ranges.extrema_keys.nopython_signatures[-1]
    assert str(signature.return_type) == "UniTuple(int32 x 2)"
    values[2] = np.nan  # beyond the infinities
    low, high = jit_ranges.extrema_keys(values.view(np.int32))
    assert np.isnan(jit_ranges.key_floats(low, high, np.empty(2, np.int32))[1])


@pytest.mark.parametrize("team", [False, True], ids=["one call", "on the team"])
def test_a_clone_is_read_and_quantized_in_place(team, monkeypatch, set_threads):
    """Where the identity gradient comes from a clone, the loop reads the clone, not the
    input, and writes over it: one array. The input keeps its values; the values, the
    gradient and the range are those of the autograd.Function's path, which reads the
    input."""
    if team:
        if not jit_openmp.usable():
            pytest.skip("no OpenMP team")
        set_threads(2)
        monkeypatch.setattr(fake_quant_jit, "SHARE_OBSERVE_FROM", 1)
    sources = []
    loops, original = fake_quant_jit._loops, fake_quant_jit._loops.observe_scalar_at
    spy = lambda *a: sources.append(a[:2]) or original(*a)
    monkeypatch.setattr(loops, "observe_scalar_at", spy)
    original_call = fake_quant_jit._call
    spy_call = lambda s, o, *a: sources.append((s.data_ptr(), o.data_ptr())) or original_call(
        s, o, *a
    )
    monkeypatch.setattr(fake_quant_jit, "_call", spy_call)
    data = torch.randn(40, 30) * 3
    results = []
    for limit in (1 << 30, 1):  # a clone; the autograd.Function
        monkeypatch.setattr(fake_quant_jit, "CLONE_LIMIT", limit)
        sources.clear()
        x = data.clone().requires_grad_()
        low, high = torch.tensor(-1.0), torch.tensor(1.0)
        args = (fake_quant_jit.MIN_MAX, 0.0, True, True, -128, 127, 3e38, False)
        y = fake_quant_jit.observe_scalar_step(x, low, high, *args)
        assert torch.equal(x.detach(), data)
        y.backward(torch.arange(float(y.numel())).view(y.shape))
        results.append((bits(y), bits(x.grad), low, high, list(sources), y.data_ptr()))
    (value, grad, low, high, calls, address), expected = results
    assert calls and all(source == out == address for source, out in calls)
    assert all(source != out for source, out in expected[4])
    assert torch.equal(value, expected[0]) and torch.equal(grad, expected[1])
    assert torch.equal(low, expected[2]) and torch.equal(high, expected[3])


def test_a_per_channel_clone_is_read_and_quantized_in_place(monkeypatch):
    """The per-row step reads its clone in place too: the same bits and ranges as the
    autograd.Function's path, which reads the input; the input keeps its values."""
    sources = []
    loops, original = fake_quant_jit._loops, fake_quant_jit._loops.observe_rows_at
    spy = lambda *a: sources.append(a[:2]) or original(*a)
    monkeypatch.setattr(loops, "observe_rows_at", spy)
    data = torch.randn(12, 50) * torch.linspace(0.1, 4, 12)[:, None]
    results = []
    for limit in (1 << 30, 1):  # a clone; the autograd.Function
        monkeypatch.setattr(fake_quant_jit, "CLONE_LIMIT", limit)
        monkeypatch.setattr(fake_quant_jit, "PRODUCT_LIMIT", limit)
        sources.clear()
        x = data.clone().requires_grad_()
        low, high = torch.full((12,), -0.5), torch.full((12,), 0.5)
        y = fake_quant_jit.minmax_rows_step(x, low, high, 127, 3e38)
        assert torch.equal(x.detach(), data)
        y.backward(torch.arange(float(y.numel())).view(y.shape))
        results.append((bits(y), bits(x.grad), low, high, list(sources), y.data_ptr()))
    (value, grad, low, high, calls, address), expected = results
    assert calls == [(address, address)]
    assert len(expected[4]) == 1 and expected[4][0][0] != expected[4][0][1]
    assert torch.equal(value, expected[0]) and torch.equal(grad, expected[1])
    assert torch.equal(low, expected[2]) and torch.equal(high, expected[3])


def test_same_bits_tells_every_bit():
    x = torch.randn(1000)
    assert fake_quant_jit.same_bits(x, x.clone())
    for k in (0, 517, 999):  # one bit anywhere
        y = x.clone()
        y.view(torch.int32)[k] ^= 1
        assert not fake_quant_jit.same_bits(x, y)
    zeros = torch.zeros(3)
    assert not fake_quant_jit.same_bits(zeros, -zeros)
    nan = torch.full((2,), float("nan"))
    other = nan.clone()
    other.view(torch.int32)[0] ^= 1  # another NaN payload
    assert fake_quant_jit.same_bits(nan, nan.clone()) and not fake_quant_jit.same_bits(nan, other)
    assert not fake_quant_jit.same_bits(x, x[:999].clone())  # sizes
    assert not fake_quant_jit.same_bits(x.view(10, 100).t(), x.view(10, 100).t())  # strided
    assert not fake_quant_jit.same_bits(x.double(), x.double())
