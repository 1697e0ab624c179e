"""The integer ONNX export: onnxruntime computes exactly what the integer model computes."""

from collections import Counter
from fractions import Fraction

import pytest
import torch
from torch import nn

import aquatic
from aquatic import QConfig
from aquatic.integer import IntegerModel, IntegerRequantize, QSpec
from aquatic.interop import onnx as aonnx
from aquatic.quantizers import AccumulatorBiasQuantizer, UniformQuantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

LEVELS = {
    "no-optimizations": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "default-optimizations": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def qconfig(bits=8, weight_bits=8, power_of_two=False, rounding="nearest", ch_axis=0):
    return QConfig(
        activation=UniformQuantizer.with_args(
            bits=bits, signed=False, symmetric=False, power_of_two=power_of_two, rounding=rounding
        ),
        weight=UniformQuantizer.with_args(
            bits=weight_bits, ch_axis=ch_axis, narrow_range=True, power_of_two=power_of_two
        ),
        bias=AccumulatorBiasQuantizer,
    )


def inverted_residual(cin, cout, stride, expand, q):
    """torchvision's MobileNetV2 block without the residual: expand, depthwise, project."""
    hidden = cin * expand
    return [
        aquatic.nn.Conv2d(cin, hidden, 1, qconfig=q),
        nn.ReLU(),  # ReLU6 has no integer counterpart in convert yet
        aquatic.nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, qconfig=q),
        nn.ReLU(),  # ReLU6 has no integer counterpart in convert yet
        aquatic.nn.Conv2d(hidden, cout, 1, qconfig=q),
    ]


def mobile_net(q):
    return nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=q),
        aquatic.nn.Conv2d(3, 12, 3, stride=2, padding=1, qconfig=q),
        nn.ReLU(),
        *inverted_residual(12, 10, 1, 3, q),
        *inverted_residual(10, 14, 2, 3, q),
        *inverted_residual(14, 14, 1, 4, q),
        *inverted_residual(14, 20, 1, 3, q),
        nn.MaxPool2d(2),
        aquatic.nn.Conv2d(20, 24, 1, qconfig=q),
        nn.ReLU(),
        nn.Flatten(),
        aquatic.nn.Linear(24 * 2 * 2, 7, qconfig=q),
    )


def calibrate(model, shape, batches=3):
    torch.manual_seed(1)
    for layer in model.modules():  # He initialisation: the signal survives the depth
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(shape) * 2)
    return model.eval()


def run(path, codes, level):
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": codes.numpy()})[0])


def export_and_compare(tmp_path, integer_model, codes):
    proto = aonnx.export_integer(integer_model, tmp_path / "m.onnx", codes[:2])
    expected = integer_model(codes)
    for level in LEVELS:
        out = run(tmp_path / "m.onnx", codes, level)
        assert out.dtype == expected.dtype and out.shape == expected.shape
        assert torch.equal(out, expected), level
    return proto, expected


@pytest.mark.parametrize("power_of_two", [False, True], ids=["any-scale", "power-of-two"])
def test_deep_mobile_net_exact(tmp_path, power_of_two):
    torch.manual_seed(0)
    model = calibrate(mobile_net(qconfig(power_of_two=power_of_two)), (16, 3, 16, 16))
    integer_model = aquatic.convert(model)
    codes = integer_model.quantize_input(torch.randn(48, 3, 16, 16) * 2)
    proto, expected = export_and_compare(tmp_path, integer_model, codes)
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops["ConvInteger"] == 14 and ops["MatMulInteger"] == 1
    assert not {"Conv", "MatMul", "QuantizeLinear", "DequantizeLinear"} & set(ops)
    assert expected.unique().numel() > 20  # the comparison is not between constants
    # the input type is the codes' int32, float inputs are not accepted
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_wide_codes_take_exact_routes(tmp_path):
    # 12-bit activations do not fit an 8-bit kernel: int64 MatMul, certified float32 Conv
    torch.manual_seed(0)
    q = qconfig(bits=12, weight_bits=4)
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=q),
        aquatic.nn.Conv2d(3, 5, 3, padding=1, qconfig=q),
        nn.ReLU(),
        aquatic.nn.ConvTranspose2d(5, 4, 2, stride=2, qconfig=qconfig(12, 4, ch_axis=1)),
        nn.AvgPool2d(2),
        nn.Flatten(),
        aquatic.nn.Linear(4 * 6 * 6, 6, qconfig=q),
    )
    model = calibrate(model, (8, 3, 6, 6))
    integer_model = aquatic.convert(model)
    codes = integer_model.quantize_input(torch.randn(32, 3, 6, 6) * 2)
    proto, _ = export_and_compare(tmp_path, integer_model, codes)
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops["Conv"] == 2 and ops["ConvTranspose"] == 1 and ops["MatMul"] == 1
    assert "ConvInteger" not in ops


def test_floor_rounding_and_signed_codes(tmp_path):
    torch.manual_seed(0)
    q = QConfig(
        activation=UniformQuantizer.with_args(bits=6, symmetric=False, rounding="floor"),
        weight=UniformQuantizer.with_args(bits=5),
    )
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=q),
        aquatic.nn.Linear(10, 12, qconfig=q),
        nn.ReLU(),
        aquatic.nn.Linear(12, 5, qconfig=q),
    )
    model = calibrate(model, (32, 10))
    integer_model = aquatic.convert(model)
    codes = integer_model.quantize_input(torch.randn(200, 10) * 2)
    export_and_compare(tmp_path, integer_model, codes)


def reference_requantize(x, multiplier, shift, z_in, z_out, low, high, rounding):
    """Exact rationals: round((x - z_in) * m / 2**n) + z_out, saturated."""
    value = Fraction((x - z_in) * multiplier) / Fraction(2) ** shift
    floor = value.numerator // value.denominator
    if rounding == "floor":
        code = floor
    else:
        rest = value - floor
        code = floor + (rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1))
    return min(max(code + z_out, low), high)


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
def test_requantize_rounds_as_the_reference(tmp_path, rounding):
    # per-channel multipliers with right shifts (ties included), a left shift, a shift
    # beyond 62, and products near 2**62
    generator = torch.Generator().manual_seed(3)
    multiplier = torch.tensor([3, 1, 1, 2**30 + 1, 5, 1])
    shift = torch.tensor([2, 1, -3, 61, 0, 70])
    x = torch.randint(-(2**31), 2**31, (64, 6), generator=generator, dtype=torch.int64)
    x[:8] = torch.arange(-4, 4).unsqueeze(1)  # small values: ties at every shift
    x[8] = 2**31 - 1
    x[9] = -(2**31)
    module = IntegerRequantize(
        multiplier, shift, 5, -3, low=-(2**31), high=2**31 - 1, rounding=rounding, axis=-1
    )
    integer_model = IntegerModel(
        [module], QSpec(1.0, 0, low=-(2**31), high=2**31 - 1), QSpec(1.0, 0)
    )
    codes = x.to(torch.int32)
    _, out = export_and_compare(tmp_path, integer_model, codes)
    for row, values in zip(codes.tolist(), out.tolist()):
        expected = [
            reference_requantize(v, m, n, 5, -3, -(2**31), 2**31 - 1, rounding)
            for v, m, n in zip(row, multiplier.tolist(), shift.tolist())
        ]
        assert values == expected


def test_refusals(tmp_path):
    torch.manual_seed(0)
    model = calibrate(
        nn.Sequential(
            aquatic.nn.ActivationQuantizer(qconfig=aquatic.qconfig.int8),
            aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int8),
        ),
        (8, 4),
    )
    integer_model = aquatic.convert(model)
    codes = integer_model.quantize_input(torch.randn(2, 4))
    with pytest.raises(TypeError, match="IntegerModel"):
        aonnx.export_integer(model, tmp_path / "m.onnx", codes)
    with pytest.raises(TypeError, match="integer codes"):
        aonnx.export_integer(integer_model, tmp_path / "m.onnx", torch.randn(2, 4))
    with pytest.raises(ValueError, match="opset"):
        aonnx.export_integer(integer_model, tmp_path / "m.onnx", codes, opset=11)
    spiking = nn.Sequential(
        aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int8),
        aquatic.nn.IAF(),
    )
    calibrate(spiking, (2, 5, 4))
    spiking_integer = aquatic.convert(spiking, input_scale=1.0, input_range=(0, 1))
    spike_codes = torch.randint(0, 2, (2, 5, 4), dtype=torch.int32)
    with pytest.raises(TypeError, match="state from step to step.*nir"):
        aonnx.export_integer(spiking_integer, tmp_path / "s.onnx", spike_codes)


def test_conv_beyond_float32_exact_integers_is_refused(tmp_path):
    torch.manual_seed(0)
    q = qconfig(bits=16, weight_bits=8)
    model = calibrate(
        nn.Sequential(
            aquatic.nn.ActivationQuantizer(qconfig=q),
            aquatic.nn.Conv2d(4, 2, 3, qconfig=q),
        ),
        (4, 4, 5, 5),
    )
    integer_model = aquatic.convert(model)
    codes = integer_model.quantize_input(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"layer '1'.*2\*\*24"):
        aonnx.export_integer(integer_model, tmp_path / "m.onnx", codes)


def test_reshapes_max_pooling_and_sums(tmp_path):
    # Unflatten, MaxPool1d on codes, a sum over a dimension (int64) feeding a Linear
    torch.manual_seed(0)
    q = QConfig(
        activation=UniformQuantizer.with_args(bits=8, signed=True, symmetric=True),
        weight=UniformQuantizer.with_args(bits=8),
    )
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=q),
        aquatic.nn.Linear(6, 12, qconfig=q),
        nn.ReLU(),
        nn.Unflatten(1, (3, 4)),
        nn.MaxPool1d(2),
        aquatic.nn.Sum(dim=1),
        nn.Flatten(),
        aquatic.nn.Linear(2, 3, qconfig=q),
    )
    model = calibrate(model, (16, 6))
    integer_model = aquatic.convert(model)
    kinds = [type(layer).__name__ for layer in integer_model.layers]
    assert {"IntegerReshape", "IntegerMaxPool", "IntegerSum"} <= set(kinds)
    codes = integer_model.quantize_input(torch.randn(40, 6) * 2)
    proto, expected = export_and_compare(tmp_path, integer_model, codes)
    ops = Counter(node.op_type for node in proto.graph.node)
    # the summed codes span more than 8 bits: the second Linear multiplies in int64
    assert ops["MatMulInteger"] == 1 and ops["MatMul"] == 1 and ops["ReduceSum"] == 1
    assert expected.unique().numel() > 20
