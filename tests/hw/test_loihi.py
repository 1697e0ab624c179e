"""Tests of the Loihi profile: CUBA simulator against hand-computed traces."""

import pytest
import torch

from aquatic.hw import loihi
from aquatic.hw._common import DoesNotFitError


def layer(**changes):
    spec = {"weight": [[64]], "current_decay": 1024, "voltage_decay": 2048, "threshold": 100}
    spec.update(changes)
    return spec


def test_golden_trace_by_hand():
    # alpha_u = 1 - 1024/4096 = 0.75, alpha_v = 0.5, threshold 100 (state units).
    # t0: u = 0 + 64 = 64;            v = 0 + 64 = 64
    # t1: u = 48 + 64 = 112;          v = 32 + 112 = 144 >= 100 -> spike, v = 0
    # t2: u = 84;                     v = 0 + 84 = 84
    # t3: u = 63;                     v = 42 + 63 = 105 -> spike
    # t4: u = rtz(47.25) = 47;        v = 0 + 47 = 47
    spikes = torch.tensor([1, 1, 0, 0, 0]).view(1, 5, 1)
    out, rec = loihi.simulate({"layers": [layer()]}, spikes, record=True)
    assert out.flatten().tolist() == [0, 1, 0, 1, 0]
    assert rec[0]["current"].flatten().tolist() == [64, 112, 84, 63, 47]
    assert rec[0]["voltage"].flatten().tolist() == [64, 144, 84, 105, 47]


def test_decay_rounds_toward_zero():
    # u = -70 then rtz(-70 * 0.75 = -52.5) = -52 (a floor shift would give -53)
    spec = {"layers": [layer(weight=[[-70]])]}
    _, rec = loihi.simulate(spec, torch.tensor([[[1], [0]]]), record=True)
    assert rec[0]["current"].flatten().tolist() == [-70, -52]
    with pytest.raises(DoesNotFitError, match="odd values"):
        loihi.check_spec(spec | {"layers": [layer(weight=[[-71]])]})


def test_layers_chain_within_a_step_and_bias():
    # layer 2 sees layer 1's spike in the same step; du = 4096 makes u = x exactly.
    first = layer(weight=[[200]], current_decay=4096, voltage_decay=4096, threshold=100)
    second = layer(weight=[[10]], current_decay=4096, voltage_decay=0, threshold=25, bias=[5])
    out, rec = loihi.simulate(
        {"layers": [first, second]}, torch.tensor([[[1], [0], [1]]]), record=True
    )
    # second: t0 v = 10 + 5 = 15; t1 v = 15 + 0 + 5 = 20; t2 v = 20 + 10 + 5 = 35 -> spike
    assert rec[0]["spikes"].flatten().tolist() == [1, 0, 1]
    assert rec[1]["voltage"].flatten().tolist() == [15, 20, 35]
    assert out.flatten().tolist() == [0, 0, 1]


def test_overflow_is_reported_with_the_layer_name():
    spec = {
        "layers": [
            layer(
                weight=[[254]], current_decay=0, voltage_decay=0, threshold=2**23 - 1, name="hidden"
            )
        ]
    }
    # no leak: u = 254 t, v = 254 t (t + 1) / 2 passes 2**23 - 1 at t = 256 (0-based)
    with pytest.raises(OverflowError, match="hidden: the voltage left .* at time step 256"):
        loihi.simulate(spec, torch.ones(1, 300, 1, dtype=torch.long))


def test_validation():
    with pytest.raises(DoesNotFitError, match="current_decay holds 5000"):
        loihi.check_spec({"layers": [layer(current_decay=5000)]})
    with pytest.raises(DoesNotFitError, match="weight holds 256"):
        loihi.check_spec({"layers": [layer(weight=[[256]])]})
    with pytest.raises(ValueError, match="takes 2 inputs, but the layer before has 1"):
        loihi.check_spec({"layers": [layer(), layer(weight=[[2, 2]])]})
    with pytest.raises(ValueError, match="binary"):
        loihi.simulate({"layers": [layer()]}, torch.full((1, 1, 1), 2))


# --- Preset and export ----------------------------------------------------------------


def test_trained_integrate_and_fire_spikes_exactly_like_its_export():
    # No synaptic state (du = 4096: u = x) and alpha_mem = 1 (dv = 0): the float model's
    # sums on the 1/64 grid are exact, so it and lava-dl's integer CUBA spike alike.
    from aquatic import nn as ann

    torch.manual_seed(0)
    q = loihi.qconfig()
    model = torch.nn.Sequential(
        ann.Linear(5, 8, qconfig=q),
        ann.LIF(alpha_mem=1.0, reset="zero", threshold=1.0, qconfig=q),
        ann.Linear(8, 3, bias=False, qconfig=q),
        ann.LIF(alpha_mem=1.0, reset="zero", threshold=0.5, qconfig=q),
    )
    x = (torch.rand(6, 30, 5) < 0.4).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        loss = (model(x).mean() - 0.3) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    spec = loihi.export(model)
    first = spec["layers"][0]
    assert (
        first["current_decay"].tolist() == [4096] * 8 and first["voltage_decay"].tolist() == [0] * 8
    )
    assert first["threshold"].tolist() == [64] * 8  # int(1.0 * 64)
    assert bool((first["weight"] % 2 == 0).all())  # the 2/64 grid
    out, rec = loihi.simulate(spec, x.long(), record=True)
    assert torch.equal(out, expected.long())
    assert rec[0]["spikes"].sum() > 0 and out.sum() > 0


def test_export_decays_and_errors():
    from aquatic import nn as ann

    q = loihi.qconfig()
    lif = ann.LIF(tau_mem=4.0, reset="zero", qconfig=q)
    model = torch.nn.Sequential(ann.Linear(2, 2, bias=False, qconfig=q), lif)
    model(torch.zeros(1, 1, 2))
    # tau 4: 1 - exp(-1/4) = 0.22120 -> dv = round(0.22120 * 4096) = round(906.0) = 906
    assert loihi.export(model)["layers"][0]["voltage_decay"].tolist() == [906, 906]
    subtract = torch.nn.Sequential(ann.Linear(2, 2, qconfig=q), ann.LIF(tau_mem=4.0, qconfig=q))
    with pytest.raises(DoesNotFitError, match="'1': Loihi resets the voltage to zero"):
        loihi.export(subtract)
    with pytest.raises(DoesNotFitError, match="'0' is a Conv1d; Loihi export takes Linear"):
        loihi.export(torch.nn.Sequential(ann.Conv1d(2, 2, 1, qconfig=q), lif))
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), ann.LIF(tau_mem=4.0, reset="zero"))
    with pytest.raises(
        DoesNotFitError, match="0.weight is not on the grid of the shared scale 0.015625"
    ):
        loihi.export(plain)
