"""aquatic.interop.nir.load checks a graph before building layers: finite parameters,
shapes within nodes and along edges, the aquatic metadata, and decays that underflow."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aquatic.interop import nir as anir

nir = pytest.importorskip("nir")

F32 = np.float32


def lif(n, tau=10.0):
    return nir.LIF(tau=np.full(n, tau), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n))


def cuba(n, tau_mem=10.0, tau_syn=5.0):
    return nir.CubaLIF(
        tau_mem=np.full(n, tau_mem),
        tau_syn=np.full(n, tau_syn),
        r=np.ones(n),
        v_leak=np.zeros(n),
        v_threshold=np.ones(n),
        w_in=np.ones(n),
    )


def chain(*layers, inputs=2, outputs=None, metadata=None):
    """Input -> layers[0] -> ... -> Output; layers are (name, node)."""
    outputs = inputs if outputs is None else outputs
    nodes = {"in": nir.Input(input_type=np.array([inputs]))}
    nodes.update(dict(layers))
    nodes["out"] = nir.Output(output_type=np.array([outputs]))
    names = ["in"] + [name for name, _ in layers] + ["out"]
    edges = list(zip(names[:-1], names[1:]))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata or {})


def good_graph(metadata=None):
    weight = np.array([[1.0, -0.5], [0.25, 2.0]], dtype=F32)
    return chain(
        ("a", nir.Affine(weight=weight, bias=np.zeros(2, F32))),
        ("lif", lif(2)),
        metadata=metadata,
    )


def test_a_good_graph_loads():
    loaded = anir.load(good_graph())
    assert loaded(torch.rand(1, 5, 2)).shape == (1, 5, 2)


# -- NaN and inf parameters -----------------------------------------------------------------
NODES = {
    "Affine": lambda: nir.Affine(weight=np.eye(2, dtype=F32), bias=np.zeros(2, F32)),
    "Linear": lambda: nir.Linear(weight=np.eye(2, dtype=F32)),
    "Scale": lambda: nir.Scale(scale=np.ones(2, F32)),
    "LIF": lambda: lif(2),
    "CubaLIF": lambda: cuba(2),
    "IF": lambda: nir.IF(r=np.ones(2), v_threshold=np.ones(2)),
    "LI": lambda: nir.LI(tau=np.full(2, 5.0), r=np.ones(2), v_leak=np.zeros(2)),
    "I": lambda: nir.I(r=np.ones(2)),
}


def numeric_params(node):
    return [
        f.name
        for f in dataclasses.fields(node)
        if f.name not in ("input_type", "output_type", "metadata")
        and isinstance(getattr(node, f.name), np.ndarray)
    ]


@given(
    kind=st.sampled_from(sorted(NODES)),
    data=st.data(),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    index=st.integers(0, 1),
)
def test_nan_and_inf_parameters_are_refused_naming_node_and_parameter(kind, data, bad, index):
    node = NODES[kind]()
    param = data.draw(st.sampled_from(numeric_params(node)))
    value = np.array(getattr(node, param), dtype=np.float64)
    value.flat[index % value.size] = bad
    setattr(node, param, value)
    word = "NaN" if math.isnan(bad) else "inf"
    with pytest.raises(ValueError, match=rf"node 'x' \({kind}\): parameter '{param}' holds {word}"):
        anir.load(chain(("x", node)))


# -- shapes -----------------------------------------------------------------------------------
@given(inputs=st.integers(1, 5), outputs=st.integers(1, 5), neurons=st.integers(2, 5))
def test_sizes_along_every_edge_must_agree(inputs, outputs, neurons):
    affine = nir.Affine(weight=np.ones((outputs, inputs), F32), bias=np.zeros(outputs, F32))
    graph = chain(("a", affine), ("lif", lif(neurons)), inputs=inputs, outputs=neurons)
    if outputs == neurons:
        assert anir.load(graph)(torch.rand(1, 2, inputs)).shape == (1, 2, neurons)
    else:
        message = rf"node 'lif' \(LIF\) takes input of shape \({neurons}\), but the edge from "
        with pytest.raises(ValueError, match=message + rf"node 'a' brings shape \({outputs}\)"):
            anir.load(graph)


def test_input_and_output_types_are_checked_too():
    with pytest.raises(ValueError, match=r"node 'a' \(Affine\) takes input of shape \(2\), but "):
        anir.load(chain(("a", nir.Affine(weight=np.eye(2, dtype=F32), bias=np.zeros(2))), inputs=3))
    with pytest.raises(ValueError, match=r"node 'out' \(Output\) takes input of shape \(4\)"):
        anir.load(chain(("lif", lif(2)), outputs=4))


def test_conv_channels_must_agree():
    conv = lambda cin, cout: nir.Conv2d(  # noqa: E731
        input_shape=None,
        weight=np.ones((cout, cin, 3, 3), F32),
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        bias=np.zeros(cout, F32),
    )
    nodes = {
        "in": nir.Input(input_type=np.array([1, 4, 4])),
        "c1": conv(1, 4),
        "c2": conv(3, 2),
        "out": nir.Output(output_type=np.array([2, 4, 4])),
    }
    edges = [("in", "c1"), ("c1", "c2"), ("c2", "out")]
    with pytest.raises(
        ValueError, match=r"node 'c2' \(Conv2d\) takes input of shape \(3, \*, \*\)"
    ):
        anir.load(nir.NIRGraph(nodes=nodes, edges=edges))


def test_parameter_shapes_within_a_node():
    affine = nir.Affine(weight=np.ones((3, 2), F32), bias=np.zeros(3, F32))
    affine.bias = np.zeros(4, F32)
    with pytest.raises(ValueError, match=r"node 'a' \(Affine\): bias has shape \(4,\), but the "):
        anir.load(chain(("a", affine), outputs=3))
    neuron = lif(3)
    neuron.r = np.ones(2)
    with pytest.raises(ValueError, match=r"node 'lif' \(LIF\): its parameters have shapes"):
        anir.load(chain(("lif", neuron), inputs=3, outputs=3))


# -- metadata ---------------------------------------------------------------------------------
QUANT = {"scale": 0.5, "zero_point": 0, "quant_min": -8, "quant_max": 7}


@pytest.mark.parametrize(
    "aquatic_meta, fragment",
    [
        ([1, 2], r"graph.metadata\['aquatic'\] must be a dict"),
        ({"dt": "fast"}, r"\['dt'\] must be a number"),
        ({"dt": -1.0}, r"\['dt'\] must be positive and finite"),
        ({"dt": math.nan}, r"\['dt'\] must be positive and finite"),
        ({"discretization": "rk4"}, r"\['discretization'\] must be 'exact' or 'euler'"),
        ({"resets": ["lif"]}, r"\['resets'\] must be a dict"),
        ({"resets": {"ghost": "zero"}}, r"\['resets'\]\['ghost'\] names a node the graph lacks"),
        ({"resets": {"lif": "hold"}}, r"\['resets'\]\['lif'\] must be 'subtract' or 'zero'"),
        ({"quantizers": {"a": 3}}, r"\['quantizers'\]\['a'\] must be a dict"),
        ({"quantizers": {"a": {"scale": 1.0}}}, r"\['quantizers'\]\['a'\] lacks \['zero_point'"),
        ({"quantizers": {"a": {**QUANT, "scale": 0.0}}}, r"\['a'\]\['scale'\] must be positive"),
        ({"quantizers": {"a": {**QUANT, "scale": math.inf}}}, r"\['scale'\] must be positive"),
        ({"quantizers": {"a": {**QUANT, "scale": "x"}}}, r"\['scale'\] must be a number"),
        ({"quantizers": {"a": {**QUANT, "zero_point": 0.5}}}, r"\['zero_point'\] must be an int"),
        ({"quantizers": {"a": {**QUANT, "quant_min": 7}}}, r"has quant_min=7 >= quant_max=7"),
        ({"quantizers": {"a": {**QUANT, "zero_point": 9}}}, r"\['zero_point'\]=9 lies outside"),
    ],
)
def test_malformed_aquatic_metadata_is_reported_by_key(aquatic_meta, fragment):
    with pytest.raises(ValueError, match=fragment):
        anir.load(good_graph({"aquatic": aquatic_meta}))


def test_well_formed_metadata_with_extra_keys_loads():
    meta = {"dt": 1.0, "resets": {"lif": "zero"}, "quantizers": {"a": {**QUANT, "new": 1}}}
    loaded = anir.load(good_graph({"aquatic": {**meta, "from_a_newer_aquatic": True}}))
    assert loaded(torch.rand(1, 3, 2)).shape == (1, 3, 2)


# -- time constants that underflow ------------------------------------------------------------
@given(tau=st.floats(1e-6, 0.05))
def test_a_decay_that_underflows_names_the_cause_and_the_fix(tau):
    graph = chain(("lif", lif(2, tau=tau)))
    if np.float32(np.exp(-1.0 / tau)) == 0:
        with pytest.raises(ValueError, match=r"node 'lif' \(LIF\): tau=.* underflows to 0") as info:
            anir.load(graph)  # dt defaults to 1: taus in seconds, dt in steps
        assert "dt=1e-3" in str(info.value)
    else:
        anir.load(graph)
    # Given in the unit of the time constants, the same graph loads.
    anir.load(graph, dt=tau / 10)


@pytest.mark.parametrize("which", ["tau_mem", "tau_syn"])
def test_sub_millisecond_cuba_taus_name_the_underflow_not_positivity(which):
    taus = {"tau_mem": 10.0, "tau_syn": 5.0, which: 5e-4}
    graph = chain(("lif", cuba(2, **taus)))
    with pytest.raises(ValueError, match=rf"{which}=0.0005 is so short against dt=1 ") as info:
        anir.load(graph)
    assert "must be positive and finite" not in str(info.value)
    loaded = anir.load(graph, dt=1e-4)
    assert loaded(torch.rand(1, 3, 2)).shape == (1, 3, 2)
