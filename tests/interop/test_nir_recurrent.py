"""NIR export and load of recurrent spiking layers (LIFRecurrent as a neuron node with a
recurrent Linear loop), checked against a recurrence written here and against snnTorch."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import aquatic
from aquatic.interop import nir as anir

nir = pytest.importorskip("nir")


def recurrent_model(tau_syn, reset="zero", seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        aquatic.nn.Linear(3, 6),
        aquatic.nn.LIFRecurrent(6, tau_mem=6.0, tau_syn=tau_syn, threshold=0.5, reset=reset),
        aquatic.nn.Linear(6, 2),
        aquatic.nn.LIF(tau_mem=3.0, reset=reset),
    )
    with torch.no_grad():
        model[1].rec_weight.mul_(2.0)
    return model


def reference_recurrent(x, weight, alpha_mem, alpha_syn, threshold):
    """x[t] + W s[t-1] into the synapse, then the membrane; reset to zero."""
    n, steps, size = x.shape
    v, i, s = torch.zeros(n, size), torch.zeros(n, size), torch.zeros(n, size)
    out = []
    for t in range(steps):
        drive = x[:, t] + s @ weight.T
        i = alpha_syn * (i + drive) if alpha_syn is not None else drive
        v = alpha_mem * v + i
        s = (v >= threshold).float()
        v = v * (1 - s)
        out.append(s)
    return torch.stack(out, 1)


@pytest.mark.parametrize("tau_syn", [None, 4.0])
def test_recurrent_layer_is_a_neuron_node_with_a_loop(tau_syn):
    model = recurrent_model(tau_syn)
    graph = anir.export(model)
    kind = nir.CubaLIF if tau_syn else nir.LIF
    assert isinstance(graph.nodes["1"], kind)
    assert isinstance(graph.nodes["1_rec"], nir.Linear)
    assert ("1", "1_rec") in graph.edges and ("1_rec", "1") in graph.edges
    np.testing.assert_array_equal(graph.nodes["1_rec"].weight, model[1].rec_weight.detach().numpy())
    # the loop means what the reference recurrence computes
    x = 2 * torch.rand(2, 30, 3)
    drive = model[0](x).detach()
    alpha_syn = None if tau_syn is None else torch.exp(torch.tensor(-1.0 / tau_syn))
    expected = reference_recurrent(
        drive, model[1].rec_weight.detach(), torch.exp(torch.tensor(-1.0 / 6.0)), alpha_syn, 0.5
    )
    with torch.no_grad():
        spikes = model[1](drive)
    assert spikes.sum() > 5
    assert torch.equal(spikes, expected)


@pytest.mark.parametrize("tau_syn", [None, 4.0])
@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_recurrent_round_trip_spikes_identically(tau_syn, reset):
    model = recurrent_model(tau_syn, reset, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = anir.export(model)
    loaded = anir.load(graph)
    assert isinstance(loaded["1"], aquatic.nn.LIFRecurrent)
    assert torch.equal(loaded["1"].rec_weight, model[1].rec_weight)
    x = 2 * torch.rand(3, 40, 3)
    with torch.no_grad():
        assert model[:2](x).sum() > 10
        assert torch.equal(loaded(x), model(x))


def test_foreign_loop_with_an_input_gain_scales_the_recurrent_weights():
    # An LIF node with r != 1: the gain applies to x and to the loop's input alike.
    w = np.array([[0.0, 0.8], [0.6, 0.0]], dtype=np.float32)
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([2])}),
            "lif": nir.LIF(
                tau=np.full(2, 5.0),
                r=np.full(2, 3.0),
                v_leak=np.zeros(2),
                v_threshold=np.ones(2),
            ),
            "w": nir.Linear(weight=w),
            "output": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("input", "lif"), ("lif", "w"), ("w", "lif"), ("lif", "output")],
    )
    loaded = anir.load(graph)
    x = torch.rand(2, 25, 2)
    alpha = float(np.float32(np.exp(-1 / 5.0)))
    gain = (1 - alpha) * 3.0
    n, v, s, out = 2, torch.zeros(2, 2), torch.zeros(2, 2), []
    for t in range(25):  # NIR: v <- alpha v + (1 - alpha) r (x + W s), subtract reset
        v = alpha * v + gain * (x[:, t] + s @ torch.from_numpy(w).T)
        s = (v >= 1).float()
        v = v - s
        out.append(s)
    expected = torch.stack(out, 1)
    with torch.no_grad():
        got = loaded(x)
    assert expected.sum() > 3
    assert torch.equal(got, expected)


def test_loop_with_a_bias_is_refused():
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([2])}),
            "lif": nir.LIF(
                tau=np.full(2, 5.0), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)
            ),
            "w": nir.Affine(weight=np.eye(2, dtype=np.float32), bias=np.ones(2, np.float32)),
            "output": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("input", "lif"), ("lif", "w"), ("w", "lif"), ("lif", "output")],
    )
    with pytest.raises(
        ValueError, match="'w' \\(Affine\\) on the recurrent loop of 'lif' has a bias"
    ):
        anir.load(graph)


def test_recurrent_layer_without_leak_is_refused():
    model = nn.Sequential(nn.Linear(2, 3), aquatic.nn.LIFRecurrent(3, alpha_mem=1.0))
    with pytest.raises(ValueError, match="LIFRecurrent\\) has neurons without leak"):
        anir.export(model)
