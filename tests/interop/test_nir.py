"""Tests of the NIR export and load: mapping, round trips, a reference NIR simulator, errors."""

import math
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import aquatic
from aquatic import QConfig
from aquatic.interop import nir as anir
from aquatic.nn import IAF, LIF, ExpLeak, NeuronModule
from aquatic.quantizers import BitShiftDecay, UniformQuantizer

nir = pytest.importorskip("nir")


def run_steps(model, x):
    """Run an nn.Sequential on (N, T, *): neurons on sequences, other layers per step."""
    n, t = x.shape[:2]
    for layer in model:
        if isinstance(layer, NeuronModule):
            x = layer(x)
        else:
            y = layer(x.reshape((n * t,) + tuple(x.shape[2:])))
            x = y.reshape((n, t) + tuple(y.shape[1:]))
    return x


def rand_tau(*shape, low=1.5, high=20.0):
    return low + (high - low) * torch.rand(shape)


def spiking_mlp(syn, reset, norm_input, per_neuron, bias):
    tau = (lambda n: rand_tau(n)) if per_neuron else (lambda n: float(rand_tau(1)))
    thr = (lambda n: 0.5 + torch.rand(n)) if per_neuron else (lambda n: 0.8)
    return nn.Sequential(
        aquatic.nn.Linear(5, 6),
        LIF(
            tau_mem=tau(6),
            tau_syn=tau(6) if syn else None,
            threshold=thr(6),
            reset=reset,
            norm_input=norm_input,
            bias=(0.1 * torch.randn(6)) if bias else None,
        ),
        aquatic.nn.Linear(6, 4, bias=False),
        IAF(threshold=thr(4), reset=reset, tau_syn=tau(4) if syn else None),
        aquatic.nn.Linear(4, 3),
        ExpLeak(tau_mem=tau(3), norm_input=norm_input, bias=(0.2 if bias else None)),
    )


@pytest.mark.parametrize("discretization", ["exact", "euler"])
@pytest.mark.parametrize("dt", [1.0, 1e-3])
@pytest.mark.parametrize(
    "syn, reset, norm_input, per_neuron, bias",
    [
        (False, "subtract", False, False, False),
        (True, "zero", False, True, True),
        (True, "subtract", True, True, False),
        (False, "zero", True, False, True),
    ],
)
def test_round_trip_is_bit_exact(discretization, dt, syn, reset, norm_input, per_neuron, bias):
    model = spiking_mlp(syn, reset, norm_input, per_neuron, bias)
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.mul_(3.0)
    graph = anir.export(model, dt=dt, discretization=discretization)
    loaded = anir.load(graph)
    x = torch.rand(3, 40, 5)
    expected = model(x)
    assert model[:2](x).sum() > 0  # the hidden neurons spike
    assert torch.equal(loaded(x), expected)
    assert [type(m) for _, m in loaded.named_nodes()] == [type(m) for m in model]
    assert loaded["1"].reset == reset and loaded["1"].synaptic == syn


def test_node_types_and_parameters():
    model = nn.Sequential(
        aquatic.nn.Linear(3, 2),
        LIF(tau_mem=10.0, tau_syn=4.0, threshold=0.7, bias=0.3),
        nn.Linear(2, 2, bias=False),
        IAF(threshold=2.0, tau_syn=5.0),
        nn.Linear(2, 2),
        LIF(alpha_mem=0.5, norm_input=True),
        nn.Linear(2, 2),
        ExpLeak(alpha_mem=1.0),
    )
    graph = anir.export(model, dt=0.5)
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    assert kinds == {
        "input": "Input",
        "0": "Affine",
        "1": "CubaLIF",
        "2": "Linear",
        "3.syn": "LI",
        "3": "IF",
        "4": "Affine",
        "5": "LIF",
        "6": "Affine",
        "7": "I",
        "output": "Output",
    }
    assert graph.edges[:4] == [("input", "0"), ("0", "1"), ("1", "2"), ("2", "3.syn")]
    assert ("3.syn", "3") in graph.edges and ("3", "4") in graph.edges
    a_m, a_s = math.exp(-1 / 10), math.exp(-1 / 4)
    lif = graph.nodes["1"]
    # tau in NIR's unit: steps * dt, from the float32 decay forward uses
    np.testing.assert_allclose(lif.tau_mem, 10 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(lif.tau_syn, 4 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(lif.r, a_s / ((1 - a_s) * (1 - a_m)), rtol=1e-6)
    np.testing.assert_allclose(lif.v_leak, 0.3 / (1 - a_m), rtol=1e-6)
    np.testing.assert_array_equal(lif.w_in, 1.0)
    np.testing.assert_array_equal(lif.v_threshold, np.float32(0.7))
    current, iaf = graph.nodes["3.syn"], graph.nodes["3"]
    b_s = np.float32(math.exp(-1 / 5))
    np.testing.assert_allclose(current.r, b_s / (1 - b_s), rtol=1e-7)
    np.testing.assert_array_equal(current.v_leak, 0.0)
    np.testing.assert_array_equal(iaf.r, 1 / 0.5)
    np.testing.assert_array_equal(graph.nodes["5"].r, 1.0)  # norm_input: R = 1
    np.testing.assert_allclose(graph.nodes["5"].tau, -0.5 / math.log(0.5), rtol=1e-12)
    np.testing.assert_array_equal(graph.nodes["7"].r, 2.0)
    assert graph.metadata["aquatic"]["resets"] == {
        "1": "subtract",
        "3": "subtract",
        "5": "subtract",
    }


def test_euler_time_constants():
    graph = anir.export(
        nn.Sequential(nn.Linear(2, 2), LIF(alpha_mem=0.75)), dt=2.0, discretization="euler"
    )
    np.testing.assert_array_equal(graph.nodes["1"].tau, 2.0 / 0.25)
    np.testing.assert_array_equal(graph.nodes["1"].r, 4.0)
    assert anir.load(graph)["1"].alpha_mem == pytest.approx(0.75, abs=0)


def simulate_nir(graph, x, dt):
    """A reference simulator of NIR's ODEs, written from NIR's node definitions: each
    node advanced exactly over dt with its input held (zero-order hold), currents before
    membranes, spikes for v >= threshold, reset by subtraction."""
    x = x.double().numpy()
    order = ["input"]
    while len(order) < len(graph.nodes):
        order += [b for a, b in graph.edges if a == order[-1]]
    trace = x
    for name in order[1:-1]:
        node = graph.nodes[name]
        if isinstance(node, (nir.Affine, nir.Linear)):
            trace = trace @ node.weight.T.astype(np.float64)
            if isinstance(node, nir.Affine):
                trace = trace + node.bias
            continue
        out = np.zeros_like(trace)
        v = np.zeros(trace.shape[0:1] + trace.shape[2:])
        current = np.zeros_like(v)
        for t in range(trace.shape[1]):
            drive = trace[:, t]
            if isinstance(node, nir.CubaLIF):
                decay = np.exp(-dt / node.tau_syn)
                current = decay * current + (1 - decay) * node.w_in * drive
                drive = current
            if isinstance(node, nir.IF):
                v = v + dt * node.r * drive
            else:
                tau = node.tau_mem if isinstance(node, nir.CubaLIF) else node.tau
                decay = np.exp(-dt / tau)
                v = decay * v + (1 - decay) * (node.v_leak + node.r * drive)
            if isinstance(node, nir.LI):
                out[:, t] = v
                continue
            spikes = v >= node.v_threshold
            v = v - spikes * node.v_threshold
            out[:, t] = spikes
        trace = out
    return trace


def test_exported_graph_means_what_the_docs_say():
    # The NIR parameters, simulated with NIR's own equations, reproduce aquatic's neurons.
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(4, 5),
        LIF(tau_mem=rand_tau(5), tau_syn=rand_tau(5), threshold=0.5, bias=0.05 * torch.randn(5)),
        nn.Linear(5, 3),
        IAF(threshold=1.5),
        nn.Linear(3, 2),
        ExpLeak(tau_mem=rand_tau(2), norm_input=True),
    )
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    x = torch.rand(2, 50, 4)
    dt = 1e-3
    graph = anir.export(model, dt=dt)
    reference = simulate_nir(graph, x, dt)
    expected = model(x).detach().double().numpy()
    assert run_steps(model[:2], x).sum() > 10  # the first layer spikes
    np.testing.assert_allclose(reference, expected, atol=1e-4)


def test_quantized_model_exports_quantized_values_and_round_trips():
    qconfig = QConfig(
        activation=UniformQuantizer.with_args(bits=8, signed=True, scale=2**-4),
        weight=UniformQuantizer.with_args(bits=6, ch_axis=0),
        bias=UniformQuantizer.with_args(bits=8, scale=2**-6),
        tau=BitShiftDecay.with_args(bits=4, param="tau"),
        threshold=UniformQuantizer.with_args(bits=8, signed=False, scale=2**-3),
    )
    model = nn.Sequential(
        aquatic.nn.Linear(6, 5, qconfig=qconfig),
        LIF(tau_mem=rand_tau(5), tau_syn=7.0, threshold=0.9, qconfig=qconfig),
        aquatic.nn.Linear(5, 3, qconfig=qconfig),
        ExpLeak(tau_mem=6.0, qconfig=qconfig),
    )
    x = 2 * torch.rand(4, 30, 6)
    expected = model(x)
    with pytest.warns(UserWarning, match="activation quantizers of '0', '2', '3'"):
        graph = anir.export(model)
    values = model[0].quantize_params()
    np.testing.assert_array_equal(graph.nodes["0"].weight, values["weight"].numpy())
    scale = model[0].quantizers["weight"].qparams()["scale"].numpy()[:, None]
    codes = graph.nodes["0"].weight / scale
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    # decays: bit-shift grid alpha = 1 - 2**-dash
    alpha = np.exp(-1.0 / graph.nodes["1"].tau_mem)
    dash = -np.log2(1 - alpha)
    np.testing.assert_allclose(dash, np.round(dash), atol=1e-9)
    np.testing.assert_array_equal(graph.nodes["1"].v_threshold, 0.875)
    assert graph.metadata["aquatic"]["quantizers"]["3"] == {
        "scale": 2**-4,
        "zero_point": 0,
        "quant_min": -128,
        "quant_max": 127,
        "rounding": "nearest",
    }
    loaded = anir.load(graph)
    assert torch.equal(loaded(x), expected)
    assert "activation" in loaded["0"].quantizers and "weight" not in loaded["0"].quantizers


def test_conv_model_round_trip():
    int8 = QConfig(
        weight=UniformQuantizer.with_args(bits=8, ch_axis=0),
        activation=UniformQuantizer.with_args(bits=8, scale=2**-5),
    )
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=int8),
        aquatic.nn.Conv2d(2, 4, 3, padding=1, qconfig=int8),
        IAF(threshold=0.5),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 3, stride=2, padding="valid", bias=False),
        LIF(tau_mem=rand_tau(4, 1, 1), threshold=0.3),
        anir.SumPool2d(1),
        nn.Flatten(),
        aquatic.nn.Linear(4, 3),
        ExpLeak(tau_mem=5.0),
    )
    x = torch.rand(2, 12, 2, 8, 8)
    expected = run_steps(model, x)
    with pytest.warns(UserWarning, match="'0', '1'"):
        graph = anir.export(model, input_shape=(2, 8, 8))
    assert type(graph.nodes["0"]).__name__ == "Scale"
    assert type(graph.nodes["3"]).__name__ == "AvgPool2d"
    assert type(graph.nodes["6"]).__name__ == "SumPool2d"
    np.testing.assert_array_equal(graph.nodes["7"].output_type["output"], [4])
    np.testing.assert_array_equal(graph.nodes["output"].output_type["output"], [3])
    assert run_steps(model[:3], x).sum() > 0
    loaded = anir.load(graph)
    assert type(loaded["0"]) is aquatic.nn.ActivationQuantizer
    assert torch.equal(loaded(x), expected)


def test_conv1d_same_padding_and_lppool():
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding="same", dilation=2),
        LIF(tau_mem=4.0),
        nn.Flatten(1, 2),
        nn.Linear(4 * 9, 2),
        LIF(tau_mem=4.0),
    )
    x = torch.rand(2, 10, 3, 9)
    graph = anir.export(model, input_shape=(3, 9))
    assert graph.nodes["0"].padding == 2 and graph.nodes["2"].start_dim == 0
    assert torch.equal(anir.load(graph)(x), run_steps(model, x))
    pooled = nn.Sequential(nn.LPPool2d(1, 2), LIF(tau_mem=3.0))
    assert type(anir.export(pooled, (1, 4, 4)).nodes["0"]).__name__ == "SumPool2d"


def test_file_round_trip_and_reexport(tmp_path):
    model = spiking_mlp(True, "zero", False, True, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no activation quantizers, no warning
        graph = anir.export(model, dt=1e-3, discretization="euler")
    path = tmp_path / "model.nir"
    nir.write(path, graph)
    loaded = anir.load(str(path))  # dt and discretization from the metadata
    x = torch.rand(2, 25, 5)
    assert torch.equal(loaded(x), model(x))
    again = anir.export(loaded, dt=1e-3, discretization="euler")
    assert sorted(again.nodes) == sorted(graph.nodes)
    assert sorted(again.edges) == sorted(graph.edges)
    for name in ("1", "3.syn", "5"):
        for field in ("r", "v_leak"):
            np.testing.assert_allclose(
                getattr(again.nodes[name], field), getattr(graph.nodes[name], field), rtol=1e-12
            )


def test_foreign_graph_with_other_gains_and_a_branch():
    # snnTorch-style LIF (R = tau / dt, forward Euler) and a node summing two branches.
    dt, tau, beta = 1.0, 5.0, 0.8
    w = np.array([[1.0, -0.5], [0.25, 2.0]], dtype=np.float32)
    graph = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type=np.array([2])),
            "a": nir.Linear(weight=w),
            "b": nir.Scale(scale=np.array([2.0, 3.0], dtype=np.float32)),
            "lif": nir.LIF(
                tau=np.full(2, tau),
                r=np.full(2, 3.0),
                v_leak=np.zeros(2),
                v_threshold=np.ones(2),
            ),
            "out": nir.Output(output_type=np.array([2])),
        },
        edges=[("in", "a"), ("in", "b"), ("a", "lif"), ("b", "lif"), ("lif", "out")],
    )
    loaded = anir.load(graph, dt=dt, discretization="euler")
    assert loaded.names == ["a", "b", "lif.gain", "lif"]
    x = torch.rand(2, 20, 2)
    drive = x @ torch.from_numpy(w).T + x * torch.tensor([2.0, 3.0])
    v, expected = torch.zeros(2, 2), []
    for t in range(20):  # v = beta v + (1 - beta) R I: gain 0.6
        v = beta * v + torch.tensor(0.2 * 3.0) * drive[:, t]
        s = (v >= 1.0).float()
        v = v - s  # NIR 1.0.4 documents subtraction; later versions reset to v_reset = 0
        if "v_reset" in graph.nodes["lif"].__dict__:
            v = v * (1 - s)
        expected.append(s)
    torch.testing.assert_close(loaded(x), torch.stack(expected, 1))


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, message",
    [
        (nn.MaxPool2d(2), "'1' is a MaxPool2d, which has no NIR counterpart"),
        (nn.Conv3d(2, 2, 1), "'1' is a Conv3d"),
        (aquatic.nn.LIFCell(tau_mem=3.0), "LIFCell \\(one time step\\)"),
        (nn.LSTM(4, 4), "LSTM"),
        (nn.LPPool2d(2, 2), "norm_type=2"),
    ],
)
def test_unsupported_layers_are_type_errors(layer, message):
    with pytest.raises(TypeError, match=message):
        anir.export(nn.Sequential(nn.Linear(2, 4), layer))


@pytest.mark.parametrize(
    "layer, message",
    [
        (LIF(tau_mem=3.0, min_v_mem=-1.0), "min_v_mem=-1.*use min_v_mem=None"),
        (IAF(bias=0.5), "has a bias but no membrane leak"),
        (
            LIF(tau_mem=3.0, qconfig=QConfig(state=UniformQuantizer.with_args(bits=8))),
            "the state quantizer of 'v_mem': the quantizer has no scale yet",
        ),
        (LIF(alpha_mem=torch.tensor([1.0, 0.5, 0.5, 0.5])), "mixes neurons without leak"),
        (LIF(tau_mem=3.0, alpha_syn=1.0), "alpha_syn must lie strictly between 0 and 1"),
    ],
)
def test_inexpressible_settings_are_value_errors(layer, message):
    with pytest.raises(ValueError, match=message):
        anir.export(nn.Sequential(nn.Linear(2, 4), layer))


def test_bad_shapes_and_arguments():
    with pytest.raises(ValueError, match="put an nn.Flatten\\(\\) before it"):
        anir.export(nn.Sequential(nn.Linear(4, 2)), input_shape=(3, 4))
    with pytest.raises(ValueError, match="give input_shape"):
        anir.export(nn.Sequential(nn.Conv2d(1, 1, 3), LIF(tau_mem=2.0)))
    with pytest.raises(ValueError, match="pad with zeros only"):
        anir.export(nn.Conv1d(1, 1, 3, padding=1, padding_mode="reflect"), input_shape=(1, 5))
    with pytest.raises(ValueError, match="merges the batch axis"):
        anir.export(nn.Sequential(nn.Flatten(0)), input_shape=(2, 2))
    with pytest.raises(ValueError, match="dt must be positive"):
        anir.export(nn.Linear(2, 2), dt=0.0)
    with pytest.raises(ValueError, match="discretization must be one of 'exact', 'euler'"):
        anir.export(nn.Linear(2, 2), discretization="rk4")


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return x + self.fc(x)


def test_custom_containers_follow_their_forward():
    # x + fc(x): the input feeds the output directly and through fc (NIR sums edges).
    graph = anir.export(Residual())
    assert sorted(graph.edges) == [("fc", "output"), ("input", "fc"), ("input", "output")]


def test_load_errors():
    def graph(nodes, edges):
        base = {
            "in": nir.Input(input_type=np.array([2])),
            "out": nir.Output(output_type=np.array([2])),
        }
        return nir.NIRGraph(nodes={**base, **nodes}, edges=edges)

    affine = lambda: nir.Affine(weight=np.eye(2, dtype=np.float32), bias=np.zeros(2, np.float32))
    cyclic = graph(
        {"a": affine(), "b": affine()}, [("in", "a"), ("a", "b"), ("b", "a"), ("b", "out")]
    )
    with pytest.raises(ValueError, match="cycle"):
        anir.load(cyclic)
    delayed = graph({"d": nir.Delay(delay=np.ones(2))}, [("in", "d"), ("d", "out")])
    with pytest.raises(
        TypeError, match="node 'd' is a NIR Delay, which has no aquatic counterpart"
    ):
        anir.load(delayed)
    with pytest.raises(TypeError, match="nir.NIRGraph or a file path"):
        anir.load(nn.Linear(2, 2))


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nir", None)
    with pytest.raises(ImportError, match=r"pip install 'aquatic\[nir\]'"):
        anir.export(nn.Linear(2, 2))


def test_nirmodule_checks_its_graph():
    with pytest.raises(ValueError, match="comes before its source"):
        anir.NIRModule(
            [("a", nn.Identity()), ("b", nn.Identity())],
            [("input", "b"), ("b", "a"), ("a", "output")],
        )
    with pytest.raises(ValueError, match="expects input of shape \\(N, T, \\*\\)"):
        anir.NIRModule([("a", nn.Identity())], [("input", "a"), ("a", "output")])(torch.ones(3))


def test_several_spikes_per_step_are_recorded_and_restored():
    torch.manual_seed(5)
    model = nn.Sequential(aquatic.nn.Linear(3, 4), LIF(tau_mem=4.0, threshold=0.3, max_spikes=3))
    with torch.no_grad():
        model[0].weight.mul_(4.0)
    with pytest.warns(UserWarning, match="max_spikes of '1' \\(3\\)"):
        graph = anir.export(model)
    assert graph.metadata["aquatic"]["max_spikes"] == {"1": 3}
    loaded = anir.load(graph)
    x = torch.rand(2, 20, 3)
    with torch.no_grad():
        expected = model(x)
        assert expected.max() > 1
        assert loaded["1"].max_spikes == 3 and torch.equal(loaded(x), expected)
