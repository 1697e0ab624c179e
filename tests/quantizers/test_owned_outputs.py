"""A Linear's or convolution's own large output is fake-quantized in place by the compiled
loops (``QuantizedModule.quantize_own_output``): training gives the bits of the
quantization into a new tensor, and nothing else is written over (a tensor a user hands
to ``quantize_output``, one a quantizer's hook sees, a per-channel step's input)."""

import importlib.util

import pytest
import torch
from torch import nn

import aquatic
import aquatic.functional.fake_quant_jit as fake_quant_jit
import aquatic.functional.fake_quant_outputs as outputs
from aquatic.quantizers import UniformQuantizer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="needs numba (pip install aquatic[fast])"
)

#: samples per batch: the layers' outputs lie above the in-place limit (2^18 values)
BATCH = 64


def conv_net() -> nn.Module:  # outputs of 602,112 and 301,056 values
    layers = [nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)]
    layers += [nn.Conv2d(12, 24, 3, padding=1), nn.ReLU(), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(24 * 14 * 14, 10))


def transposed_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 28 * 28, 10),
    )


def wide_mlp() -> nn.Module:  # a Linear output of 64 x 4608 values
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 4608), nn.ReLU(), nn.Linear(4608, 10))


class Residual(nn.Module):
    """Its own forward: a convolution's output read twice, and a layer used twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.mix = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16 * 28 * 28, 10)

    def forward(self, x):
        y = self.conv(x)
        z = torch.relu(self.mix(y)) + y
        z = torch.relu(self.mix(z)) + y
        return self.head(z.flatten(1))


def train(model_fn, in_place, monkeypatch, qconfig=aquatic.qconfig.int8, steps=4):
    """Losses and parameters after a few SGD steps, the loops allowed to write in place
    or not, and how many calls wrote in place."""
    monkeypatch.setattr(outputs, "owns", outputs.owns if in_place else (lambda tensor: False))
    written = []
    prepare = outputs.prepare

    def recorded(*args, **kwargs):
        written.append(prepare(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(fake_quant_jit, "prepare", recorded)
    torch.manual_seed(0)
    model = aquatic.quantize(model_fn(), qconfig)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(BATCH, 1, 28, 28, generator=generator)
        y = torch.randint(0, 10, (BATCH,), generator=generator)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():  # and inference, in place too
        model.eval()
        logits = model(torch.randn(BATCH, 1, 28, 28, generator=generator))
    monkeypatch.undo()
    params = [p.detach().clone() for p in model.parameters()]
    return losses, params, logits, sum(w.here for w in written)


#: symmetric signed activations, whose running range holds every batch: no code clips,
#: the identity gradient (no mask), and the min-max rule
SYMMETRIC = aquatic.qconfig.int8._replace(
    activation=UniformQuantizer.with_args(bits=8, signed=True, symmetric=True)
)


@pytest.mark.parametrize("model_fn", [conv_net, transposed_net, wide_mlp, Residual])
@pytest.mark.parametrize("qconfig", [aquatic.qconfig.int8, SYMMETRIC])
@pytest.mark.parametrize("threads", [1, 2])
def test_training_is_the_same_bits_in_place(model_fn, qconfig, threads, monkeypatch, set_threads):
    set_threads(threads)
    losses, params, logits, here = train(model_fn, True, monkeypatch, qconfig)
    assert here > 0  # the loops wrote over some layer's output
    again, params_again, logits_again, none = train(model_fn, False, monkeypatch, qconfig)
    assert none == 0
    assert losses == again
    assert all(torch.equal(a, b) for a, b in zip(params, params_again))
    assert torch.equal(logits, logits_again)


@pytest.mark.parametrize("grad", [True, False])
def test_the_per_row_step_never_writes_over_its_input(grad):
    # (its rows are shared out whole, and not read in full before they are written)
    x = torch.randn(512, 1024, requires_grad=grad) * 1.0  # a tensor of its own, as owned
    kept = x.detach().clone()
    low, high = torch.full((512,), -0.1), torch.full((512,), 0.1)
    outputs.OWNED.tensor = x
    try:
        y = fake_quant_jit.minmax_rows_step(x, low, high, 127, 3e38)
    finally:
        outputs.OWNED.tensor = None
    assert y is not None and not torch.equal(y.detach(), kept)
    assert torch.equal(x.detach(), kept)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("clips", [True, False])
def test_the_per_tensor_step_writes_over_an_owned_input(grad, clips):
    leaf = (torch.randn(512, 1024) * 3).requires_grad_(grad)
    weights = torch.randn(512, 1024)
    args = (0.05, 20.0, -128.0, 127.0, clips)
    expected = fake_quant_jit.quantize_scalar(leaf * 1.0, *args)
    x = leaf * 1.0  # a tensor of its own, as a layer's output
    outputs.OWNED.tensor = x
    try:
        y = fake_quant_jit.quantize_scalar(x, *args)
    finally:
        outputs.OWNED.tensor = None
    assert y is x  # written over
    assert torch.equal(y.detach(), expected.detach())
    if grad:  # the gradient's mask (or the identity) came along
        (want,) = torch.autograd.grad((expected * weights).sum(), leaf)
        (got,) = torch.autograd.grad((y * weights).sum(), leaf)
        assert torch.equal(got, want)


def test_a_users_tensor_is_never_written_over():
    layer = aquatic.quantize(conv_net(), aquatic.qconfig.int8)[0]
    layer(torch.randn(BATCH, 1, 28, 28))  # a range
    mine = torch.randn(BATCH, 16, 28, 28, requires_grad=True) * 1.0
    kept = mine.detach().clone()
    result = layer.quantize_output(mine)
    assert torch.equal(mine.detach(), kept)
    assert result.data_ptr() != mine.data_ptr()


def test_a_quantizers_hook_sees_the_output_as_made():
    model = aquatic.quantize(conv_net(), aquatic.qconfig.int8)
    seen = []

    def hook(module, args, output):
        seen.append((args[0], args[0].detach().clone(), output))

    handle = model[0].quantizers["activation"].register_forward_hook(hook)
    model[0](torch.randn(BATCH, 1, 28, 28))
    handle.remove()
    given, as_given, output = seen[0]
    assert torch.equal(given, as_given)  # not written over, during the call or after
    assert given.data_ptr() != output.data_ptr()
    assert not torch.equal(output, given)  # (quantized)


def test_the_owned_tensor_is_let_go_after_the_call():
    layer = aquatic.quantize(wide_mlp(), aquatic.qconfig.int8)[1]
    seen = []
    hook = layer.register_forward_hook(lambda *_: seen.append(outputs.OWNED.tensor))
    layer(torch.randn(BATCH, 784))
    hook.remove()
    assert seen == [None]
    with pytest.raises(Exception):
        layer(torch.randn(BATCH, 3))  # a wrong shape: the call fails
    assert getattr(outputs.OWNED, "tensor", None) is None


def test_a_refused_range_leaves_the_output_for_the_pytorch_operations(monkeypatch):
    # inf in the batch: the compiled step declines before it writes anything, and the
    # PyTorch operations take the output as the layer made it
    results = []
    for in_place in (True, False):
        monkeypatch.setattr(outputs, "owns", outputs.owns if in_place else (lambda t: False))
        torch.manual_seed(0)
        layer = aquatic.quantize(wide_mlp(), aquatic.qconfig.int8)[1]
        x = torch.randn(BATCH, 784)
        x[3, 5] = float("inf")
        try:
            results.append(("value", layer(x).detach()))
        except (ValueError, RuntimeError) as error:
            results.append(("error", str(error)))
    assert results[0][0] == results[1][0]
    if results[0][0] == "value":
        assert torch.equal(results[0][1].nan_to_num(3.0), results[1][1].nan_to_num(3.0))
    else:
        assert results[0][1] == results[1][1]
