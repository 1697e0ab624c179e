"""The operations between layers of a traced forward, each against the fake-quant model;
the hand-placed Add/Mul/Cat; errors that name the fix; nn.Sequential unchanged."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.graph import GraphCaptureError, trace
from aquatic.quantizers import UniformQuantizer

ACT = UniformQuantizer.with_args(bits=8, power_of_two=True)
POW2 = aquatic.QConfig(
    weight=UniformQuantizer.with_args(bits=6, power_of_two=True),
    bias=UniformQuantizer.with_args(bits=16, scale=2.0**-10),
    activation=ACT,
)


class Ops(nn.Module):
    """Reshapes, indexing, clamps, functional pooling and a product of two branches."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 1)
        self.seq = nn.Linear(4, 6)
        self.head = nn.Linear(6 + 16, 3)

    def forward(self, x):
        a = F.max_pool2d(torch.relu(self.a(x)), 2)
        b = F.avg_pool2d(torch.clamp(self.b(x), -1.0, 1.0), 2)
        m = a * b  # quantize inserts an aquatic.nn.Mul
        h = m.flatten(2).permute(0, 2, 1)  # (N, 16, 4): a sequence of 16 steps
        last = F.hardtanh(self.seq(h))[:, -1]  # the last step, h[:, -1]
        pooled = m.reshape(m.size(0), 4, -1).mean(1)  # (N, 16)
        return self.head(torch.cat([last, pooled], dim=1))


def _quantized(model, qconfig=POW2, x=None):
    torch.manual_seed(0)
    qmodel = aquatic.quantize(model, qconfig)
    x = torch.randn(16, 2, 8, 8) if x is None else x
    for _ in range(2):
        qmodel(x)
    return qmodel.eval(), x


def test_operations_between_layers_bit_for_bit():
    torch.manual_seed(0)
    qmodel, x = _quantized(Ops())
    inserted = {
        name
        for name, m in qmodel.named_modules()
        if isinstance(m, (aquatic.nn.Mul, aquatic.nn.Cat))
    }
    assert inserted == {"mul", "cat"}
    integer = aquatic.convert(qmodel, example_input=x)
    x2 = torch.randn(32, 2, 8, 8)
    out = integer.dequantize_output(integer(integer.quantize_input(x2)))
    with torch.no_grad():
        assert torch.equal(out, qmodel(x2))


class HandPlaced(nn.Module):
    """Add, Mul and Cat placed by hand, in a model built from aquatic.nn directly."""

    def __init__(self):
        super().__init__()
        act = aquatic.QConfig(activation=ACT)
        self.quant = aquatic.nn.ActivationQuantizer(qconfig=act)
        self.fc1 = aquatic.nn.Linear(5, 5, qconfig=POW2)
        self.fc2 = aquatic.nn.Linear(5, 5, qconfig=POW2)
        self.add = aquatic.nn.Add(qconfig=act)
        self.mul = aquatic.nn.Mul(qconfig=act)
        self.cat = aquatic.nn.Cat(dim=-1, qconfig=act)

    def forward(self, x, y):
        x = self.quant(x)
        s = self.add(self.fc1(x), x)
        return self.cat([s, self.mul(self.fc2(x), s)]), s


def test_hand_placed_modules_two_outputs_and_a_second_input_scale():
    torch.manual_seed(1)
    model = HandPlaced()
    x, y = torch.randn(8, 5), torch.randint(-8, 8, (8, 5)) / 8
    for _ in range(2):
        model(x, y)
    model.eval()
    # y is unused; the second input still needs a scale: input_scale applies to it.
    integer = aquatic.convert(model, example_input=(x, y), input_scale=1 / 8)
    codes = integer(*integer.quantize_input(x, y))
    out = integer.dequantize_output(codes)
    expected = model(x, y)
    assert isinstance(out, tuple) and len(out) == 2
    assert all(torch.equal(o, e) for o, e in zip(out, expected))


def test_reference_add_requantizes_to_the_output_grid():
    """The integer add of codes on scales 1/4 and 1/16, requantized onto 1/2, against
    a reference computed here from the real values."""
    act = lambda s: aquatic.QConfig(activation=UniformQuantizer.with_args(bits=8, scale=s))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.qa, self.qb = (
                aquatic.nn.ActivationQuantizer(qconfig=act(s)) for s in (0.25, 1 / 16)
            )
            self.add = aquatic.nn.Add(qconfig=act(0.5))

        def forward(self, a, b):
            return self.add(self.qa(a), self.qb(b))

    model = Net().eval()
    a, b = torch.randn(1000) * 4, torch.randn(1000)
    integer = aquatic.convert(model, example_input=(a, b))
    codes = integer(*integer.quantize_input(a, b))
    real = torch.round(a * 4).clamp(-128, 127) / 4 + torch.round(b * 16).clamp(-128, 127) / 16
    reference = torch.round(real * 2).clamp(-128, 127)  # half to even, as torch.round
    assert torch.equal(codes.long(), reference.long())
    assert integer.exact


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return x


def test_untraceable_forward_names_the_line_and_the_fix():
    with pytest.raises(
        GraphCaptureError, match=r"test_graph_ops.py, line \d+.*x.sum\(\) > 0.*nn.Sequential"
    ):
        trace(Branchy(), "aquatic.convert")
    with pytest.warns(UserWarning, match="x.sum.*aquatic.convert cannot follow"):
        qmodel = aquatic.quantize(Branchy(), POW2)
    assert isinstance(qmodel.fc, aquatic.nn.Linear)  # the layers are still quantized
    with pytest.raises(TypeError, match="x.sum\\(\\) > 0"):
        aquatic.convert(qmodel, example_input=torch.randn(2, 3))


def test_unsupported_operation_and_missing_example_input_are_named():
    class Exp(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = aquatic.nn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=ACT))
            self.fc = aquatic.nn.Linear(3, 3, qconfig=POW2)

        def forward(self, x):
            return torch.exp(self.fc(self.quant(x)))

    model = Exp()
    model(torch.randn(4, 3))
    with pytest.raises(ValueError, match="needs example_input"):
        aquatic.convert(model.eval())
    with pytest.raises(ValueError, match="do not pass input_scale"):
        aquatic.convert(model, example_input=torch.randn(4, 3), input_scale=0.5)
    with pytest.raises(TypeError, match="'exp'.*no integer counterpart.*Supported"):
        aquatic.convert(model, example_input=torch.randn(4, 3))


def test_integer_graph_saves_and_loads_as_plain_tensors(tmp_path):
    qmodel, x = _quantized(Ops())
    integer = aquatic.convert(qmodel, example_input=x)
    path = tmp_path / "graph.pt"
    aquatic.integer.save(integer, path)
    assert set(torch.load(path, weights_only=True)) == {"header", "tensors"}
    loaded = aquatic.integer.IntegerGraph.load(path)
    codes = integer.quantize_input(x)
    assert torch.equal(loaded(codes), integer(codes))
    assert torch.equal(loaded.dequantize_output(loaded(codes)), qmodel(x))
    with pytest.raises(ValueError, match="IntegerGraph.load|graph file"):
        aquatic.integer.load(path)  # a chain's loader refuses it, naming the right one


def test_edited_graph_files_are_refused(tmp_path):
    import json

    qmodel, x = _quantized(Ops())
    path = tmp_path / "graph.pt"
    aquatic.convert(qmodel, example_input=x).save(path)
    data = torch.load(path, weights_only=True)
    header = json.loads(data["header"])
    index = next(i for i, step in enumerate(header["steps"]) if step["function"])
    header["steps"][index]["function"] = "eval"
    torch.save({"header": json.dumps(header), "tensors": data["tensors"]}, path)
    with pytest.raises(ValueError, match=rf"steps\[{index}\].*'eval' is not an allowed function"):
        aquatic.integer.IntegerGraph.load(path)


def test_sequential_keeps_the_chain_path():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    qmodel = aquatic.quantize(model, POW2)
    assert type(qmodel) is nn.Sequential and len(qmodel) == 3  # no input quantizer added
    qmodel(torch.randint(-8, 8, (8, 4)) / 8)
    integer = aquatic.convert(qmodel.eval(), input_scale=1 / 8)
    assert isinstance(integer, aquatic.integer.IntegerModel)


def test_qconfig_mapping_by_name_decides_the_inserted_quantizers():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.body(x) + x)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qmodel = aquatic.quantize(Res(), {nn.Module: POW2})
        assert isinstance(qmodel.add, aquatic.nn.Add)
        plain = aquatic.quantize(Res(), {nn.Linear: POW2})  # the model's own add: no key
    names = {name for name, _ in plain.named_modules()}
    assert "add" not in names and "input_quantizer" not in names


def test_dequantize_and_switches_reach_the_inserted_modules():
    qmodel, x = _quantized(Ops())
    aquatic.freeze_observers(qmodel)
    assert not qmodel.mul.quantizers["activation"].observer_enabled
    plain = aquatic.dequantize(qmodel)
    assert not plain.mul.quantizers and not plain.cat.quantizers and plain.cat.dim == 1
    assert type(plain.input_quantizer) is nn.Identity
    assert plain(x).shape == (16, 3)


def test_arguments_with_defaults_are_left_alone_and_inplace_shares_layers():
    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x, h=None):
            return self.fc(x) if h is None else self.fc(x) + h

    model = WithState()
    qmodel = aquatic.quantize(model, POW2, inplace=True)
    assert [name for name, _ in qmodel.named_children()] == ["fc", "input_quantizer"]
    assert qmodel.fc is model.fc and isinstance(model.fc, aquatic.nn.Linear)
    x = torch.randn(8, 3)
    qmodel(x)
    with pytest.raises(Exception, match="specialized to have value None"):
        qmodel(x, torch.zeros(3))  # h was fixed to its default when tracing
    integer = aquatic.convert(qmodel.eval(), example_input=x)
    out = integer.dequantize_output(integer(integer.quantize_input(x)))
    assert torch.equal(out, qmodel(x))


def test_sequential_holding_a_block_of_ones_own_converts_as_a_graph():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = aquatic.nn.Linear(4, 4, qconfig=POW2)
            self.add = aquatic.nn.Add(qconfig=aquatic.QConfig(activation=ACT))

        def forward(self, x):
            return self.add(torch.relu(self.fc(x)), x)

    torch.manual_seed(2)
    model = nn.Sequential(aquatic.nn.ActivationQuantizer(qconfig=POW2), Block(), nn.Flatten())
    x = torch.randn(16, 4)
    model(x)
    model.eval()
    integer = aquatic.convert(model, example_input=x)
    assert isinstance(integer, aquatic.integer.IntegerGraph)
    out = integer.dequantize_output(integer(integer.quantize_input(x)))
    assert torch.equal(out, model(x))


def test_only_the_layers_the_forward_runs_need_ranges():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.aux = nn.Linear(3, 2)  # never called by forward

        def forward(self, x):
            return self.fc(x)

    qmodel, x = _quantized(WithAux(), x=torch.randn(8, 3))
    integer = aquatic.convert(qmodel, example_input=x)
    assert torch.equal(integer.dequantize_output(integer(integer.quantize_input(x))), qmodel(x))
    fresh = aquatic.quantize(WithAux(), POW2).eval()
    with pytest.raises(ValueError, match="layer 'fc': .*never seen data"):
        aquatic.convert(fresh, example_input=x)
