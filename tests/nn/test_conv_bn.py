import numpy as np

"""Layer and batch norm fused for QAT (ConvBn1d/2d/3d, LinearBn1d): training with batch
statistics, folding, freeze_bn, quantize's fusion, convert and dequantize."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
import aquatic.nn as qnn
from aquatic.fuse import fuse_conv_bn, sequential_bn_pairs
from aquatic.quantizers import UniformQuantizer

POW2_W = UniformQuantizer.with_args(bits=8, power_of_two=True)
POW2_W_CH = UniformQuantizer.with_args(bits=6, power_of_two=True, ch_axis=0)
POW2_ACT = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False, power_of_two=True)
BIAS = UniformQuantizer.with_args(bits=16, scale=2.0**-8)

CASES = [
    (nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), (16, 3, 10)),
    (nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), (16, 3, 7, 7)),
    (nn.Conv2d(4, 4, 3, groups=4, padding=1), nn.BatchNorm2d(4), (16, 4, 6, 6)),
    (nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3), (8, 2, 4, 4, 4)),
    (nn.Linear(6, 5), nn.BatchNorm1d(5), (16, 6)),
]


def _pair(index, seed=0):
    torch.manual_seed(seed)
    layer, bn, shape = CASES[index]
    layer, bn = type(layer)(**_kwargs(layer)), type(bn)(bn.num_features)
    with torch.no_grad():  # a batch norm that is not the identity
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return layer, bn, shape


def _kwargs(layer):
    if isinstance(layer, nn.Linear):
        return dict(in_features=layer.in_features, out_features=layer.out_features)
    return dict(
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        kernel_size=layer.kernel_size,
        padding=layer.padding,
        groups=layer.groups,
        bias=layer.bias is not None,
    )


def reference_fold(layer, bn):
    """W' = W g / sqrt(var + eps), b' = (b - mean) g / sqrt(var + eps) + beta (float64)."""
    factor = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = layer.weight.double() * factor.reshape(-1, *[1] * (layer.weight.dim() - 1))
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(factor)
    return weight, (bias - bn.running_mean.double()) * factor + bn.bias.double()


def run(layer, x, weight, bias):
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_training_equals_layer_then_batch_norm(index):
    layer, bn, shape = _pair(index)
    reference = nn.Sequential(layer, bn)
    fused = aquatic.fuse.fused_pair(copy.deepcopy(layer), copy.deepcopy(bn), None)
    reference.train(), fused.train()
    for step in range(3):
        x = torch.randn(shape)
        assert torch.allclose(fused(x), reference(x), atol=1e-5, rtol=1e-5)
    # The running statistics follow the same batches.
    assert torch.allclose(fused.bn.running_mean, bn.running_mean, atol=1e-6)
    assert torch.allclose(fused.bn.running_var, bn.running_var, atol=1e-6)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_eval_and_frozen_equal_the_folded_layer(index):
    layer, bn, shape = _pair(index)
    fused = aquatic.fuse.fused_pair(layer, bn, None)
    x = torch.randn(shape)
    weight, bias = reference_fold(layer, bn)
    expected = run(layer, x.double(), weight, bias).float()
    with torch.no_grad():
        assert torch.allclose(fused.eval()(x), expected, atol=1e-5)
        fused.train().freeze_bn()
        before = bn.running_mean.clone()
        assert torch.allclose(fused(x), expected, atol=1e-5)
    assert torch.equal(bn.running_mean, before)  # frozen: the statistics stay


def test_quantized_weight_is_the_folded_weight_on_its_grid():
    layer, bn, shape = _pair(1)
    fused = aquatic.fuse.fused_pair(layer, bn, aquatic.QConfig(weight=POW2_W_CH))
    fused.train()(torch.randn(shape))
    weight, _ = fused.quantized_weight_and_bias(torch.randn(shape))
    folded, _ = reference_fold(layer, bn)
    scale = fused.quantizers["weight"].grid().scale.reshape(-1, 1, 1, 1)
    codes = weight / scale
    assert torch.equal(codes, torch.round(codes))
    assert (
        float((weight.detach().double() - folded.detach()).abs().max())
        <= float(scale.max()) / 2 + 1e-6
    )


def test_freeze_bn_after_counts_training_steps():
    layer, bn, shape = _pair(1)
    fused = aquatic.fuse.fused_pair(layer, bn, aquatic.qconfig.int8, freeze_bn_after=2)
    fused.train()
    for _ in range(2):
        fused(torch.randn(shape))
        assert not bool(fused.bn_frozen)
    fused(torch.randn(shape))
    assert bool(fused.bn_frozen) and int(bn.num_batches_tracked) == 2
    assert aquatic.nn.unfreeze_bn(nn.Sequential(fused)) == 1 and not bool(fused.bn_frozen)


def test_bad_arguments():
    with pytest.raises(ValueError, match="freeze_bn_after"):
        qnn.ConvBn2d(1, 2, 3, freeze_bn_after=-1)
    with pytest.raises(TypeError, match="BatchNorm2d"):
        qnn.ConvBn2d.from_modules(nn.Conv2d(1, 2, 3), nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match="num_features"):
        qnn.ConvBn2d.from_modules(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(3))
    with pytest.raises(TypeError, match="supported pairs"):
        aquatic.fuse.fused_pair(nn.Conv2d(1, 2, 3), nn.BatchNorm1d(2), None)
    with pytest.raises(ValueError, match=r"\(N, in_features\)"):
        qnn.LinearBn1d(3, 2)(torch.randn(2, 4, 3))
    with pytest.raises(TypeError, match="nn.Module"):
        aquatic.nn.freeze_bn("model")


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, groups=6),  # depthwise
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 3),
    )


def test_quantize_fuses_pairs_and_puts_the_quantizer_after_the_batch_norm():
    qmodel = aquatic.quantize(_model(), aquatic.qconfig.int8)
    kinds = [type(m).__name__ for m in qmodel]
    assert kinds[:6] == ["ConvBn2d", "Identity", "ReLU", "ConvBn2d", "Identity", "ReLU"]
    qmodel.train()(torch.randn(8, 1, 8, 8))
    out = qmodel[0].eval()(torch.randn(4, 1, 8, 8))  # the fused output: on the act grid
    grid = qmodel[0].quantizers["activation"].grid()
    codes = out / grid.scale + grid.zero_point
    assert torch.allclose(codes, torch.round(codes), atol=1e-3)
    plain = aquatic.quantize(_model(), aquatic.qconfig.int8, fuse_batch_norm=False)
    assert type(plain[1]) is nn.BatchNorm2d
    shared = nn.Conv2d(1, 1, 1)
    assert sequential_bn_pairs(nn.Sequential(shared, nn.BatchNorm2d(1), shared)) == []


def test_fuse_conv_bn_by_name_and_errors():
    model = _model()
    fused = fuse_conv_bn(model, "3", "4", aquatic.qconfig.int8)
    assert model[3] is fused and type(model[4]) is nn.Identity
    with pytest.raises(ValueError, match="fuse_conv_bn"):
        fuse_conv_bn(model, "0", "nope", None)


def _train(qmodel, steps, seed=0):
    torch.manual_seed(seed)
    target = nn.Linear(64, 3)
    opt = torch.optim.Adam(qmodel.parameters(), lr=1e-2)
    losses = []
    qmodel.train()
    for _ in range(steps):
        x = torch.rand(16, 1, 8, 8)
        with torch.no_grad():
            y = target(x.flatten(1))
        loss = F.mse_loss(qmodel(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_qat_trains_then_converts_bit_exact_with_power_of_two_scales():
    qconfig = aquatic.QConfig(weight=POW2_W_CH, activation=POW2_ACT, bias=BIAS)
    head = aquatic.QConfig(activation=UniformQuantizer.with_args(bits=8, power_of_two=True))
    qmodel = aquatic.quantize(_model(), qconfig)
    qmodel.insert(0, qnn.ActivationQuantizer(qconfig=head))
    losses = _train(qmodel, 25)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    aquatic.nn.freeze_bn(qmodel)
    _train(qmodel, 3, seed=1)
    qmodel.eval()
    integer_model = aquatic.convert(qmodel, require_exact=True)
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        fake = qmodel(x)
    out = integer_model.dequantize_output(integer_model(integer_model.quantize_input(x)))
    assert torch.equal(out, fake)


def test_dequantize_gives_the_folded_layer_and_to_int_its_codes():
    qconfig = aquatic.QConfig(weight=POW2_W_CH, bias=BIAS)
    qmodel = aquatic.quantize(_model(), qconfig)
    qmodel.train()(torch.rand(8, 1, 8, 8))
    qmodel.eval()
    plain = aquatic.dequantize(qmodel)
    assert [type(m) for m in plain][:2] == [nn.Conv2d, nn.Identity]
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain[0](x), qmodel[0](x))
    ints = qmodel[0].to_int()
    values = qmodel[0].quantize_params()
    scale = ints["weight"]["scale"].reshape(-1, 1, 1, 1)
    assert torch.equal(ints["weight"]["codes"].float() * scale, values["weight"])
    layer, bn = qmodel[0].to_float(baked=False)
    assert layer.weight is qmodel[0].weight and bn is qmodel[0].bn


def test_state_dict_round_trip_keeps_frozen_and_statistics():
    first = aquatic.quantize(_model(), aquatic.qconfig.int8)
    first.train()(torch.rand(8, 1, 8, 8))
    aquatic.nn.freeze_bn(first)
    second = aquatic.quantize(_model(seed=1), aquatic.qconfig.int8)
    second.load_state_dict(first.state_dict())
    assert bool(second[0].bn_frozen)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(second.eval()(x), first.eval()(x))


def test_fold_fused_computes_what_the_fused_model_computes_in_eval():
    qmodel = aquatic.quantize(_model(), aquatic.qconfig.int8)
    qmodel.train()(torch.rand(8, 1, 8, 8))
    qmodel.eval()
    folded = aquatic.fuse.fold_fused(qmodel)
    assert [type(m).__name__ for m in folded][:4] == ["Conv2d", "Identity", "ReLU", "Conv2d"]
    assert type(qmodel[0]).__name__ == "ConvBn2d"  # a copy by default
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(folded(x), qmodel(x))


def test_onnx_export_of_a_fused_layer_runs_the_folded_layer_in_onnxruntime(tmp_path):
    """The export folds each fused layer once (fold_fused), so onnxruntime computes what
    the fused model computes in eval; folding in forward again would double the fold."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    qmodel = aquatic.quantize(_model(), aquatic.qconfig.int8)
    qmodel.train()(torch.rand(8, 1, 8, 8))
    qmodel.eval()
    x = torch.rand(5, 1, 8, 8)
    path = str(tmp_path / "fused.onnx")
    aquatic.interop.onnx.export(qmodel, x, path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = qmodel(x)
    assert qmodel.training is False and isinstance(qmodel[0], aquatic.nn.FusedBatchNorm)
    assert np.abs(got - expected.numpy()).max() <= 1e-5


def test_fused_layer_compiles_with_fullgraph_and_equals_eager():
    """forward branches on a Python mirror of bn_frozen, not on the tensor, so
    torch.compile(fullgraph=True) traces both phases; outputs equal eager."""
    torch.manual_seed(0)
    eager = aquatic.quantize(_model(), aquatic.qconfig.int8)
    compiled_copy = copy.deepcopy(eager)
    compiled = torch.compile(compiled_copy, fullgraph=True, backend="aot_eager")
    for frozen in (False, True):
        if frozen:
            aquatic.nn.freeze_bn(eager), aquatic.nn.freeze_bn(compiled_copy)
        x = torch.rand(4, 1, 8, 8)
        assert torch.equal(compiled(x), eager(x))
    torch._dynamo.reset()


def test_loaded_bn_frozen_steers_forward():
    """A state_dict saved after freeze_bn makes the loading layer use running statistics."""
    torch.manual_seed(0)
    source = aquatic.quantize(_model(), aquatic.qconfig.int8)
    source.train()(torch.rand(8, 1, 8, 8))
    aquatic.nn.freeze_bn(source)
    target = aquatic.quantize(_model(), aquatic.qconfig.int8)
    target.load_state_dict(source.state_dict())
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(target.train()(x), source.train()(x))


def test_freeze_bn_after_under_compile_names_the_fix():
    layer = qnn.ConvBn2d(1, 2, 3, qconfig=aquatic.qconfig.int8, freeze_bn_after=2)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="freeze_bn_after=None"):
        compiled(torch.rand(4, 1, 6, 6))
    torch._dynamo.reset()
