"""What the Q/DQ export guarantees on deep convolutional models (docs/errors.rst):

- every scale a power of two, biases on the accumulator grid and every accumulator
  below 2**24 steps (``aquatic.convert(model).exact``): bit for bit in onnxruntime,
  graph optimizations off (every float operation is exact) and default (measured);
- otherwise no bound holds a priori: the float convolutions inside the Q/DQ pairs
  round differently from torch's and flip codes at rounding boundaries, and the flips
  grow with depth; the envelopes asserted below are the figures measured on these nets
  (optimizations off: up to 8 output steps, >= 99.6 % of outputs exact over 4 seeds;
  default optimizations: up to 11 steps, argmax agreement >= 0.979).

The integer export (tests/interop/test_onnx_integer.py) is exact in every case.
"""

import pytest
import torch
from torch import nn

import aquatic
from aquatic import QConfig
from aquatic.interop import onnx as aonnx
from aquatic.quantizers import AccumulatorBiasQuantizer, UniformQuantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def qconfig(power_of_two):
    return QConfig(
        activation=UniformQuantizer.with_args(
            bits=8, signed=False, symmetric=False, power_of_two=power_of_two
        ),
        weight=UniformQuantizer.with_args(
            bits=8, ch_axis=0, narrow_range=True, power_of_two=power_of_two
        ),
        bias=AccumulatorBiasQuantizer,
    )


def deep_net(q, bias=True):
    """Inverted-residual blocks (torchvision's MobileNetV2 without the residual)."""
    layers = [
        aquatic.nn.ActivationQuantizer(qconfig=q),
        aquatic.nn.Conv2d(3, 12, 3, padding=1, bias=bias, qconfig=q),
        nn.ReLU(),
    ]
    for cin, cout, stride in [(12, 10, 1), (10, 14, 2), (14, 14, 1), (14, 20, 1)]:
        hidden = cin * 3
        layers += [
            aquatic.nn.Conv2d(cin, hidden, 1, bias=bias, qconfig=q),
            nn.ReLU(),
            aquatic.nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=bias, qconfig=q),
            nn.ReLU(),
            aquatic.nn.Conv2d(hidden, cout, 1, bias=bias, qconfig=q),
        ]
    layers += [nn.Flatten(), aquatic.nn.Linear(20 * 4 * 4, 10, bias=bias, qconfig=q)]
    model = nn.Sequential(*layers)
    for layer in model.modules():  # He initialisation: the signal survives the depth
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 8, 8) * 2)
    return model.eval()


def steps_off(path, model, x, optimize):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        expected = model(x)
    step = float(model[-1].quantizers["activation"].qparams()["scale"])
    agree = float((out.argmax(1) == expected.argmax(1)).float().mean())
    return ((out - expected).abs() / step).round(), agree


def test_power_of_two_scales_are_bit_for_bit_without_optimizations(tmp_path):
    torch.manual_seed(0)
    # no biases: an observed AccumulatorBiasQuantizer puts them on an estimated grid
    model = deep_net(qconfig(power_of_two=True), bias=False)
    assert aquatic.convert(model).exact  # power-of-two scales, sums below 2**24
    aonnx.export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    x = torch.randn(256, 3, 8, 8) * 2
    for optimize in (False, True):
        error, _ = steps_off(tmp_path / "m.onnx", model, x, optimize=optimize)
        assert float(error.max()) == 0, optimize


def test_other_scales_stay_within_the_measured_bound(tmp_path):
    torch.manual_seed(0)
    model = deep_net(qconfig(power_of_two=False))
    assert not aquatic.convert(model).exact
    aonnx.export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    x = torch.randn(256, 3, 8, 8) * 2
    error, agree = steps_off(tmp_path / "m.onnx", model, x, optimize=False)
    assert float(error.max()) <= 8 and float((error == 0).float().mean()) >= 0.99
    assert agree >= 0.99
    error, agree = steps_off(tmp_path / "m.onnx", model, x, optimize=True)
    assert float(error.max()) <= 16 and agree >= 0.95
