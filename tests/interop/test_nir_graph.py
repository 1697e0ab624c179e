"""NIR export of models with a forward of their own: nodes per layer, edges along the
traced graph, sums as several edges into one node."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import aquatic
from aquatic.graph import GraphCaptureError
from aquatic.interop import nir as anir
from aquatic.nn import LIF
from aquatic.quantizers import UniformQuantizer

nir = pytest.importorskip("nir")


class ResidualSNN(nn.Module):
    """Two spiking layers whose spikes are summed (a skip connection), then a readout."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(4, 6), LIF(tau_mem=5.0, threshold=0.5, reset="zero")
        self.fc2, self.lif2 = nn.Linear(6, 6), LIF(tau_mem=5.0, threshold=0.5, reset="zero")
        self.fc3, self.out = nn.Linear(6, 3), LIF(tau_mem=4.0, reset="zero")

    def forward(self, x):
        a = self.lif1(self.fc1(x))
        b = self.lif2(self.fc2(a))
        return self.out(self.fc3(a + b))


def simulate_graph(graph, x, dt=1.0):
    """A reference reading of a NIR graph written from NIR's definitions: nodes in
    dependency order, each node's input the sum of its incoming edges, Affine, LIF
    (exact zero-order hold, v >= threshold, the reset mode recorded in the metadata:
    zero, or subtract as NIR 1.0.4 documents) and Scale nodes."""
    resets = graph.metadata.get("aquatic", {}).get("resets", {})
    x = x.double().numpy()
    values = {"input": x}
    pending = [n for n in graph.nodes if n != "input"]
    while pending:
        for name in pending:
            incoming = [a for a, b in graph.edges if b == name]
            if all(a in values for a in incoming):
                break
        pending.remove(name)
        drive = sum(values[a] for a in incoming)
        node = graph.nodes[name]
        if isinstance(node, nir.Affine):
            values[name] = drive @ node.weight.T.astype(np.float64) + node.bias
        elif isinstance(node, nir.Scale):
            values[name] = drive * node.scale
        elif isinstance(node, nir.LIF):
            decay = np.exp(-dt / node.tau)
            v = np.zeros(drive.shape[:1] + drive.shape[2:])
            out = np.zeros_like(drive)
            for t in range(drive.shape[1]):
                v = decay * v + (1 - decay) * (node.v_leak + node.r * drive[:, t])
                spikes = v >= node.v_threshold
                zero = resets.get(name) == "zero"
                v = np.where(spikes, 0.0, v) if zero else v - spikes * node.v_threshold
                out[:, t] = spikes
            values[name] = out
        else:
            assert isinstance(node, nir.Output), type(node)
            values[name] = drive
    return values["output"]


def test_residual_snn_exports_sums_as_edges_and_means_the_model():
    torch.manual_seed(0)
    model = ResidualSNN()
    graph = anir.export(model)
    assert set(graph.nodes) == {"input", "fc1", "lif1", "fc2", "lif2", "fc3", "out", "output"}
    assert ("lif1", "fc3") in graph.edges and ("lif2", "fc3") in graph.edges
    assert sum(1 for _, b in graph.edges if b == "fc3") == 2
    x = 2 * torch.rand(2, 30, 4)
    with torch.no_grad():
        expected = model(x)
        assert (
            model.lif1(model.fc1(x)).sum() > 10
            and model.lif2(model.fc2(model.lif1(model.fc1(x)))).sum() > 5
        )
    np.testing.assert_allclose(simulate_graph(graph, x), expected.double().numpy(), atol=0)
    loaded = anir.load(graph)
    assert torch.equal(loaded(x), expected)


def test_quantized_residual_snn_round_trips_bit_exact():
    torch.manual_seed(1)
    qconfig = aquatic.QConfig(
        activation=UniformQuantizer.with_args(bits=8, signed=True, scale=2**-4),
        weight=UniformQuantizer.with_args(bits=6),
    )
    model = aquatic.quantize(ResidualSNN(), qconfig)
    x = 2 * torch.rand(3, 30, 4)
    model(x)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = anir.export(model)
    # the sum's quantizer (aquatic.nn.Add) is a Scale node receiving both edges
    assert isinstance(graph.nodes["add"], nir.Scale)
    assert sorted(a for a, b in graph.edges if b == "add") == ["lif1", "lif2"]
    assert "add" in graph.metadata["aquatic"]["quantizers"]
    loaded = anir.load(graph)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class Flattening(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.lif = nn.Conv2d(1, 2, 3), LIF(tau_mem=3.0, reset="zero")
        self.fc = nn.Linear(8, 2)

    def forward(self, x):  # x: (N, C, H, W), one step per sample
        return self.fc(torch.flatten(self.conv(x), 1))


def test_functional_flatten_and_shared_layers():
    graph = anir.export(Flattening(), input_shape=(1, 4, 4))
    assert isinstance(graph.nodes["flatten"], nir.Flatten)
    assert ("conv", "flatten") in graph.edges and ("flatten", "fc") in graph.edges

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(self.fc(x))

    graph = anir.export(Twice())
    assert ("input", "fc") in graph.edges and ("fc", "fc_1") in graph.edges
    np.testing.assert_array_equal(graph.nodes["fc_1"].weight, graph.nodes["fc"].weight)


class Op(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.fc, self.op = nn.Linear(3, 3), op

    def forward(self, x):
        return self.op(self.fc(x), x)


@pytest.mark.parametrize(
    "op, message",
    [
        (lambda y, x: torch.cat([y, x], -1), "'cat'.*no NIR counterpart"),
        (lambda y, x: y * x, "'mul'.*no NIR counterpart"),
        (lambda y, x: torch.relu(y + x), "'relu'.*no NIR counterpart"),
        (lambda y, x: y[:, -1], "'getitem'"),
        (lambda y, x: y + y, "adds a tensor to itself"),
        (lambda y, x: (y, x), "several tensors"),
        (lambda y, x: y.reshape(-1), "'reshape'"),
    ],
)
def test_operations_nir_lacks_are_named(op, message):
    with pytest.raises(TypeError, match=message):
        anir.export(Op(op))


def test_layers_nir_lacks_and_untraceable_forwards_are_named():
    class WithCat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.cat = nn.Linear(3, 3), aquatic.nn.Cat(-1)

        def forward(self, x):
            return self.cat([self.fc(x), x])

    with pytest.raises(TypeError, match="NIR has no Cat node"):
        anir.export(WithCat())

    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(GraphCaptureError, match="line .* in forward"):
        anir.export(Branching())


class TimeFoldedConvSNN(nn.Module):
    """Conv -> IAF -> sum pooling -> Flatten -> Linear -> IAF on (N, T, C, H, W), the
    time axis folded into the batch around the per-step layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.iaf1 = aquatic.nn.IAF(threshold=0.5, reset="zero")
        self.pool = anir.SumPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 3 * 3, 5)
        self.iaf2 = aquatic.nn.IAF(threshold=0.5, reset="zero")

    def forward(self, x):
        n, t = x.shape[:2]
        h = self.iaf1(self.conv(x.flatten(0, 1)).unflatten(0, (n, t)))
        h = self.fc(self.flat(self.pool(h.flatten(0, 1))))
        return self.iaf2(h.unflatten(0, (n, t)))


def test_time_folded_conv_snn_with_sum_pooling_round_trips():
    torch.manual_seed(2)
    model = TimeFoldedConvSNN()
    graph = anir.export(model, input_shape=(2, 6, 6))
    chain = ["input", "conv", "iaf1", "pool", "flat", "fc", "iaf2", "output"]
    assert sorted(graph.edges) == sorted(zip(chain[:-1], chain[1:]))
    assert isinstance(graph.nodes["pool"], nir.SumPool2d)
    x = (torch.rand(2, 12, 2, 6, 6) < 0.5).float()
    loaded = anir.load(graph)
    with torch.no_grad():
        expected = model(x)
        assert expected.sum() > 5
        assert torch.equal(loaded(x), expected)


class TwoLayerSNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(4, 6), LIF(tau_mem=5.0, threshold=0.5, reset="zero")
        self.fc2, self.lif2 = nn.Linear(6, 3), LIF(tau_mem=4.0, threshold=0.5, reset="zero")

    def forward(self, x):
        return self.lif2(self.fc2(self.lif1(self.fc1(x))))


def test_snntorch_reads_a_traced_model_and_spikes_as_it_does():
    # snnTorch's importer (on nirtorch) maps tau to beta = 1 - dt / tau with dt = 1e-4
    # (forward Euler), so the graph is written with that step and discretisation.
    import_nir = pytest.importorskip("snntorch.import_nir")
    torch.manual_seed(0)
    model = TwoLayerSNN()
    with torch.no_grad():
        model.fc1.weight.mul_(2.0)
    graph = anir.export(model, dt=1e-4, discretization="euler")
    net = import_nir.import_from_nir(graph)
    x = 2 * torch.rand(3, 40, 4)
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, "reset_mem"):
                module.reset_mem()
        steps = []
        for t in range(x.shape[1]):
            out = net(x[:, t])
            steps.append(out[0] if isinstance(out, tuple) else out)
        expected = model(x)
        assert model.lif1(model.fc1(x)).sum() > 100 and expected.sum() > 10
    assert torch.equal(torch.stack(steps, 1), expected)
