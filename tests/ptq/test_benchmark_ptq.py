"""benchmarks/ptq.py: the layers it quantizes, and clips chosen by the output error."""

import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("sklearn")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("ptq")


def _folded_cnn(bench):
    torch.manual_seed(0)
    model = bench.make_cnn(width=4)
    with torch.no_grad():  # running statistics away from the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return bench.aquatic.fold_batch_norm(model.eval())


def test_layer_names_walk_the_model(bench):
    model = _folded_cnn(bench)
    names = bench.layer_names(model)
    layers = dict(model.named_modules())
    assert len(names) == 8  # stem, three depthwise + pointwise pairs, head
    assert [type(layers[n]) for n in names] == [nn.Conv2d] * 7 + [nn.Linear]
    assert [layers[n].groups for n in names[1:7:2]] == [4, 8, 16]  # depthwise
    assert bench.layer_names(bench.make_mlp()) == ["0", "2", "4"]


def _channel_errors(layer, delta, inputs):
    """Each output channel's summed squared error for a weight error ``delta``."""
    if isinstance(layer, nn.Linear):
        return (nn.functional.linear(inputs, delta) ** 2).sum(dim=0)
    out = nn.functional.conv2d(
        inputs, delta, None, layer.stride, layer.padding, layer.dilation, layer.groups
    )
    return (out**2).sum(dim=(0, 2, 3))


@torch.no_grad()
def test_output_mse_clips_are_the_best_of_the_grid_on_convolutions(bench):
    model = _folded_cnn(bench).double()
    gen = torch.Generator().manual_seed(1)
    calib = [torch.rand(16, 64, generator=gen, dtype=torch.float64) for _ in range(2)]
    top = 3  # 3 bits, narrow range
    mapping = bench.output_mse_qconfigs(model, 3, calib)
    layers = dict(model.named_modules())
    inputs = {}
    handles = [
        layers[n].register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, []).append(a[0]))
        for n in mapping
    ]
    for batch in calib:
        model(batch)
    for handle in handles:
        handle.remove()
    assert set(mapping) == set(bench.layer_names(model))

    def errors(layer, scale, x):
        scale = scale.reshape((-1,) + (1,) * (layer.weight.dim() - 1))
        delta = torch.clamp(torch.round(layer.weight / scale), -top, top) * scale
        return _channel_errors(layer, delta - layer.weight, x)

    for name, qconfig in mapping.items():
        layer, x = layers[name], torch.cat(inputs[name])
        largest = layer.weight.abs().flatten(1).amax(dim=1)
        grid = torch.linspace(0.2, 1.0, 81, dtype=torch.float64)
        best = torch.stack([errors(layer, largest * r / top, x) for r in grid]).amin(dim=0)
        chosen = errors(layer, qconfig.weight().scale.double(), x)
        # float32 scales: equal to the grid's best up to their rounding
        assert torch.allclose(chosen, best, rtol=1e-3, atol=1e-9), name
        assert torch.all(best <= errors(layer, largest / top, x) + 1e-12)
