"""ONNX export (Q/DQ) of quantized attention, run by onnxruntime."""

import pytest
import torch
from torch import nn

import aquatic
from aquatic.interop.onnx import export

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        qconfig = aquatic.qconfig.int8
        self.mha = aquatic.nn.MultiheadAttention(8, 2, batch_first=True, qconfig=qconfig)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def run(path, x):
    session = ort.InferenceSession(str(path))
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_attention_exports_with_a_qdq_pair_at_every_quantizer(tmp_path):
    torch.manual_seed(0)
    model = SelfAttention()
    x = torch.randn(3, 5, 8)
    model(x)
    model.eval()
    proto = export(model, x, tmp_path / "mha.onnx", opset=14)
    ops = [node.op_type for node in proto.graph.node]
    # in_proj weight, q, k, v, attention weights, out_proj weight and output
    assert ops.count("QuantizeLinear") == 7 and ops.count("Softmax") == 1
    with torch.no_grad():
        assert torch.allclose(run(tmp_path / "mha.onnx", x), model(x), atol=1e-5)


def test_two_layer_encoder_exports_and_runs_at_another_batch_size(tmp_path):
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model = aquatic.quantize(encoder, {nn.Module: aquatic.qconfig.int8, r".*norm\d": None})
    model(torch.randn(4, 5, 8))
    model.eval()
    export(model, torch.randn(3, 5, 8), tmp_path / "encoder.onnx", opset=14)
    x = torch.randn(7, 5, 8)
    with torch.no_grad():
        assert torch.allclose(run(tmp_path / "encoder.onnx", x), model(x), atol=1e-5)


def test_encoder_with_quantized_norms_and_residual_sums_exports(tmp_path):
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=True)
    model = aquatic.quantize(
        nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), aquatic.qconfig.int8
    )
    assert type(model.layers[0].norm1) is aquatic.nn.LayerNorm
    model(torch.randn(4, 5, 8))
    model.eval()
    export(model, torch.randn(3, 5, 8), tmp_path / "encoder.onnx", opset=14)
    x = torch.randn(7, 5, 8)
    with torch.no_grad():
        assert torch.allclose(run(tmp_path / "encoder.onnx", x), model(x), atol=1e-5)
