"""Tests of the Loihi profile: CUBA simulator against hand-computed traces."""

import pytest
import torch

from aquatic.functional.integer import multiplicative_decay
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


def test_state_quantizer_holds_24_bit_states():
    q = loihi.StateQuantizer()
    x = torch.tensor([0.0078125, 0.01, -3.0, 1e6], requires_grad=True)
    y = q(x)
    # 1/128 is half a step: to even (0); 0.01 * 64 = 0.64 -> 1; 1e6 saturates at 2**23 - 1
    assert y.tolist() == [0.0, 1 / 64, -3.0, (2**23 - 1) / 64]
    assert q.to_int(x).tolist() == [0, 1, -192, 2**23 - 1]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0]  # straight through inside the range
    assert q.qparams()["scale"].item() == 1 / 64 and q.qparams()["quant_min"] == -(2**23)
    with pytest.raises(ValueError, match="bits must be an int in 2..32"):
        loihi.StateQuantizer(bits=40)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        loihi.StateQuantizer(scale=0.0)


def test_trained_leaky_model_spikes_exactly_like_its_export():
    # Leaky voltages (dv = 906 and 410), no synaptic state (du = 4096: u = W s): the model
    # quantizes v to the 1/64 grid before the spike decision and decays it as Loihi does,
    # rtz((4096 - dv) * v / 4096), so it and lava-dl's integer CUBA spike alike.
    from aquatic import nn as ann

    torch.manual_seed(1)
    q = loihi.qconfig()
    model = torch.nn.Sequential(
        ann.Linear(5, 8, qconfig=q),
        ann.LIF(tau_mem=4.0, reset="zero", threshold=1.0, bias=0.1, qconfig=q),
        ann.Linear(8, 3, bias=False, qconfig=q),
        ann.LIF(alpha_mem=0.9, reset="zero", threshold=0.5, train_decay=True, qconfig=q),
    )
    x = (torch.rand(6, 40, 5) < 0.4).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        loss = (model(x).mean() - 0.3) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model[3].alpha_mem.grad.abs().sum() > 0  # the decay trains through the rule
    model.eval()
    for lif in (model[1], model[3]):
        lif.record_states = True
    with torch.no_grad():
        expected = model(x)
    spec = loihi.export(model)
    # tau 4: 1 - exp(-1/4) = 0.2212 -> dv = 906; alpha 0.9 (moved a little by training)
    assert spec["layers"][0]["voltage_decay"].tolist() == [906] * 8
    assert 0 < spec["layers"][1]["voltage_decay"][0] < 4096
    assert spec["layers"][0]["current_decay"].tolist() == [4096] * 8
    out, rec = loihi.simulate(spec, x.long(), record=True)
    assert torch.equal(out, expected.long())
    for layer, lif in zip(rec, (model[1], model[3])):
        # Loihi records the voltage before the reset, aquatic the one after it
        after = layer["voltage"] * (1 - layer["spikes"])
        assert torch.equal(after, (lif.recordings["v_mem"] * 64).long())
        assert torch.equal(lif.recordings["v_mem"] * 64, torch.round(lif.recordings["v_mem"] * 64))
    assert rec[0]["spikes"].sum() > 0 and out.sum() > 0
    # The rounding toward zero mattered: somewhere it differs from the nearest integer.
    volts = rec[0]["voltage"] * (1 - rec[0]["spikes"])
    chip = multiplicative_decay(volts, 906)
    assert bool((chip != torch.round(volts * (1 - 906 / 4096)).long()).any())


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
