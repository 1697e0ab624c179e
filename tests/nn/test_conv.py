import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic import QConfig
from aquatic.nn.conv import _QuantConvNd
from aquatic.quantizers import AccumulatorBiasQuantizer, UniformQuantizer

# (aquatic class, torch twin, input shape, constructor kwargs)
CASES = [
    (aquatic.nn.Conv1d, nn.Conv1d, (2, 4, 9), dict(stride=2, padding=1)),
    (aquatic.nn.Conv2d, nn.Conv2d, (2, 4, 7, 6), dict(groups=2, dilation=2, padding="same")),
    (aquatic.nn.Conv2d, nn.Conv2d, (2, 4, 7, 6), dict(padding=1, padding_mode="reflect")),
    (aquatic.nn.Conv3d, nn.Conv3d, (1, 4, 5, 5, 4), dict(padding=(1, 0, 1), bias=False)),
    (aquatic.nn.ConvTranspose1d, nn.ConvTranspose1d, (2, 4, 6), dict(stride=2, output_padding=1)),
    (aquatic.nn.ConvTranspose2d, nn.ConvTranspose2d, (2, 4, 5, 4), dict(groups=2, stride=2)),
    (aquatic.nn.ConvTranspose3d, nn.ConvTranspose3d, (1, 4, 3, 3, 2), dict(padding=1)),
]
IDS = [f"{case[0].__name__}-{i}" for i, case in enumerate(CASES)]


def make_pair(cls, twin, kwargs, qconfig):
    torch.manual_seed(3)
    ref = twin(4, 6, 3, **kwargs)
    layer = cls(4, 6, 3, **kwargs, qconfig=qconfig)
    layer.load_state_dict(ref.state_dict())
    return ref, layer


@pytest.mark.parametrize("cls,twin,shape,kwargs", CASES, ids=IDS)
@pytest.mark.parametrize("qconfig", [None, QConfig()])
def test_no_quantizers_is_torch_bit_for_bit(cls, twin, shape, kwargs, qconfig):
    ref, layer = make_pair(cls, twin, kwargs, qconfig)
    assert isinstance(layer, twin) and list(layer.state_dict()) == list(ref.state_dict())
    x1 = torch.randn(shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ref(x1), layer(x2)
    assert torch.equal(y1, y2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert torch.equal(x1.grad, x2.grad) and torch.equal(ref.weight.grad, layer.weight.grad)


@pytest.mark.parametrize("cls,twin,shape,kwargs", CASES, ids=IDS)
def test_quantized_forward_is_twin_with_quantized_weight(cls, twin, shape, kwargs):
    transposed = issubclass(twin, nn.modules.conv._ConvTransposeNd)
    qconfig = QConfig(
        weight=UniformQuantizer.with_args(bits=4, ch_axis=1 if transposed else 0),
        activation=UniformQuantizer.with_args(bits=3, scale=0.25, zero_point=0),
    )
    ref, layer = make_pair(cls, twin, kwargs, qconfig)
    x = torch.randn(shape)
    y = layer(x)
    # Reference: torch's per-channel fake quantization of the weight, scale max|w| / 7
    # per output channel, then the twin's forward and a fixed-scale output grid.
    axis = 1 if layer.transposed else 0
    dims = [d for d in range(ref.weight.dim()) if d != axis]
    scale = (ref.weight.detach().abs().amax(dim=dims) / 7).float()
    zp = torch.zeros_like(scale, dtype=torch.int32)
    with torch.no_grad():
        ref.weight.copy_(torch.fake_quantize_per_channel_affine(ref.weight, scale, zp, axis, -8, 7))
    expected = torch.fake_quantize_per_tensor_affine(ref(x), 0.25, 0, -4, 3)
    assert torch.allclose(y, expected, rtol=0, atol=1e-6)
    assert "quantized=(weight, activation)" in layer.extra_repr()


@pytest.mark.parametrize("cls,twin,shape,kwargs", CASES, ids=IDS)
def test_from_float_to_float(cls, twin, shape, kwargs):
    torch.manual_seed(0)
    ref = twin(4, 6, 3, **kwargs)
    layer = cls.from_float(ref, aquatic.qconfig.int8)
    assert type(layer) is cls and layer.weight is ref.weight
    layer(torch.randn(shape))
    plain = layer.to_float()
    assert type(plain) is twin
    assert torch.equal(plain.weight, layer.quantize_params()["weight"])
    assert plain.extra_repr() == ref.extra_repr()


def test_one_shared_implementation():
    classes = [case[0] for case in CASES]
    for cls in classes:
        assert issubclass(cls, _QuantConvNd)
        assert "forward" not in cls.__dict__ and "__init__" not in cls.__dict__


def test_transposed_output_size_and_errors():
    layer = aquatic.nn.ConvTranspose2d(2, 3, 3, stride=2, qconfig=aquatic.qconfig.int8)
    assert layer(torch.randn(1, 2, 4, 4), output_size=[10, 10]).shape == (1, 3, 10, 10)
    conv = aquatic.nn.Conv2d(2, 3, 3, qconfig=aquatic.qconfig.int8)
    with pytest.raises(TypeError, match="output_size"):
        conv(torch.randn(1, 2, 5, 5), output_size=[3, 3])
    with pytest.raises(TypeError):
        aquatic.nn.Conv2d(2, 3, 3, 1, 0, 1, 1, True, "zeros", None, None, aquatic.qconfig.int8)


def test_transposed_bias_follows_output_channel_axis():
    per_out = QConfig(
        weight=UniformQuantizer.with_args(ch_axis=1),
        bias=AccumulatorBiasQuantizer.with_args(input_scale=1.0),
    )
    layer = aquatic.nn.ConvTranspose1d(2, 3, 3, qconfig=per_out)
    layer(torch.randn(1, 2, 5))
    weight_scale = layer.quantizers["weight"].qparams()["scale"]
    assert torch.equal(layer.quantizers["bias"].qparams()["scale"], weight_scale)
    wrong_axis = per_out._replace(weight=UniformQuantizer.with_args(ch_axis=0))
    with pytest.raises(ValueError, match="ch_axis=1"):
        aquatic.nn.ConvTranspose1d(2, 3, 3, qconfig=wrong_axis)(torch.randn(1, 2, 5))


def test_conv_bias_matches_integer_accumulator():
    """Integer check: conv of codes plus int32 bias codes, times s_x s_w, is the output."""
    qconfig = QConfig(
        weight=UniformQuantizer.with_args(bits=8),
        bias=AccumulatorBiasQuantizer.with_args(input_scale=0.125),
    )
    layer = aquatic.nn.Conv1d(2, 3, 3, qconfig=qconfig)
    x_codes = torch.randint(-8, 8, (1, 2, 6))
    y = layer(x_codes.float() * 0.125)
    w_codes = layer.quantizers["weight"].to_int(layer.weight.detach()).long()
    b_codes = layer.quantizers["bias"].to_int(layer.bias.detach()).long()
    accumulator = F.conv1d(x_codes.double(), w_codes.double()) + b_codes.double()[:, None]
    unit = layer.quantizers["bias"].qparams()["scale"].double()
    assert torch.allclose(y.double(), accumulator * unit, rtol=1e-6, atol=1e-7)
