import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic import QConfig
from aquatic.observers import MinMaxObserver
from aquatic.quantizers import AccumulatorBiasQuantizer, UniformQuantizer

ZP0 = torch.tensor(0, dtype=torch.int32)


def ref_symmetric(w, qmax=127):
    """Reference: per-tensor symmetric int8 with the scale max|w| / 127, via torch's op."""
    scale = (w.detach().abs().max() / qmax).float()
    return torch.fake_quantize_per_tensor_affine(w, scale, ZP0, -qmax - 1, qmax)


def ref_asymmetric(x, lo, hi, qmin=0, qmax=255):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = torch.tensor((hi - lo) / (qmax - qmin), dtype=torch.float32)
    zp = torch.tensor(qmin - round(lo / scale.item()), dtype=torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)


@pytest.mark.parametrize("qconfig", [None, QConfig()])
@pytest.mark.parametrize("bias", [True, False])
def test_no_quantizers_is_torch_bit_for_bit(qconfig, bias):
    ref = nn.Linear(7, 5, bias=bias)
    layer = aquatic.nn.Linear(7, 5, bias=bias, qconfig=qconfig)
    layer.load_state_dict(ref.state_dict())
    assert list(layer.state_dict()) == list(ref.state_dict())
    assert isinstance(layer, nn.Linear) and len(layer.quantizers) == 0
    x1 = torch.randn(3, 4, 7, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ref(x1), layer(x2)
    assert torch.equal(y1, y2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert torch.equal(x1.grad, x2.grad)
    assert torch.equal(ref.weight.grad, layer.weight.grad)
    if bias:
        assert torch.equal(ref.bias.grad, layer.bias.grad)


def test_qconfig_is_keyword_only_and_checked():
    with pytest.raises(TypeError):
        aquatic.nn.Linear(3, 2, True, None, None, aquatic.qconfig.int8)
    with pytest.raises(TypeError, match="aquatic.QConfig"):
        aquatic.nn.Linear(3, 2, qconfig={"weight": UniformQuantizer})


def test_int8_forward_and_gradients_match_reference():
    torch.manual_seed(1)
    layer = aquatic.nn.Linear(6, 4, qconfig=aquatic.qconfig.int8)
    assert set(layer.quantizers) == {"weight", "activation"}
    x = torch.randn(5, 6)
    y = layer(x)
    w = layer.weight.detach().clone().requires_grad_()
    pre = F.linear(x, ref_symmetric(w), layer.bias.detach())
    expected = ref_asymmetric(pre, pre.min().item(), pre.max().item())
    assert torch.allclose(y, expected, rtol=0, atol=1e-6)
    # straight-through: the weight gradient is that of F.linear at the quantized weight
    y.sum().backward()
    pre_grad = torch.ones_like(pre)  # no activation clipped: the range covers this batch
    expected_grad = pre_grad.t() @ x
    assert torch.allclose(layer.weight.grad, expected_grad, atol=1e-6)
    assert torch.equal(layer.bias.grad, pre_grad.sum(0))


def test_quantize_params_extra_repr_and_eval_output():
    layer = aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int4_weight)
    params = layer.quantize_params()
    assert set(params) == {"weight"}
    quantizer = layer.quantizers["weight"]
    codes = quantizer.to_int(layer.weight.detach())
    assert codes.abs().max() <= 7  # 4 bits, narrow range
    assert torch.equal(codes.float() * quantizer.qparams()["scale"][:, None], params["weight"])
    assert "quantized=(weight)" in repr(layer)
    layer.eval()
    x = torch.randn(2, 4)
    assert torch.equal(layer(x), F.linear(x, params["weight"], layer.bias))


def test_from_float_shares_parameters_hooks_and_mode():
    ref = nn.Linear(4, 3, dtype=torch.float64).eval()
    ref.bias.requires_grad_(False)
    calls = []
    ref.register_forward_hook(lambda *args: calls.append(1))
    ref.register_forward_pre_hook(lambda m, args, kwargs: calls.append(0), with_kwargs=True)
    layer = aquatic.nn.Linear.from_float(ref, aquatic.qconfig.int8)
    assert type(layer) is aquatic.nn.Linear
    assert layer.weight is ref.weight and layer.bias is ref.bias
    assert layer.weight.dtype == torch.float64 and not layer.bias.requires_grad
    assert not layer.training
    layer(torch.randn(2, 4, dtype=torch.float64))
    assert calls == [0, 1]
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        aquatic.nn.Linear.from_float(nn.Conv1d(1, 1, 1), None)


def test_to_float_bakes_quantized_values():
    layer = aquatic.nn.Linear(5, 2, qconfig=aquatic.qconfig.int8)
    layer(torch.randn(3, 5))
    plain = layer.to_float()
    assert type(plain) is nn.Linear
    assert torch.equal(plain.weight, ref_symmetric(layer.weight.detach()))
    assert torch.equal(plain.bias, layer.bias)
    with aquatic.disable_fake_quant(layer):
        raw = layer.to_float()
    assert torch.equal(raw.weight, layer.weight)
    assert plain.weight.data_ptr() != layer.weight.data_ptr()


def test_float_checkpoint_loads_into_quantized_layer():
    ref = nn.Linear(4, 3)
    layer = aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int8)
    result = layer.load_state_dict(ref.state_dict())  # strict
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(layer.weight, ref.weight)
    assert not layer.quantizers["weight"].observer.initialized


def test_quantized_state_dict_round_trip_and_shape_mismatch():
    layer = aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int4_weight)
    x = torch.randn(2, 4)
    y = layer(x)
    fresh = aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int4_weight)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(x), y)
    state = layer.state_dict()
    state["quantizers.weight.observer.min_val"] = torch.zeros(5)
    state["quantizers.weight.observer.max_val"] = torch.ones(5)
    with pytest.raises(RuntimeError, match="3 along ch_axis=0"):
        aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int4_weight).load_state_dict(state)
    per_tensor = aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int8)
    with pytest.raises(RuntimeError, match="size mismatch"):
        per_tensor.load_state_dict(state, strict=False)


# -- biases on the accumulator grid -----------------------------------------------------


def bias_qconfig(**bias_kwargs):
    return QConfig(
        weight=UniformQuantizer.with_args(bits=8),
        bias=AccumulatorBiasQuantizer.with_args(**bias_kwargs),
    )


def test_bias_follows_fixed_input_scale_times_weight_scale():
    layer = aquatic.nn.Linear(3, 2, qconfig=bias_qconfig(input_scale=0.1))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.27, -0.5, 0.2], [0.3, 0.1, -0.9]]))
        layer.bias.copy_(torch.tensor([0.0123456, -0.5]))
    layer(torch.randn(4, 3))
    bias_scale = 0.1 * (1.27 / 127)  # input scale times weight scale
    quantizer = layer.quantizers["bias"]
    assert quantizer.qparams()["scale"].item() == pytest.approx(bias_scale, rel=1e-6)
    assert quantizer.quant_min == -(2**31) and quantizer.quant_max == 2**31 - 1
    codes = quantizer.to_int(layer.bias.detach())
    assert codes.dtype == torch.int32
    assert codes.tolist() == [round(0.0123456 / bias_scale), round(-0.5 / bias_scale)]
    baked = layer.quantize_params()["bias"]
    assert torch.allclose(baked, codes.float() * quantizer.qparams()["scale"], rtol=0, atol=0)


def test_bias_follows_a_linked_quantizer_exactly():
    previous = aquatic.nn.ActivationQuantizer(qconfig=aquatic.qconfig.int8)
    layer = aquatic.nn.Linear(3, 2, qconfig=bias_qconfig())
    layer.quantizers["bias"].follow_input(previous.quantizers["activation"])
    x = previous(torch.rand(8, 3) * 4)
    layer(x)
    input_scale = previous.quantizers["activation"].qparams()["scale"]
    weight_scale = layer.quantizers["weight"].qparams()["scale"]
    assert torch.equal(layer.quantizers["bias"].qparams()["scale"], input_scale * weight_scale)
    assert "followed" in repr(layer.quantizers["bias"])
    clone = copy.deepcopy(torch.nn.Sequential(previous, layer))
    assert clone[1].quantizers["bias"]._input_quantizer is clone[0].quantizers["activation"]


def test_bias_observes_the_input_by_default_and_grads_pass():
    layer = aquatic.nn.Linear(3, 2, qconfig=bias_qconfig(input_bits=4))
    x = torch.rand(8, 3) * 3
    y = layer(x)
    observer = layer.quantizers["bias"].input_observer
    assert observer.quant_max == 15 and torch.equal(observer.max_val, x.max())
    expected = observer.calculate_qparams()[0] * layer.quantizers["weight"].qparams()["scale"]
    assert torch.equal(layer.quantizers["bias"].scale, expected)
    y.sum().backward()
    assert torch.equal(layer.bias.grad, torch.full((2,), 8.0))


def test_bias_scale_is_per_channel_with_per_channel_weights():
    qconfig = QConfig(
        weight=UniformQuantizer.with_args(bits=8, ch_axis=0),
        bias=AccumulatorBiasQuantizer.with_args(input_scale=0.5),
    )
    layer = aquatic.nn.Linear(3, 4, qconfig=qconfig)
    layer(torch.randn(2, 3))
    weight_scale = layer.quantizers["weight"].qparams()["scale"]
    assert torch.equal(layer.quantizers["bias"].qparams()["scale"], 0.5 * weight_scale)
    bias = layer.quantize_params()["bias"]
    codes = bias / (0.5 * weight_scale)
    assert torch.allclose(codes, torch.round(codes), atol=1e-3)


def test_bias_quantizer_errors():
    with pytest.raises(ValueError, match="QConfig.weight is None"):
        aquatic.nn.Linear(3, 2, qconfig=QConfig(bias=AccumulatorBiasQuantizer))
    with pytest.raises(RuntimeError, match="run one first"):
        AccumulatorBiasQuantizer()(torch.ones(2))
    with pytest.raises(ValueError, match="bits"):
        AccumulatorBiasQuantizer(bits=40)
    with pytest.raises(ValueError, match="input_scale"):
        AccumulatorBiasQuantizer(input_scale=-1.0)
    with pytest.raises(ValueError, match="bits=20"):
        AccumulatorBiasQuantizer(input_bits=20)
    with pytest.raises(TypeError, match="qparams"):
        AccumulatorBiasQuantizer().follow_input(nn.ReLU())


def test_independent_bias_quantizer():
    qconfig = QConfig(bias=UniformQuantizer.with_args(bits=2, scale=0.5))
    layer = aquatic.nn.Linear(2, 2, qconfig=qconfig)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.3, -2.0]))
    assert torch.equal(layer.quantize_params()["bias"], torch.tensor([0.5, -1.0]))
    x = torch.randn(3, 2)
    assert torch.equal(layer(x), F.linear(x, layer.weight, torch.tensor([0.5, -1.0])))


def test_observer_factory_reaches_layer():
    qconfig = QConfig(weight=UniformQuantizer.with_args(observer=MinMaxObserver))
    layer = aquatic.nn.Linear(2, 2, qconfig=qconfig)
    layer(torch.randn(1, 2))
    assert torch.equal(layer.quantizers["weight"].observer.max_val, layer.weight.detach().max())
