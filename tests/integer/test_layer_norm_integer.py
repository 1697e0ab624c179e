"""The integer layer norm against the quantization-aware aquatic.nn.LayerNorm."""

import io
import math

import pytest
import torch
from torch import nn

import aquatic
from aquatic.functional.integer_math import integer_sqrt, rounding_divide
from aquatic.integer import IntegerLayerNorm
from aquatic.integer.base import QSpec
from aquatic.integer.build_norm import build_layer_norm


def test_integer_sqrt_is_the_floor_of_the_root():
    generator = torch.Generator().manual_seed(0)
    n = torch.cat([torch.arange(0, 2000), torch.randint(0, 2**62, (2000,), generator=generator)])
    root = integer_sqrt(n)
    assert bool((root * root <= n).all()) and bool(((root + 1) ** 2 > n).all())
    assert root.tolist()[:5] == [math.isqrt(v) for v in range(5)]
    with pytest.raises(ValueError, match=">= 0"):
        integer_sqrt(torch.tensor([-1]))


def test_rounding_divide_rounds_to_nearest():
    a = torch.arange(-50, 51)
    b = torch.tensor(7)
    expected = torch.tensor(
        [math.floor(abs(v) / 7 + 0.5) * (1 if v >= 0 else -1) for v in a.tolist()]
    )
    assert torch.equal(rounding_divide(a, b), expected)


def _codes(norm, x):
    grid = norm.quantizers["activation"].grid()
    return torch.round(norm(x) / grid.scale).long() + grid.zero_point.long()


@pytest.mark.parametrize(
    "features, scale, zero_point, affine",
    [(16, 0.05, 100, True), (64, 0.002, 0, True), (7, 0.5, 128, False)],
)
def test_codes_match_the_quantization_aware_layer(features, scale, zero_point, affine):
    torch.manual_seed(features)
    norm = aquatic.nn.LayerNorm(features, elementwise_affine=affine, qconfig=aquatic.qconfig.int8)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    q = torch.randint(0, 256, (1500, features))
    q[:5] = 42  # constant rows: variance 0, output beta
    x = ((q - zero_point) * scale).float()
    norm(x)  # observe
    norm.eval()
    with torch.no_grad():
        expected = _codes(norm, x)
    spec = QSpec(torch.tensor(scale), torch.tensor(zero_point), None, 0, 255)
    module, out = build_layer_norm("norm", norm, spec)
    got = module(q).long()
    # Stated bound: one step, and only next to a rounding boundary of the float model.
    assert int((got - expected).abs().max()) <= 1
    assert float((got == expected).double().mean()) >= 0.999
    assert float(out.scale) == float(norm.quantizers["activation"].grid().scale)


def test_refusals_name_the_layer_and_the_fix():
    spec = QSpec(torch.tensor(0.1), torch.tensor(0), None, -128, 127)
    with pytest.raises(TypeError, match="float torch.nn.LayerNorm"):
        build_layer_norm("n", nn.LayerNorm(4), spec)
    with pytest.raises(ValueError, match="no activation quantizer"):
        build_layer_norm("n", aquatic.nn.LayerNorm(4, qconfig=aquatic.qconfig.int4_weight), spec)
    with pytest.raises(ValueError, match="last dimension only"):
        build_layer_norm("n", aquatic.nn.LayerNorm([2, 4], qconfig=aquatic.qconfig.int8), spec)
    unbounded = QSpec(torch.tensor(0.1), torch.tensor(0))
    norm = aquatic.nn.LayerNorm(4, qconfig=aquatic.qconfig.int8)
    norm(torch.randn(3, 4))
    with pytest.raises(ValueError, match="one scale and a range"):
        build_layer_norm("n", norm, unbounded)
    with pytest.raises(ValueError, match="normalizes 4 features, got 3"):
        build_layer_norm("n", norm, spec)[0](torch.zeros(2, 3, dtype=torch.long))


def test_twin_without_qconfig_is_torch_and_converts_back():
    torch.manual_seed(1)
    ref = nn.LayerNorm(6)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    twin = aquatic.nn.LayerNorm.from_float(ref)
    x = torch.randn(4, 6)
    assert torch.equal(twin(x), ref(x))
    assert list(twin.state_dict()) == list(ref.state_dict())
    plain = aquatic.nn.LayerNorm.from_float(nn.LayerNorm(6, elementwise_affine=False))
    assert torch.equal(plain(x), nn.functional.layer_norm(x, (6,)))
    assert type(plain.to_float()) is nn.LayerNorm
    quantized = aquatic.nn.LayerNorm.from_float(ref, aquatic.qconfig.int8)
    back = quantized.to_float()
    assert torch.equal(back.weight, quantized.quantize_params()["weight"])
    with pytest.raises(ValueError, match="no accumulator"):
        aquatic.nn.LayerNorm(
            4, qconfig=aquatic.QConfig(bias=aquatic.quantizers.AccumulatorBiasQuantizer)
        )


def test_sequential_converts_with_a_layer_norm():
    torch.manual_seed(2)
    qconfig = aquatic.qconfig.int8
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=qconfig),
        aquatic.nn.Linear(8, 16, qconfig=qconfig),
        aquatic.nn.LayerNorm(16, qconfig=qconfig),
        aquatic.nn.Linear(16, 4, qconfig=qconfig),
    )
    x = torch.randn(256, 8)
    model(x)
    model.eval()
    integer = aquatic.convert(model)
    assert any(isinstance(m, IntegerLayerNorm) for m in integer.modules())
    with torch.no_grad():
        expected = model(x)
    got = integer.dequantize_output(integer(integer.quantize_input(x)))
    step = float(model[3].quantizers["activation"].grid().scale)
    assert float((got - expected).abs().max()) <= 2 * step + 1e-6
    assert float(((got - expected).abs() < 1e-6).double().mean()) >= 0.95
    buffer = io.BytesIO()
    aquatic.integer.save(integer, buffer)
    buffer.seek(0)
    again = aquatic.integer.load(buffer)
    codes = integer.quantize_input(x)
    assert torch.equal(again(codes), integer(codes))
