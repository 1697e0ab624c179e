"""Tests of Loihi training and export: a model trained with loihi.qconfig() and
loihi.neuron_options() spikes as simulate(export(model)) and as its netx file run in
lava-nc (tests/hw/data, made by tools/loihi_trained_model.py and
tools/loihi_reference.py); the neuron options against a short reference loop."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aquatic import nn as ann
from aquatic.functional import NeuronSpec, neuron_sequence
from aquatic.hw import loihi
from aquatic.hw._common import DoesNotFitError

DATA = Path(__file__).parent / "data"


def trained_model(tau_syn=None, seed=0, steps=60, batch=4):
    torch.manual_seed(seed)
    q, options = loihi.qconfig(), loihi.neuron_options()
    model = torch.nn.Sequential(
        ann.Linear(16, 12, bias=False, qconfig=q),
        ann.LIF(tau_mem=4.0, tau_syn=tau_syn, bias=0.1, train_decay=True, qconfig=q, **options),
        ann.Linear(12, 8, bias=False, qconfig=q),
        ann.LIF(alpha_mem=0.9, tau_syn=tau_syn, threshold=0.5, qconfig=q, **options),
    )
    x = (torch.rand(batch, steps, 16) < 0.3).float()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(5):
        loss = (model(x).mean() - 0.2) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x


def read_netx(path):
    """A netx file back as a spec: the fields lava-dl's hdf5.Network reads."""
    h5py = pytest.importorskip("h5py")
    layers = []
    with h5py.File(path, "r") as file:
        group = file["layer"]
        assert group["0/type"][()] == b"input"
        for index in range(1, len(group)):
            entry = group[str(index)]
            assert entry["type"][()] == b"dense" and entry["neuron/type"][()] == b"CUBA"
            neuron = entry["neuron"]
            layers.append(
                {
                    "weight": torch.from_numpy(entry["weight"][()].astype(np.int64)),
                    "bias": torch.from_numpy(entry["bias"][()].astype(np.int64)),
                    "current_decay": int(neuron["iDecay"][()]),
                    "voltage_decay": int(neuron["vDecay"][()]),
                    "threshold": int(neuron["vThMant"][()]),
                }
            )
    return {"layers": layers}


@pytest.mark.parametrize("tau_syn", [None, 3.0])
def test_trained_model_spikes_exactly_like_its_export(tau_syn, tmp_path):
    model, x = trained_model(tau_syn)
    for lif in (model[1], model[3]):
        lif.record_states = True
    with torch.no_grad():
        expected = model(x)
    assert model[1].tau_mem.grad is not None  # the decay trained through the chip's rule
    spec = loihi.export(model, path=tmp_path / "model.net")
    first = spec["layers"][0]
    if tau_syn is None:
        assert first["current_decay"].tolist() == [4096] * 12  # u takes the input as it is
    else:  # d = round((1 - exp(-1 / tau)) * 4096) of the trained tau_syn
        leak = 1 - math.exp(-1 / float(model[1].tau_syn.detach()))
        assert first["current_decay"].tolist() == [round(leak * 4096)] * 12
    assert first["bias"].tolist() == [round(float(model[1].bias.detach()) * 64)] * 12
    out, rec = loihi.simulate(spec, x.long(), record=True)
    assert torch.equal(out, expected.long()) and out.sum() > 50
    for layer, lif in zip(rec, (model[1], model[3])):
        # the chip's states in units of 1/4096 are the model's states
        assert torch.equal(layer["voltage"], (lif.recordings["v_mem"] * 4096).long())
        if tau_syn is not None:
            assert torch.equal(layer["current"], (lif.recordings["i_syn"] * 4096).long())
    netx = read_netx(tmp_path / "model.net")
    assert torch.equal(loihi.simulate(netx, x.long()), out)


def test_checked_in_netx_file_ran_in_lava_nc_as_simulate_and_the_model():
    # loihi_trained.net was written by export(path=...) from trained_model(tau_syn=3.0);
    # loihi_trained_lava.npy is what lava-dl's hdf5.Network made of it in lava-nc.
    x = torch.from_numpy(np.load(DATA / "loihi_trained_input.npy").astype(np.int64))
    lava = torch.from_numpy(np.load(DATA / "loihi_trained_lava.npy").astype(np.int64))
    model = torch.from_numpy(np.load(DATA / "loihi_trained_model.npy").astype(np.int64))
    out = loihi.simulate(read_netx(DATA / "loihi_trained.net"), x)
    assert torch.equal(out, lava) and torch.equal(model, lava) and lava.sum() > 100


def test_export_refuses_what_the_chip_or_netx_cannot_carry(tmp_path):
    q, options = loihi.qconfig(), loihi.neuron_options()
    x = torch.zeros(1, 2, 2)

    def model(linear_bias=False, **lif):
        net = torch.nn.Sequential(
            ann.Linear(2, 2, bias=linear_bias, qconfig=q),
            ann.LIF(**{"tau_mem": 4.0, "qconfig": q, **options, **lif}),
        )
        net(x)
        return net

    with pytest.raises(DoesNotFitError, match="'0' has a bias, which Loihi's connection"):
        loihi.export(model(linear_bias=True))
    with pytest.raises(DoesNotFitError, match="need strict_threshold=True, got False"):
        loihi.export(model(strict_threshold=False))
    with pytest.raises(DoesNotFitError, match="need input_delay=True"):
        loihi.export(model(input_delay=False))
    with pytest.raises(DoesNotFitError, match="current_decay holds 0, outside the range 1..4096"):
        loihi.export(model(alpha_syn=1.0))
    per_neuron = model(threshold=[1.0, 2.0])
    assert loihi.export(per_neuron)["layers"][0]["threshold"].tolist() == [64, 128]
    with pytest.raises(DoesNotFitError, match="threshold holds 2 different values; lava-dl's netx"):
        loihi.export(per_neuron, path=tmp_path / "x.net")


def test_state_quantizer_narrow_range():
    q = loihi.StateQuantizer(scale=1 / 4096, narrow_range=True)
    assert q.to_int(torch.tensor([-1e9, 1e9])).tolist() == [-(2**23 - 1), 2**23 - 1]
    assert loihi.StateQuantizer().to_int(torch.tensor([-1e9])).tolist() == [-(2**23)]


def reference_neurons(x, alpha_mem, alpha_syn, threshold, bias, strict, after, delay):
    """The neuron equations, one float step at a time, reset to zero."""
    if delay:
        x = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    v = i = torch.zeros_like(x[:, 0])
    out = []
    for t in range(x.shape[1]):
        i = alpha_syn * i + x[:, t] if after else alpha_syn * (i + x[:, t])
        v = alpha_mem * v + i + bias
        s = (v > threshold) if strict else (v >= threshold)
        out.append(s.float())
        v = torch.where(s, torch.zeros_like(v), v)
    return torch.stack(out, 1)


@pytest.mark.parametrize("strict,after,delay", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)])
def test_neuron_options_follow_their_equations(strict, after, delay):
    torch.manual_seed(3)
    x = torch.randint(0, 4, (2, 30, 4)).float() * 0.25
    # v = 1.0, the threshold, at the first step the input reaches: 0.5 * 1.5 + 0.25 (the
    # input decays in its step) and 0.75 + 0.25 (it is added after the decay)
    x[0, 0, :2] = torch.tensor([1.5, 0.75])
    spec = NeuronSpec(
        0.5,
        0.5,
        1.0,
        0.25,
        reset="zero",
        strict_threshold=bool(strict),
        input_after_decay=bool(after),
        input_delay=bool(delay),
    )
    expected = reference_neurons(x, 0.5, 0.5, 1.0, 0.25, strict, after, delay)
    assert torch.equal(neuron_sequence(x, spec).output, expected)
    default = reference_neurons(x, 0.5, 0.5, 1.0, 0.25, 0, 0, 0)
    assert not torch.equal(expected, default)  # the option changed something


def test_neuron_option_errors():
    with pytest.raises(ValueError, match="strict_threshold decides binary spikes"):
        ann.LIF(tau_mem=2.0, strict_threshold=True, max_spikes=2)
    with pytest.raises(ValueError, match="input_delay drops the last input step"):
        ann.LIF(tau_mem=2.0, input_delay=True, persistent_state=True)
    fused = ann.LIF(tau_mem=2.0, threshold=0.5, strict_threshold=True, method="fused")
    loop = ann.LIF(tau_mem=2.0, threshold=0.5, strict_threshold=True, method="loop")
    steps = torch.tensor([[[0.5], [0.0], [1.0]]])  # v = 0.5 does not fire; above it does
    assert torch.equal(fused(steps), loop(steps))
    assert fused(steps).flatten().tolist() == [0.0, 0.0, 1.0]
    x = torch.rand(2, 6, 3, requires_grad=True)
    out = ann.LIF(tau_mem=2.0, threshold=0.3, strict_threshold=True)(x)
    out.sum().backward()
    assert x.grad.abs().sum() > 0  # the surrogate gradient passes


@pytest.mark.parametrize("seed", [101, 202])
def test_live_against_lava_nc(seed):
    """Random specifications on seeds the checked-in traces did not use (lava-nc only)."""
    pytest.importorskip("lava.proc.lif.process")
    sys.path.insert(0, str(Path(__file__).parents[2] / "tools"))
    reference = pytest.importorskip("loihi_reference")
    rng = np.random.default_rng(seed)
    for kind in reference.KINDS:
        sizes = [8, 6, 5, 4]
        depth = {"chain2": 2, "chain3": 3}.get(kind, 1)
        layers = [
            reference.random_layer(rng, sizes[k], sizes[k + 1], kind, k == depth - 1)
            for k in range(depth)
        ]
        spikes = (rng.random((40, sizes[0])) < 0.4).astype(np.int64)
        traces = reference.run_lava(layers, spikes)
        spec = {
            "layers": [{k: torch.as_tensor(np.asarray(v)) for k, v in l.items()} for l in layers]
        }
        _, rec = loihi.simulate(spec, torch.from_numpy(spikes).unsqueeze(0), record=True)
        for trace, (s, u, v) in zip(rec, traces):
            assert torch.equal(trace["spikes"][0], torch.from_numpy(s.astype(np.int64)))
            assert torch.equal(trace["current"][0], torch.from_numpy(u.astype(np.int64)))
            assert torch.equal(trace["voltage"][0], torch.from_numpy(v.astype(np.int64)))


@pytest.mark.parametrize("tau_syn", [None, 2.0])
def test_live_netx_file_in_lava_nc(tau_syn, tmp_path):
    """The exported netx file loaded by lava-dl and run in lava-nc (lava-dl only)."""
    pytest.importorskip("lava.lib.dl.netx")
    sys.path.insert(0, str(Path(__file__).parents[2] / "tools"))
    reference = pytest.importorskip("loihi_reference")
    model, x = trained_model(tau_syn, seed=7, batch=2)
    with torch.no_grad():
        expected = model(x).long()
    loihi.export(model, path=tmp_path / "model.net")
    lava = [reference.run_netx(str(tmp_path / "model.net"), s.long().numpy()) for s in x]
    assert torch.equal(torch.from_numpy(np.stack(lava)), expected) and expected.sum() > 20


def test_other_exports_refuse_loihi_neuron_options():
    from aquatic.hw import xylo
    from aquatic.integer import convert
    from aquatic.qconfig import int8 as aquatic_int8

    # Xylo's hidden neurons need max_spikes=31 (so no strict threshold) and subtraction
    xylo_options = dict(input_after_decay=True, input_delay=True, max_spikes=31)
    for q in (aquatic_int8, xylo.qconfig()):
        options = loihi.neuron_options() if q is aquatic_int8 else xylo_options
        model = torch.nn.Sequential(
            ann.Linear(2, 2, bias=False, qconfig=q),
            ann.LIF(tau_mem=4.0, tau_syn=4.0, qconfig=q, **options),
            ann.Linear(2, 2, bias=False, qconfig=q),
            ann.LIF(tau_mem=4.0, tau_syn=4.0, qconfig=q),
        )
        model(torch.zeros(1, 2, 2))
        export = convert if q is aquatic_int8 else xylo.export
        with pytest.raises(ValueError, match="Loihi's neuron options"):
            export(model)
    pytest.importorskip("nir")
    from aquatic.interop import nir as aquatic_nir

    model = torch.nn.Sequential(
        torch.nn.Linear(2, 2), ann.LIF(tau_mem=4.0, **loihi.neuron_options())
    )
    with pytest.raises(ValueError, match="Loihi's neuron options"):
        aquatic_nir.export(model, input_shape=(2,))
