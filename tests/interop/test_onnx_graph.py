"""ONNX export of graph models (residual adds, concatenations, products, reshapes):
the integer export against the integer graph in onnxruntime, element for element, and
the Q/DQ export against the quantization-aware model."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import aquatic
from aquatic.integer import IntegerGraph
from aquatic.integer.average import IntegerAverage
from aquatic.integer.base import QSpec
from aquatic.integer.clamp import IntegerClamp
from aquatic.integer.graph import Ref, Step
from aquatic.integer.graph_ops import IntegerCombine
from aquatic.interop.onnx import export, export_integer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "graph"))
from graph_models import INT8, MODELS, POW2, trained  # noqa: E402
from test_graph_ops import HandPlaced, Ops, _quantized  # noqa: E402

LEVELS = {
    "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_CACHE = {}


def run(path, feeds, level="off"):
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outs = session.run(None, {name: x.numpy() for name, x in zip(names, feeds)})
    return [torch.from_numpy(o) for o in outs]


def model_case(name, qname):
    if (name, qname) not in _CACHE:
        qmodel, x = trained(MODELS[name](), {"pow2": POW2, "int8": INT8}[qname], steps=1)
        _CACHE[name, qname] = qmodel, x, aquatic.convert(qmodel, example_input=x)
    return _CACHE[name, qname]


CASES = [(m, q) for m in MODELS for q in ("pow2", "int8")]


@pytest.mark.parametrize("name,qname", CASES)
def test_integer_graph_runs_exactly_in_onnxruntime(tmp_path, name, qname):
    _, x, integer = model_case(name, qname)
    codes = integer.quantize_input(x)
    # exported with 4 examples, run with 48: the batch axis varies
    proto = export_integer(integer, tmp_path / "int.onnx", codes[:4])
    assert proto.opset_import[0].version == 13  # chosen: the lowest that holds every op
    ops = {node.op_type for node in proto.graph.node}
    assert "Concat" not in ops and "QuantizeLinear" not in ops
    expected = integer(codes)
    for level in LEVELS:
        (out,) = run(tmp_path / "int.onnx", [codes], level)
        assert out.dtype == expected.dtype and torch.equal(out, expected), level


@pytest.mark.parametrize("name,qname", CASES)
def test_qdq_export_of_graph_models(tmp_path, name, qname):
    qmodel, x, integer = model_case(name, qname)
    export(qmodel, x[:2], tmp_path / "qdq.onnx")
    (out,) = run(tmp_path / "qdq.onnx", [x])
    with torch.no_grad():
        expected = qmodel(x)
    if integer.exact:  # power-of-two scales: every float operation exact
        assert qname == "pow2"
        assert torch.equal(out, expected)
    else:  # the bound the module documentation states for optimizations off
        step = float(integer.output_specs.scale)
        assert float((out - expected).abs().max()) <= 8 * step + 1e-6
        assert (out.argmax(1) == expected.argmax(1)).float().mean() >= 0.99


def test_reshapes_indexing_products_and_concatenation(tmp_path):
    qmodel, x = _quantized(Ops())
    integer = aquatic.convert(qmodel, example_input=x)
    export_integer(integer, tmp_path / "ops.onnx", integer.quantize_input(x))
    x2 = torch.randn(7, 2, 8, 8)
    codes = integer.quantize_input(x2)
    for level in LEVELS:
        (out,) = run(tmp_path / "ops.onnx", [codes], level)
        assert torch.equal(out, integer(codes))
    with torch.no_grad():  # and the codes mean what the quantization-aware model says
        assert torch.equal(integer.dequantize_output(out), qmodel(x2))


def test_two_inputs_and_two_outputs(tmp_path):
    torch.manual_seed(1)
    model = HandPlaced()
    x, y = torch.randn(8, 5), torch.randint(-8, 8, (8, 5)) / 8
    model(x, y)
    model.eval()
    integer = aquatic.convert(model, example_input=(x, y), input_scale=1 / 8)
    codes = integer.quantize_input(x, y)
    proto = export_integer(integer, tmp_path / "two.onnx", codes)
    assert [i.name for i in proto.graph.input] == ["input", "input_1"]
    assert [o.name for o in proto.graph.output] == ["output", "output_1"]
    outs = run(tmp_path / "two.onnx", list(codes))
    assert len(outs) == 2
    assert all(torch.equal(o, e) for o, e in zip(outs, integer(*codes)))


class AdaptivePool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.pool = nn.AdaptiveAvgPool2d((2, 3))
        self.fc = nn.Linear(18, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def test_adaptive_average_pooling_with_overlapping_windows(tmp_path):
    torch.manual_seed(2)
    qmodel = aquatic.quantize(AdaptivePool(), aquatic.qconfig.int8)
    x = torch.randn(16, 1, 7, 9)  # 5x7 maps: windows of 3 rows and of 3 columns, overlapping
    qmodel(x)
    integer = aquatic.convert(qmodel.eval(), example_input=x)
    assert any(isinstance(op, IntegerAverage) for op in integer.ops.values())
    export_integer(integer, tmp_path / "pool.onnx", integer.quantize_input(x))
    codes = integer.quantize_input(torch.randn(5, 1, 7, 9) * 3)
    for level in LEVELS:
        (out,) = run(tmp_path / "pool.onnx", [codes], level)
        assert torch.equal(out, integer(codes))


def _graph(op, steps, shape_low=-8, shape_high=7):
    spec = QSpec(
        torch.tensor(0.5, dtype=torch.float64), torch.tensor(0), None, shape_low, shape_high
    )
    ops = {"op": op} if op is not None else {}
    return IntegerGraph(ops, steps, [("x", spec, "nearest", True, [])], Ref(steps[-1].name), spec)


def test_mean_average_per_channel_and_index_moves(tmp_path):
    # a mean over the last axis with one ratio per channel (axis -2), then moves of codes
    # that a forward may record: index with None, '...', a reversed slice, an integer
    average = IntegerAverage(
        "mean",
        [0.3, 1.7, 0.9],
        input_zero_point=[1, 0, -2],
        output_zero_point=[0, 3, -1],
        low=-128,
        high=127,
        axis=-2,
        dims=[-1],
        keepdim=True,
        name="mean",
    )
    steps = [
        Step("mean", "op", None, (Ref("x"),), {}),
        Step("t", None, "transpose", (Ref("mean"), 1, 2), {}),
        Step("g", None, "getitem", (Ref("t"), (None, Ellipsis, slice(0, None, 2))), {}),
        Step("s", None, "squeeze", (Ref("g"), 0), {}),
        Step("last", None, "getitem", (Ref("s"), (slice(None), -1)), {}),
    ]
    graph = _graph(average, steps)
    x = torch.randint(-8, 8, (4, 3, 5), dtype=torch.int32)
    export_integer(graph, tmp_path / "mean.onnx", x)
    x2 = torch.randint(-8, 8, (6, 3, 5), dtype=torch.int32)
    expected = graph(x2)
    assert expected.shape == (6, 2)
    for level in LEVELS:
        (out,) = run(tmp_path / "mean.onnx", [x2], level)
        assert torch.equal(out, expected)


class Causal(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = aquatic.nn.Linear(8, 8, qconfig=aquatic.qconfig.int8)

    def forward(self, x):
        q = self.q(x)
        return torch.softmax(torch.tril(q @ q.transpose(1, 2)), dim=-1)


def test_opset_is_chosen_for_the_operators_present(tmp_path):
    torch.manual_seed(3)
    model = Causal()
    x = torch.randn(2, 5, 8)
    model(x)
    model.eval()
    proto = export(model, x, tmp_path / "causal.onnx")  # Trilu appeared in opset 14
    assert proto.opset_import[0].version == 14
    assert "Trilu" in [node.op_type for node in proto.graph.node]
    with torch.no_grad():
        assert torch.allclose(run(tmp_path / "causal.onnx", [x])[0], model(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"opset 13 is too old.*aten::tril.*opset=14"):
        export(model, x, tmp_path / "low.onnx", opset=13)
    linear = nn.Sequential(aquatic.nn.Linear(8, 3, qconfig=aquatic.qconfig.int8))
    linear(x)
    assert export(linear.eval(), x, tmp_path / "lin.onnx").opset_import[0].version == 13
    assert export(linear, x, tmp_path / "lin.onnx", opset=17).opset_import[0].version == 17


def test_integer_export_opset_errors(tmp_path):
    _, x, integer = model_case("resnet8", "pow2")
    codes = integer.quantize_input(x[:2])
    with pytest.raises(ValueError, match="opset 12 is too old"):
        export_integer(integer, tmp_path / "m.onnx", codes, opset=12)
    with pytest.raises(TypeError, match="opset must be an int or None"):
        export_integer(integer, tmp_path / "m.onnx", codes, opset="13")
    with pytest.raises(TypeError, match="takes 1 inputs"):
        export_integer(integer, tmp_path / "m.onnx", (codes, codes))
    with pytest.raises(TypeError, match="integer codes"):
        export_integer(integer, tmp_path / "m.onnx", x[:2])
    proto = export_integer(integer, tmp_path / "m.onnx", codes, opset=15)
    assert proto.opset_import[0].version == 15


def _spec(low, high):
    return QSpec(torch.tensor(0.5, dtype=torch.float64), torch.tensor(0), None, low, high)


def _two_input_graph(op, steps):
    inputs = [(name, _spec(-100, 100), "nearest", True, []) for name in ("a", "b")]
    return IntegerGraph({"op": op}, steps, inputs, Ref(steps[-1].name), _spec(None, None))


@pytest.mark.parametrize(
    "combine",
    [
        # a left shift (negative shift), zero points, no saturation: int64 codes out
        IntegerCombine("add", [3, -2], [5, -7], [-2, -2], output_zero_point=4, name="add"),
        IntegerCombine("mul", [1, 0], [3, 1], [5, 5], low=-50, high=60, rounding="floor"),
        IntegerCombine("cat", [0, 2], [3, 11], [1, 4], output_zero_point=-3, low=-9, high=9, dim=1),
    ],
    ids=lambda c: c.op,
)
def test_combine_rounding_and_zero_points(tmp_path, combine):
    torch.manual_seed(4)
    steps = [
        Step("op", "op", None, (Ref("a"), Ref("b")), {}),
        Step("clamped", None, "identity", (Ref("op"),), {}),
    ]
    graph = _two_input_graph(combine, steps)
    a, b = (torch.randint(-100, 101, (9, 6), dtype=torch.int32) for _ in range(2))
    export_integer(graph, tmp_path / "c.onnx", (a[:2], b[:2]))
    expected = graph(a, b)
    for level in LEVELS:
        (out,) = run(tmp_path / "c.onnx", [a, b], level)
        assert out.dtype == expected.dtype and torch.equal(out, expected)
    # against a short reference of the requantization (round half to even, floor)
    ref_a, ref_b = a.long() - combine.input_zero_points[0], b.long() - combine.input_zero_points[1]
    m, s = combine.multipliers.tolist(), combine.shifts.tolist()
    if combine.op == "add":
        ref = (ref_a * m[0] + ref_b * m[1]) * 2 ** -s[0]  # a left shift: exact
    elif combine.op == "mul":
        ref = torch.floor((ref_a * ref_b * m[0]).double() / 2 ** s[0])
    else:
        ref = torch.cat(
            [
                torch.round((ref_a * m[0]).double() / 2 ** s[0]),
                torch.round((ref_b * m[1]).double() / 2 ** s[1]),
            ],
            dim=1,
        )
    ref = ref + combine.output_zero_point
    if combine.low is not None:
        ref = ref.clamp(combine.low, combine.high)
    assert torch.equal(out.long(), ref.long())


def test_per_channel_clamp_and_errors_that_name_the_step(tmp_path):
    clamp = IntegerClamp([-3, 0, 2], [5, 7, 4], axis=-1, name="clamp")
    graph = _graph(clamp, [Step("clamp", "op", None, (Ref("x"),), {})])
    x = torch.randint(-8, 8, (5, 3), dtype=torch.int32)
    export_integer(graph, tmp_path / "clamp.onnx", x)
    (out,) = run(tmp_path / "clamp.onnx", [x])
    ref = torch.minimum(torch.maximum(x, torch.tensor([-3, 0, 2])), torch.tensor([5, 7, 4]))
    assert torch.equal(out, ref.int())
    # a tensor sum outside an integer module has no exact form: refused, named
    steps = [Step("twice", None, "add", (Ref("a"), Ref("b")), {})]
    graph = _two_input_graph(None, steps)
    graph.ops = nn.ModuleDict()
    a = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(TypeError, match="step 'twice'.*combines tensors"):
        export_integer(graph, tmp_path / "bad.onnx", (a, a))
    # indexing with a tensor: refused, named
    steps = [Step("pick", None, "getitem", (Ref("x"), torch.tensor([0, 1])), {})]
    with pytest.raises(TypeError, match="step 'pick': indexing with Tensor"):
        export_integer(_graph(None, steps), tmp_path / "bad.onnx", x)


def test_keyword_permutation_and_a_forward_that_fixes_the_batch(tmp_path):
    x = torch.randint(-8, 8, (5, 3, 2), dtype=torch.int32)
    steps = [Step("p", None, "torch.permute", (Ref("x"),), {"dims": (2, 0, 1)})]
    export_integer(_graph(None, steps), tmp_path / "p.onnx", x[:2])
    (out,) = run(tmp_path / "p.onnx", [x])
    assert torch.equal(out, x.permute(2, 0, 1))
    steps = [Step("r", None, "reshape", (Ref("x"), 5, 6), {})]  # the batch of 5 written in
    with pytest.raises(ValueError, match="dynamic_batch=False"):
        export_integer(_graph(None, steps), tmp_path / "r.onnx", x)
    export_integer(_graph(None, steps), tmp_path / "r.onnx", x, dynamic_batch=False)
    (out,) = run(tmp_path / "r.onnx", [x])
    assert torch.equal(out, x.reshape(5, 6))


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle (view, transpose, reshape) before a residual add."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1, groups=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.a(x))
        n, c, h, w = x.shape
        x = x.view(n, 2, 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = x + torch.clamp(self.b(x), 0.0, 6.0)
        return self.fc(x.mean((2, 3)))


def test_channel_shuffle_int8_at_another_batch_size(tmp_path):
    torch.manual_seed(5)
    qmodel = aquatic.quantize(ChannelShuffle(), aquatic.qconfig.int8)
    x = torch.randn(16, 2, 8, 8)
    qmodel(x)
    integer = aquatic.convert(qmodel.eval(), example_input=x)
    export_integer(integer, tmp_path / "shuffle.onnx", integer.quantize_input(x[:3]))
    codes = integer.quantize_input(torch.randn(11, 2, 8, 8))
    for level in LEVELS:
        (out,) = run(tmp_path / "shuffle.onnx", [codes], level)
        assert torch.equal(out, integer(codes))
