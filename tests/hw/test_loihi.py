"""Tests of the Loihi profile: the simulator against lava-nc's bit-accurate models (traces
checked in under tests/hw/data, made by tools/loihi_reference.py) and against traces
worked out by hand; the checks of a specification."""

from pathlib import Path

import numpy as np
import pytest
import torch

from aquatic.hw import loihi
from aquatic.hw._common import DoesNotFitError

DATA = Path(__file__).parent / "data"
KEYS = ("weight", "current_decay", "voltage_decay", "threshold", "bias")


def layer(**changes):
    spec = {"weight": [[64]], "current_decay": 4096, "voltage_decay": 0, "threshold": 100}
    spec.update(changes)
    return spec


def one_hot(steps, at=(0,)):
    x = torch.zeros(1, steps, 1, dtype=torch.long)
    x[0, list(at)] = 1
    return x


def test_state_grid_keeps_the_bits_a_decay_drops():
    # Weight 2 arrives as 2 << 6 = 128 (units of 1/4096), one step late; dv 1024 keeps 3/4:
    # 128, rtz(96) + 128 = 224, 168 + 128 = 296, 222 + 128 = 350, 262 + 128 = 390 > 6 << 6
    spec = {"layers": [layer(weight=[[2]], voltage_decay=1024, threshold=6)]}
    out, rec = loihi.simulate(spec, torch.ones(1, 7, 1, dtype=torch.long), record=True)
    assert rec[0]["voltage"].flatten().tolist() == [0, 128, 224, 296, 350, 0, 128]
    assert out.flatten().tolist() == [0, 0, 0, 0, 0, 1, 0]


def test_threshold_is_strict():
    # v = 64 << 6 equals the threshold 64 << 6: no spike; one more unit of weight spikes.
    out = loihi.simulate({"layers": [layer(threshold=64)]}, one_hot(3))
    assert out.sum() == 0
    out = loihi.simulate({"layers": [layer(weight=[[66]], threshold=64)]}, one_hot(3))
    assert out.flatten().tolist() == [0, 1, 0]


def test_one_step_per_connection_and_a_bias_from_step_zero():
    # Layer 1 spikes at step 1 (input of step 0, one step late); layer 2 gets it at step 2.
    # Layer 2: bias 12 << 6 = 768 per step, dv 2048 halves: 768, 1152, 576 + 768 + 1920 =
    # 3264 > 40 << 6 = 2560 -> spike; then the bias alone tends to 1536 and never spikes.
    first = layer(weight=[[254]])
    second = layer(weight=[[30]], voltage_decay=2048, threshold=40, bias=[12])
    out, rec = loihi.simulate({"layers": [first, second]}, one_hot(8), record=True)
    assert rec[0]["spikes"].flatten().tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert rec[1]["voltage"].flatten().tolist()[:4] == [768, 1152, 0, 768]
    assert out.flatten().tolist() == [0, 0, 1, 0, 0, 0, 0, 0]


def test_current_decays_toward_zero_then_takes_the_input():
    # du 1024 keeps 3/4 of u, rounded toward zero: -70 << 6 = -4480, then -3360, -2520
    spec = {"layers": [layer(weight=[[-70]], current_decay=1024, threshold=1000)]}
    _, rec = loihi.simulate(spec, one_hot(4), record=True)
    assert rec[0]["current"].flatten().tolist() == [0, -4480, -3360, -2520]
    small = {"layers": [layer(weight=[[-2]], current_decay=3000, threshold=1000)]}
    _, rec = loihi.simulate(small, torch.tensor([[[1], [0], [0]]]), record=True)
    # -128 * 1096 / 4096 = -34.25 -> -34 (a floor shift would give -35)
    assert rec[0]["current"].flatten().tolist() == [0, -128, -34]


def test_voltage_saturates_and_current_wraps():
    big = layer(weight=[[254] * 40], current_decay=1, threshold=2**17 - 1)
    _, rec = loihi.simulate({"layers": [big]}, torch.ones(1, 20, 40, dtype=torch.long), record=True)
    u, v = rec[0]["current"].flatten(), rec[0]["voltage"].flatten()
    # u grows by 254 * 40 << 6 = 650240 per step, less 1/4096 of itself (rounded toward
    # zero), from step 1; past 2**23 it wraps by 2**24 (lava-nc's rule), and the voltage
    # then saturates at -(2**23 - 1).
    expected, state = [], 0
    for t in range(20):
        state = int(np.sign(state)) * ((abs(state) * 4095) >> 12) + (650240 if t else 0)
        state = state - 2**24 if state > 2**23 else state + 2**24 if state <= -(2**23) else state
        expected.append(state)
    assert u.tolist() == expected and min(expected) < 0  # it wrapped
    assert int(v.min()) == -(2**23 - 1) and v.tolist()[-1] == -(2**23 - 1)


def _load_case(data, index):
    prefix, layers, k = f"case{index}", [], 0
    while f"{prefix}/layer{k}/weight" in data:
        layers.append({key: torch.from_numpy(data[f"{prefix}/layer{k}/{key}"]) for key in KEYS})
        k += 1
    return prefix, layers, torch.from_numpy(data[f"{prefix}/input"]).unsqueeze(0)


def test_simulate_equals_lava_nc_bit_accurate_traces():
    data = np.load(DATA / "loihi_reference.npz")
    kinds = set()
    for index in range(int(data["cases"])):
        prefix, layers, x = _load_case(data, index)
        kinds.add(str(data[f"{prefix}/kind"]))
        _, rec = loihi.simulate({"layers": layers}, x, record=True)
        for k, trace in enumerate(rec):
            for key in ("spikes", "current", "voltage"):
                expected = torch.from_numpy(data[f"{prefix}/layer{k}/{key}"].astype(np.int64))
                assert torch.equal(trace[key][0], expected), (prefix, k, key)
    assert kinds == {"no_leak", "synaptic", "bias", "limits", "chain2", "chain3"}


def test_check_spec_names_field_value_and_limit():
    cases = [
        (dict(current_decay=0), r"current_decay holds 0, outside the range 1..4096 \(12-bit du"),
        (dict(voltage_decay=4096), r"voltage_decay holds 4096, outside the range 0..4095"),
        (dict(threshold=131072), r"threshold holds 131072, outside the range 0..131071 \(17-bit"),
        (dict(bias=[4096]), r"bias holds 4096, outside the range -4096..4095 \(13-bit"),
        (dict(weight=[[256]]), r"weight holds 256, outside the range -256..254"),
    ]
    for change, message in cases:
        with pytest.raises(DoesNotFitError, match=message):
            loihi.check_spec({"layers": [layer(**change)]})
    with pytest.raises(DoesNotFitError, match="odd values"):
        loihi.check_spec({"layers": [layer(weight=[[-71]])]})
    with pytest.raises(ValueError, match="takes 2 inputs, but the layer before has 1"):
        loihi.check_spec({"layers": [layer(), layer(weight=[[2, 2]])]})
    with pytest.raises(ValueError, match="binary"):
        loihi.simulate({"layers": [layer()]}, torch.full((1, 1, 1), 2))
