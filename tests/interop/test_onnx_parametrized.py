"""ONNX export of parameters quantized with aquatic.quantize_parameter (Q/DQ of the
parametrized weight), also after a training step through them."""

import numpy as np
import pytest
import torch
from torch import nn

import aquatic
from aquatic.interop import onnx as aonnx
from aquatic.quantizers import UniformQuantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class Tagger(nn.Module):
    """Embedding -> LayerNorm -> LSTM -> Linear, none of them with an aquatic twin here."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(20, 8)
        self.norm = nn.LayerNorm(8)
        self.lstm = nn.LSTM(8, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens):
        return self.head(self.lstm(self.norm(self.embedding(tokens)))[0])


QUANTIZED = ["embedding.weight", "norm.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0"]


def quantized_tagger():
    torch.manual_seed(0)
    model = Tagger()
    for name in QUANTIZED:
        owner, _, parameter = name.rpartition(".")
        quantizer = UniformQuantizer(bits=4, ch_axis=0 if "lstm" in name else None)
        aquatic.quantize_parameter(model.get_submodule(owner), parameter, quantizer)
    return model


def run(path, tokens):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": tokens.numpy()})[0])


@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "after-a-training-step"])
def test_parametrized_weights_export_as_qdq(tmp_path, trained):
    model = quantized_tagger()
    tokens = torch.randint(0, 20, (4, 7))
    if trained:  # LSTM then caches weights that are not graph leaves
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(tokens).sum().backward()
        optimizer.step()
    model.eval()  # the export runs a copy in eval mode: the observed ranges stay
    before = {k: v.clone() for k, v in model.state_dict().items()}
    proto = aonnx.export(model, tokens, tmp_path / "m.onnx")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("DequantizeLinear") >= len(QUANTIZED) and "LSTM" in ops
    tokens = torch.randint(0, 20, (5, 7))
    with torch.no_grad():
        expected = model(tokens)
        out = run(tmp_path / "m.onnx", tokens)
    # float LSTM and LayerNorm kernels differ in their last bits, not in the weights
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    # the graph runs the 4-bit weights, not the float ones
    with torch.no_grad(), aquatic.disable_fake_quant(model):
        floating = model(tokens)
    assert float((floating - expected).abs().max()) > 1e-2
