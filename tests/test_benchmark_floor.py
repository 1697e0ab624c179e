"""benchmarks/qat_floor.py: its reference rows measure what they say."""

import copy
import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import aquatic
from aquatic.functional import fake_quant_jit
from aquatic.quantizers import Quantizer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def floor(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("qat_floor")


def train(model, steps=4):
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("per_channel", [False, True])
def test_bare_steps_train_to_aquatic_bits(floor, per_channel, record_calls):
    """The bare steps skip checks only: the same values and gradients as the quantizers."""
    torch.manual_seed(0)
    base = floor.MODELS["mlp"]()
    qconfig = floor.INT8_PER_CHANNEL if per_channel else aquatic.qconfig.int8
    expected = train(aquatic.quantize(copy.deepcopy(base), qconfig))
    bare = floor.replaced(aquatic.quantize(copy.deepcopy(base), qconfig), floor._bare_step)
    name = "minmax_rows_step" if per_channel else "observe_scalar_step"
    steps = record_calls(fake_quant_jit, name)
    quantizers = record_calls(Quantizer, "forward")  # the first step's, which decide
    got = train(bare)
    if fake_quant_jit.available():
        # five quantizers (three weights) over four steps: after the first steps, which
        # decide the plans, every call is a bare step
        assert len(quantizers) <= 2 * 5 and len(steps) >= 2 * (3 if per_channel else 5)
    for (key, value), (_, other) in zip(expected.state_dict().items(), got.state_dict().items()):
        assert torch.equal(value, other), key


def test_outputs_only_keep_the_gradients_nodes(floor):
    """A weight's copy and an activation's product with a mask of ones: their values,
    the gradient passed on, and no values quantized."""
    layer = aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int8)
    model = floor.replaced(layer, floor._outputs_only)
    weight, activation = model.quantizers["weight"], model.quantizers["activation"]
    for quantizer in (weight, activation):
        x = (torch.randn(3, 4) / 7).requires_grad_()
        out = quantizer(x)
        assert out is not x and out.grad_fn is not None and torch.equal(out, x)
        (out * 3).sum().backward()
        assert torch.equal(x.grad, torch.full((3, 4), 3.0))
