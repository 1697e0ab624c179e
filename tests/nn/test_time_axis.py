"""Conv, pooling and normalisation twins: torch parity, and a time axis after the batch."""

import pytest
import torch
from torch import nn

import aquatic
from aquatic import nn as ann
from aquatic.quantizers import UniformQuantizer

CASES = [
    (ann.AvgPool1d, nn.AvgPool1d, (3, 2, 1), (2, 3, 9)),
    (ann.AvgPool2d, nn.AvgPool2d, (3, 2, 1), (2, 3, 9, 8)),
    (ann.MaxPool1d, nn.MaxPool1d, (2,), (2, 3, 8)),
    (ann.MaxPool2d, nn.MaxPool2d, (3, 2, 1), (2, 3, 9, 8)),
    (ann.AdaptiveAvgPool1d, nn.AdaptiveAvgPool1d, (3,), (2, 3, 8)),
    (ann.AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, ((2, 3),), (2, 3, 7, 8)),
    (ann.BatchNorm1d, nn.BatchNorm1d, (3,), (2, 3, 8)),
    (ann.BatchNorm2d, nn.BatchNorm2d, (3,), (2, 3, 8, 8)),
    (ann.Conv1d, nn.Conv1d, (3, 4, 3), (2, 3, 8)),
    (ann.Conv2d, nn.Conv2d, (3, 4, 3), (2, 3, 8, 8)),
    (ann.Conv3d, nn.Conv3d, (3, 4, 2), (2, 3, 4, 4, 4)),
    (ann.ConvTranspose2d, nn.ConvTranspose2d, (3, 4, 3), (2, 3, 5, 5)),
]


@pytest.mark.parametrize(
    "ours, theirs, args, shape", CASES, ids=lambda c: getattr(c, "__name__", "")
)
def test_torch_shape_identical_and_time_axis_per_step(ours, theirs, args, shape):
    torch.manual_seed(0)
    layer, twin = ours(*args), theirs(*args)
    twin.load_state_dict(layer.state_dict())  # same keys as torch with qconfig=None
    layer.load_state_dict(twin.state_dict())
    x = torch.randn(*shape)
    assert torch.equal(layer(x), twin(x))
    if not isinstance(twin, nn.modules.batchnorm._BatchNorm):
        assert torch.equal(layer(x[0]), twin(x[0]))  # unbatched, as torch takes it
    seq = torch.randn(shape[0], 4, *shape[1:])
    expected = twin(seq.flatten(0, 1)).unflatten(0, (shape[0], 4))
    assert torch.equal(layer(seq), expected)
    with pytest.raises((RuntimeError, ValueError)):
        layer(torch.randn(1, *seq.shape))  # two extra axes are not a time axis


def test_batch_norm_statistics_over_batch_and_time():
    torch.manual_seed(0)
    bn, twin = ann.BatchNorm2d(3), nn.BatchNorm2d(3)
    seq = torch.randn(2, 5, 3, 4, 4) * 3 + 1
    bn(seq), twin(seq.flatten(0, 1))
    assert torch.equal(bn.running_mean, twin.running_mean)
    assert torch.equal(bn.running_var, twin.running_var)


def test_max_pool_indices_per_step():
    pool = ann.MaxPool2d(2, return_indices=True)
    seq = torch.randn(2, 3, 1, 4, 4)
    values, indices = pool(seq)
    ref_values, ref_indices = nn.MaxPool2d(2, return_indices=True)(seq.flatten(0, 1))
    assert values.shape == (2, 3, 1, 2, 2) and indices.shape == (2, 3, 1, 2, 2)
    assert torch.equal(indices.flatten(0, 1), ref_indices)
    assert torch.equal(values.flatten(0, 1), ref_values)


def test_sum_pool_is_the_window_sum():
    x = torch.arange(32.0).reshape(1, 2, 4, 4)
    out = ann.SumPool2d(2)(x)
    assert torch.equal(out, nn.AvgPool2d(2, divisor_override=1)(x))
    assert out[0, 0, 0, 0] == 0 + 1 + 4 + 5
    spikes = torch.randint(0, 3, (2, 6, 3, 8, 8)).float()
    torch_sum = nn.LPPool2d(1, 2)(spikes.flatten(0, 1)).unflatten(0, (2, 6))
    assert torch.equal(ann.SumPool2d(2)(spikes), torch_sum)  # integers: exact in both
    line = torch.tensor([[[1.0, 2.0, 3.0, 5.0, 7.0]]])
    assert ann.SumPool1d(2)(line).tolist() == [[[3.0, 8.0]]]
    assert ann.SumPool1d(2, ceil_mode=True)(line).tolist() == [[[3.0, 8.0, 7.0]]]
    assert ann.SumPool1d(3, 1)(line.unsqueeze(1)).shape == (1, 1, 1, 3)  # (N, T, C, L)
    assert ann.SumPool2d(2, stride=1)(x).shape == (1, 2, 3, 3)


def test_from_float_to_float_and_quantized_output():
    q = aquatic.QConfig(activation=UniformQuantizer.with_args(bits=4, scale=0.5))
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.5)
    twin = ann.BatchNorm2d.from_float(bn, q)
    assert twin.running_mean is bn.running_mean and twin.weight is bn.weight
    assert type(twin.to_float()) is nn.BatchNorm2d
    assert twin.to_float(baked=False).running_var is bn.running_var
    assert not twin.to_float().weight is bn.weight
    twin.eval()
    x = torch.randn(2, 3, 3, 2, 2)
    out = twin(x)
    assert torch.equal(
        out,
        torch.clamp(torch.round(bn.eval()(x.flatten(0, 1)) * 2), -8, 7).unflatten(0, (2, 3)) / 2,
    )
    # A torch checkpoint loads into the quantized layer.
    twin.load_state_dict(nn.BatchNorm2d(3).state_dict())
    pool = ann.AvgPool2d(2, qconfig=q)
    assert torch.equal(pool(torch.full((1, 1, 2, 2), 0.6)), torch.full((1, 1, 1, 1), 0.5))
    lp = nn.LPPool2d(1, 2)
    assert type(ann.SumPool2d.from_float(lp).to_float()) is nn.LPPool2d
    with pytest.raises(ValueError, match="norm_type=1"):
        ann.SumPool2d.from_float(nn.LPPool2d(2, 2))
    with pytest.raises(TypeError, match="expects a torch.nn.AvgPool2d"):
        ann.AvgPool2d.from_float(nn.MaxPool2d(2))
    with pytest.raises(TypeError, match="qconfig must be an aquatic.QConfig"):
        ann.MaxPool2d(2, qconfig="int8")


def test_conv_quantized_time_axis_and_transposed_output_size():
    q = aquatic.qconfig.int8
    conv = ann.Conv2d(2, 3, 3, qconfig=q).eval()
    seq = torch.randn(2, 4, 2, 6, 6)
    conv.train()(seq)
    conv.eval()
    assert torch.equal(conv(seq), conv(seq.flatten(0, 1)).unflatten(0, (2, 4)))
    up = ann.ConvTranspose2d(2, 2, 3, stride=2)
    out = up(torch.randn(2, 4, 2, 3, 3), output_size=[8, 8])
    assert out.shape == (2, 4, 2, 8, 8)


def test_quantized_pooling_backward_is_straight_through_inside_the_range():
    q = aquatic.QConfig(activation=UniformQuantizer.with_args(bits=4, scale=0.5))
    x = torch.tensor([[[[0.2, 0.4], [0.6, 9.0]], [[0.1, 0.1], [0.1, 0.1]]]], requires_grad=True)
    ann.AvgPool2d(2, qconfig=q)(x.unsqueeze(1)).sum().backward()  # (N, T=1, C, H, W)
    # channel 0 averages to 2.55 (inside the 4-bit range up to 3.5), channel 1 to 0.1
    assert torch.equal(x.grad, torch.full_like(x, 0.25))
    x.grad = None
    ann.SumPool2d(2, qconfig=q)(x).sum().backward()  # channel 0 sums to 10.2 > 3.5: clipped
    assert x.grad[0, 0].abs().sum() == 0 and torch.equal(x.grad[0, 1], torch.ones(2, 2))


def test_onnx_export_of_pooling_and_normalisation(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from aquatic.interop import onnx as aonnx

    q = aquatic.qconfig.int8
    model = nn.Sequential(
        ann.Conv2d(1, 2, 3, qconfig=q),
        ann.BatchNorm2d(2),
        ann.AvgPool2d(2, qconfig=q),
        ann.MaxPool2d(2),
        nn.Flatten(),
        ann.Linear(8, 2, qconfig=q),
    )
    x = torch.randn(3, 1, 10, 10)
    model(x)
    model.eval()
    path = tmp_path / "m.onnx"
    aonnx.export(model, x, str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.equal(torch.from_numpy(out), model(x).detach())


def test_dequantize_gives_the_torch_twins():
    q = aquatic.qconfig.int8
    model = nn.Sequential(ann.AvgPool2d(2, qconfig=q), ann.SumPool2d(2), ann.BatchNorm2d(1))
    model(torch.rand(1, 1, 8, 8))
    plain = aquatic.dequantize(model)
    assert [type(m) for m in plain] == [nn.AvgPool2d, nn.LPPool2d, nn.BatchNorm2d]
    assert plain[1].norm_type == 1
    assert torch.equal(plain[2].running_mean, model[2].running_mean)
