"""ONNX export of the quantized recurrent layers: every internal signal keeps its Q/DQ."""

import warnings

import pytest
import torch
from torch import nn

import aquatic
from aquatic.interop import onnx as aonnx
from aquatic.quantizers import UniformQuantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class Last(nn.Module):
    """The output sequence of a recurrent layer (ONNX export takes one tensor out)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)[0]


@pytest.mark.parametrize("cls", [aquatic.nn.RNN, aquatic.nn.LSTM, aquatic.nn.GRU])
def test_quantized_recurrent_layer_exports_and_runs_like_eval(cls, tmp_path):
    torch.manual_seed(0)
    qconfig = aquatic.qconfig.int8._replace(state=UniformQuantizer.with_args(bits=8))
    model = Last(cls(4, 5, batch_first=True, qconfig=qconfig))
    model(torch.randn(8, 6, 4))  # observe ranges
    model.eval()
    path = tmp_path / "rnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's note on the unrolled loop
        aonnx.export(model, torch.randn(2, 6, 4), path)
    graph = onnx.load(str(path)).graph
    # at least two signals (gates, hidden) per step, each with its Q/DQ pair
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) >= 6 * 2
    session = ort.InferenceSession(str(path))
    x = torch.randn(3, 6, 4)  # another batch size
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(out), model(x))
