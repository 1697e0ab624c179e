"""ONNX export (Q/DQ) of quantized embeddings, run by onnxruntime."""

import pytest
import torch
from torch import nn

import aquatic
from aquatic.interop.onnx import export
from aquatic.quantizers import UniformQuantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

PER_ROW = aquatic.qconfig.int8._replace(weight=UniformQuantizer.with_args(ch_axis=0))


@pytest.mark.parametrize(
    "layer",
    [
        lambda: aquatic.nn.Embedding(20, 6, qconfig=PER_ROW),
        lambda: aquatic.nn.EmbeddingBag(20, 6, mode="sum", qconfig=PER_ROW),
        lambda: aquatic.nn.EmbeddingBag(20, 6, mode="max", qconfig=PER_ROW),
    ],
    ids=["embedding", "bag_sum", "bag_max"],
)
def test_embeddings_export_with_a_per_row_table(tmp_path, layer):
    torch.manual_seed(0)
    model = nn.Sequential(layer(), aquatic.nn.Linear(6, 3, qconfig=aquatic.qconfig.int8))
    x = torch.randint(0, 20, (4, 5))
    model(x)
    model.eval()
    proto = export(model, x, tmp_path / "emb.onnx", opset=14)
    dequantize = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert any(a.name == "axis" and a.i == 0 for n in dequantize for a in n.attribute)
    session = ort.InferenceSession(str(tmp_path / "emb.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)
