"""Tests of the Xylo profile: simulator (golden traces, a scalar reference, xylosim)."""

import math
import numpy as np
import pytest
import torch

from aquatic.hw import xylo
from aquatic.hw._common import DoesNotFitError


def tiny_spec(**changes):
    """One input, one hidden and one readout neuron (synapse 1 only)."""
    spec = {
        "weights_in": torch.tensor([[[10, 0]]], dtype=torch.int8),
        "weights_out": torch.tensor([[50]], dtype=torch.int8),
        "dash_mem": [2],
        "dash_mem_out": [1],
        "dash_syn": [1],
        "dash_syn_out": [1],
        "threshold": [12],
        "threshold_out": [20],
    }
    spec.update(changes)
    return spec


def test_golden_trace_by_hand():
    # Three events at t=0 through weight 10. Hidden (dash_syn 1, dash_mem 2, threshold 12):
    #  t0: i = 30 - (30>>1) = 15; v = 0 - 0 + 15 = 15 -> 1 spike, v = 3
    #  t1: i = 15 - 7 = 8;  v = 3 - 1 (3>>2 = 0, leaks 1) + 8 = 10
    #  t2: i = 8 - 4 = 4;   v = 10 - 2 + 4 = 12 -> 1 spike, v = 0
    #  t3: i = 4 - 2 = 2;   v = 0 + 2 = 2
    #  t4: i = 2 - 1 = 1;   v = 2 - 1 + 1 = 2
    # Readout (weight 50, dash_syn 1, dash_mem 1, threshold 20) gets hidden spikes one
    # step late (t1 and t3):
    #  t1: i = 50 - 25 = 25; v = 25 -> spike, v = 5
    #  t2: i = 25 - 12 = 13; v = 5 - 2 + 13 = 16
    #  t3: i = 13 + 50 = 63 -> 63 - 31 = 32; v = 16 - 8 + 32 = 40 -> one spike (cap 1), v = 20
    #  t4: i = 32 - 16 = 16; v = 20 - 10 + 16 = 26 -> spike, v = 6
    spikes = torch.tensor([3, 0, 0, 0, 0]).view(1, 5, 1)
    out, rec = xylo.simulate(tiny_spec(), spikes, record=True)
    assert out.flatten().tolist() == [0, 1, 0, 1, 1]
    assert rec["spikes"].flatten().tolist() == [1, 0, 1, 0, 0]
    assert rec["v_mem"].flatten().tolist() == [3, 10, 0, 2, 2]
    assert rec["i_syn"][..., 0].flatten().tolist() == [15, 8, 4, 2, 1]
    assert rec["v_mem_out"].flatten().tolist() == [0, 5, 16, 20, 6]
    assert rec["i_syn_out"].flatten().tolist() == [0, 25, 13, 32, 16]


def test_spike_caps_and_input_cap():
    # 20 events are cut to 15: i = 15 * 127 = 1905, dash_syn 15 leaks 1 -> 1904.
    # Threshold 1: floor(1904 / 1) = 1904 spikes, capped at 31; v = 1904 - 31.
    spec = tiny_spec(
        weights_in=[[[127, 0]]], dash_syn=[15], dash_mem=[15], threshold=[1], threshold_out=[1]
    )
    out, rec = xylo.simulate(spec, torch.tensor([[[20], [0]]]), record=True)
    assert rec["i_syn"][0, 0, 0, 0].item() == 1904
    assert rec["spikes"][0, 0, 0].item() == 31
    assert rec["v_mem"][0, 0, 0].item() == 1904 - 31
    # readout at t1: 31 events of weight 50 -> i = 1550, leaks 775 (dash 1): one spike only
    assert out[0, :, 0].tolist() == [0, 1]
    assert rec["v_mem_out"][0, 1, 0].item() == 775 - 1


def test_saturation_order_of_each_addition():
    # Two synapses, weight 127 << 8 = 32512: two events saturate each current at 32767,
    # then dash 15 leaks 1 -> 32766 each. bias -32768 drives v to -32768 at t0.
    # t1: delta = sat(1 + 65532) = 32767; delta = sat(32767 - 32768) = -1;
    # v = sat(-32768 - 1) = -32768 (one clamp of the whole sum would give 32765).
    spec = tiny_spec(
        weights_in=[[[127, 127]]],
        weight_shift_in=8,
        dash_syn=[15],
        dash_syn_2=[15],
        dash_mem=[15],
        threshold=[32767],
        bias=[-32768],
    )
    _, rec = xylo.simulate(spec, torch.tensor([[[0], [2]]]), record=True)
    assert rec["i_syn"][0, 1, 0].tolist() == [32766, 32766]
    assert rec["v_mem"][0].flatten().tolist() == [-32768, -32768]


def test_batch_equals_one_by_one():
    spec = tiny_spec(weights_in=[[[90, -20]]], dash_syn_2=[3])
    spikes = torch.randint(0, 4, (4, 12, 1))
    batched = xylo.simulate(spec, spikes)
    single = torch.cat([xylo.simulate(spec, spikes[n : n + 1]) for n in range(4)])
    assert torch.equal(batched, single)
    assert batched.dtype == torch.int64 and batched.shape == (4, 12, 1)


# --- A scalar reference: xylosim's algorithm written out neuron by neuron -------------


def _sat(x):
    return max(-32768, min(32767, x))


def _dec(x, dash):
    d = x >> dash
    return (1 if x > 0 else -1 if x < 0 else 0) if d == 0 else d


def reference(spec, spikes):
    w_in, w_rec, w_out = (np.asarray(spec[k]) for k in ("weights_in", "weights_rec", "weights_out"))
    n_in, n_hid, _ = w_in.shape
    n_out = w_out.shape[1]
    i = [[0, 0] for _ in range(n_hid)]
    v = [0] * n_hid
    io, vo = [0] * n_out, [0] * n_out
    prev = [0] * n_hid
    out, hidden = [], []
    for row in spikes:
        for p in range(n_in):
            for _ in range(min(int(row[p]), 15)):
                for j in range(n_hid):
                    for s in range(2):
                        if w_in[p, j, s]:
                            i[j][s] = _sat(
                                i[j][s] + (int(w_in[p, j, s]) << spec["weight_shift_in"])
                            )
        for p in range(n_hid):
            for _ in range(prev[p]):
                for j in range(n_hid):
                    for s in range(2):
                        if w_rec[p, j, s]:
                            i[j][s] = _sat(
                                i[j][s] + (int(w_rec[p, j, s]) << spec["weight_shift_rec"])
                            )
                for o in range(n_out):
                    if w_out[p, o]:
                        io[o] = _sat(io[o] + (int(w_out[p, o]) << spec["weight_shift_out"]))
        for j in range(n_hid):
            i[j] = [
                i[j][0] - _dec(i[j][0], spec["dash_syn"][j]),
                i[j][1] - _dec(i[j][1], spec["dash_syn_2"][j]),
            ]
            delta = _sat(-_dec(v[j], spec["dash_mem"][j]) + i[j][0] + i[j][1])
            v[j] = _sat(v[j] + _sat(delta + spec["bias"][j]))
            n = 0
            while v[j] >= spec["threshold"][j] and n < 31:
                n, v[j] = n + 1, v[j] - spec["threshold"][j]
            prev[j] = n
        hidden.append(list(prev))
        fired = []
        for o in range(n_out):
            io[o] -= _dec(io[o], spec["dash_syn_out"][o])
            delta = _sat(-_dec(vo[o], spec["dash_mem_out"][o]) + io[o])
            vo[o] = _sat(vo[o] + _sat(delta + spec["bias_out"][o]))
            f = int(vo[o] >= spec["threshold_out"][o])
            vo[o] -= f * spec["threshold_out"][o]
            fired.append(f)
        out.append(fired)
    as_tensor = lambda rows, n: torch.tensor(rows, dtype=torch.int64).view(len(spikes), n)
    return as_tensor(out, n_out), as_tensor(hidden, n_hid)


def random_spec(g, n_in, n_hid, n_out, w=128, th=3000):
    def r(lo, hi, shape):
        return torch.randint(lo, hi + 1, shape, generator=g)

    sparse = (torch.rand(n_hid, n_hid, 2, generator=g) < 0.3).long()
    return {
        "weights_in": r(-w, w - 1, (n_in, n_hid, 2)),
        "weights_rec": r(-w, w - 1, (n_hid, n_hid, 2)) * sparse,
        "weights_out": r(-w, w - 1, (n_hid, n_out)),
        "dash_mem": r(0, 15, (n_hid,)),
        "dash_mem_out": r(0, 15, (n_out,)),
        "dash_syn": r(0, 15, (n_hid,)),
        "dash_syn_2": r(0, 15, (n_hid,)),
        "dash_syn_out": r(0, 15, (n_out,)),
        "threshold": r(0, th, (n_hid,)),
        "threshold_out": r(0, th, (n_out,)),
        "bias": r(-500, 500, (n_hid,)),
        "bias_out": r(-50, 50, (n_out,)),
        "weight_shift_in": int(r(0, 7, ())),
        "weight_shift_rec": int(r(0, 7, ())),
        "weight_shift_out": int(r(0, 7, ())),
    }


@pytest.mark.parametrize("seed", range(4))
def test_matches_scalar_reference(seed):
    g = torch.Generator().manual_seed(seed)
    spec = random_spec(g, 3, 6, 2)
    spikes = torch.randint(0, 18, (2, 25, 3), generator=g) * (
        torch.rand(2, 25, 3, generator=g) < 0.4
    )
    out, rec = xylo.simulate(spec, spikes, record=True)
    for n in range(2):
        ref_out, ref_hidden = reference(xylo.check_spec(spec), spikes[n].tolist())
        assert torch.equal(out[n], ref_out)
        assert torch.equal(rec["spikes"][n], ref_hidden)
    assert rec["spikes"].sum() > 0  # the case is not trivially silent


# --- xylosim, the C++ reference (optional) --------------------------------------------


def run_xylosim(spec, spikes):
    v2 = pytest.importorskip("xylosim.v2")
    spec = xylo.check_spec(spec)
    # XyloLayer keeps raw pointers to the XyloSynapse objects: keep the lists alive.
    keep = []

    def synapses(w):
        rows = [
            [
                v2.XyloSynapse(int(j), s, int(w[p, j, s]))
                for s in range(w.shape[2])
                for j in w[p, :, s].nonzero().flatten().tolist()
            ]
            for p in range(w.shape[0])
        ]
        keep.append(rows)
        return rows

    layer = v2.XyloLayer(
        synapses_in=synapses(spec["weights_in"]),
        synapses_rec=synapses(spec["weights_rec"]),
        synapses_out=synapses(spec["weights_out"].unsqueeze(-1)),
        aliases=[[] for _ in range(spec["weights_rec"].shape[0])],
        threshold=spec["threshold"].tolist(),
        threshold_out=spec["threshold_out"].tolist(),
        has_bias=bool(spec["bias"].any() or spec["bias_out"].any()),
        bias=spec["bias"].tolist(),
        bias_out=spec["bias_out"].tolist(),
        weight_shift_inp=spec["weight_shift_in"],
        weight_shift_rec=spec["weight_shift_rec"],
        weight_shift_out=spec["weight_shift_out"],
        dash_mem=spec["dash_mem"].tolist(),
        dash_mem_out=spec["dash_mem_out"].tolist(),
        dash_syns=torch.stack([spec["dash_syn"], spec["dash_syn_2"]], 1).tolist(),
        dash_syns_out=spec["dash_syn_out"].unsqueeze(1).tolist(),
        name="aquatic-test",
    )
    outputs, hidden = [], []
    for sequence in spikes:
        layer.reset_all()
        outputs.append(torch.tensor(layer.evolve(sequence.tolist()), dtype=torch.int64))
        hidden.append(torch.tensor(layer.rec_recurrent_spikes, dtype=torch.int64))
    del keep
    return torch.stack(outputs), torch.stack(hidden)


@pytest.mark.parametrize("seed", range(12))
def test_identical_to_xylosim(seed):
    g = torch.Generator().manual_seed(100 + seed)
    sizes = (
        torch.randint(1, 17, (1,), generator=g).item(),
        torch.randint(1, 41, (1,), generator=g).item(),
    )
    # Every other case uses full-range weights and thresholds, so states saturate.
    spec = random_spec(
        g,
        *sizes,
        n_out=torch.randint(1, 9, (1,), generator=g).item(),
        th=32767 if seed % 2 else 3000,
    )
    spec["weights_rec"] = spec["weights_rec"] * (
        torch.rand(spec["weights_rec"].shape, generator=g) < 0.5
    )
    spikes = torch.randint(0, 20, (3, 40, sizes[0]), generator=g) * (
        torch.rand(3, 40, sizes[0], generator=g) < 0.3
    )
    ref_out, ref_hidden = run_xylosim(spec, spikes)
    out, rec = xylo.simulate(spec, spikes, record=True, limits=None)
    assert torch.equal(out, ref_out)
    assert torch.equal(rec["spikes"], ref_hidden)
    assert rec["spikes"].sum() > 0


# --- Validation -----------------------------------------------------------------------


def test_rejects_what_xylo_cannot_represent():
    with pytest.raises(DoesNotFitError, match="weights_in holds 200, outside the range -128..127"):
        xylo.simulate(tiny_spec(weights_in=[[[200, 0]]]), torch.zeros(1, 1, 1, dtype=torch.long))
    with pytest.raises(DoesNotFitError, match="dash_mem holds 16"):
        xylo.check_spec(tiny_spec(dash_mem=[16]))
    with pytest.raises(DoesNotFitError, match="threshold holds -1"):
        xylo.check_spec(tiny_spec(threshold=[-1]))
    with pytest.raises(TypeError, match="weights_in must hold integers"):
        xylo.check_spec(tiny_spec(weights_in=torch.ones(1, 1, 2)))
    with pytest.raises(ValueError, match="lacks \\['threshold'\\]"):
        xylo.check_spec({k: v for k, v in tiny_spec().items() if k != "threshold"})
    with pytest.raises(ValueError, match="unknown Xylo specification keys \\['tau'\\]"):
        xylo.check_spec(tiny_spec(tau=[3]))
    with pytest.raises(ValueError, match="lacks 'dash_syn_2'"):
        xylo.check_spec(tiny_spec(weights_in=[[[1, 1]]]))
    with pytest.raises(DoesNotFitError, match="out of the 16-bit synaptic state"):
        xylo.check_spec(tiny_spec(weights_in=[[[127, 0]]], weight_shift_in=9))


def test_size_limits():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(DoesNotFitError, match="17 input channels; Xylo has at most 16"):
        xylo.check_spec(random_spec(g, 17, 4, 2))
    spec = random_spec(g, 2, 70, 2)
    spec["weights_rec"] = torch.ones(70, 70, 2, dtype=torch.long)
    with pytest.raises(DoesNotFitError, match="outgoing synapses; Xylo allows at most 64"):
        xylo.check_spec(spec)
    assert xylo.check_spec(spec, limits=None)["weights_rec"].shape == (70, 70, 2)


def test_rejects_bad_spikes():
    with pytest.raises(ValueError, match="cannot be negative"):
        xylo.simulate(tiny_spec(), -torch.ones(1, 2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="must have shape \\(N, T, 1\\)"):
        xylo.simulate(tiny_spec(), torch.zeros(2, 1, dtype=torch.long))


# --- Preset and export ----------------------------------------------------------------


def xylo_model(hidden_spikes=31):
    from aquatic import nn as ann

    qh, qo = xylo.qconfig(power_of_two=True), xylo.qconfig(power_of_two=True)
    return torch.nn.Sequential(
        ann.Linear(4, 16, bias=False, qconfig=qh),
        ann.LIFRecurrent(16, tau_mem=8.0, tau_syn=4.0, max_spikes=hidden_spikes, qconfig=qh),
        ann.Linear(16, 3, bias=False, qconfig=qo),
        ann.LIF(tau_mem=8.0, tau_syn=4.0, qconfig=qo),
    )


def trained(model, x):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = (model(x).mean() - 0.2) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_export_has_rockpools_keys_shapes_and_dtypes():
    torch.manual_seed(0)
    x = (torch.rand(4, 30, 4) < 0.3).float()
    model = trained(xylo_model(), x)
    spec = xylo.export(model)
    assert set(spec) == set(xylo.SPEC_KEYS)
    shapes = {k: (v.shape, v.dtype.name) for k, v in spec.items() if hasattr(v, "shape")}
    assert shapes["weights_in"] == ((4, 16, 2), "int8")
    assert shapes["weights_rec"] == ((16, 16, 2), "int8")
    assert shapes["weights_out"] == ((16, 3), "int8")
    assert shapes["dash_mem"] == ((16,), "uint8") and shapes["dash_syn_out"] == ((3,), "uint8")
    assert shapes["threshold"] == ((16,), "int16") and shapes["bias_out"] == ((3,), "int16")
    # tau 8 -> alpha = exp(-1/8) = 0.8825 -> dash = round(-log2(0.1175)) = round(3.09) = 3
    assert spec["dash_mem"].tolist() == [3] * 16
    # tau 4 -> 1 - exp(-1/4) = 0.2212 -> dash = round(2.18) = 2
    assert spec["dash_syn"].tolist() == [2] * 16
    # the codes are the model's values divided by the shared (power-of-two) scale
    scale = model[0].quantizers["weight"].qparams()["scale"].item()
    assert np.array_equal(
        spec["weights_in"][..., 0], (model[0].quantize_params()["weight"].T / scale).round().numpy()
    )
    assert spec["threshold"][0] == round(1.0 / scale)
    assert not spec["weights_in"][..., 1].any() and not spec["weights_rec"][..., 1].any()


def test_state_quantizer_follows_the_shared_scale():
    from aquatic.observers import RangeObserver
    from aquatic.quantizers import ScaleGroup, SharedScaleQuantizer

    group = ScaleGroup(power_of_two=True)
    weight = SharedScaleQuantizer(bits=8, group=group, power_of_two=True)
    state = xylo.SharedStateQuantizer(group=group, power_of_two=True)
    weight(torch.tensor([1.0, -0.5]))  # 1/127 rounded up: 2**-6
    # 600 would need a coarser scale at 16 bits (600 / 32767 > 2**-6): it saturates
    # instead, at 32767 * 2**-6, and the scale stays the weights'.
    out = state(torch.tensor([0.26, -1.0, 600.0, -600.0]))
    assert out.tolist() == [17 / 64, -1.0, 32767 / 64, -32768 / 64]
    assert group.scale().item() == 2**-6
    assert state.to_int(torch.tensor([600.0])).item() == 32767
    # it has no range observer of its own (nothing for aquatic.convert to miss)
    assert not any(isinstance(m, RangeObserver) for m in state.modules())
    q = xylo.qconfig()
    assert q.state.cls is xylo.SharedStateQuantizer and q.state.kwargs["bits"] == 16


def codes(value, quantizer):
    """Integer codes of values that lie on the grid of ``quantizer``'s scale."""
    steps = value / quantizer.qparams()["scale"]
    assert torch.equal(steps, torch.round(steps))  # on the grid, exactly
    return steps.long()


def test_fake_quant_model_spikes_exactly_like_simulate_on_its_export():
    torch.manual_seed(0)
    x = (torch.rand(8, 40, 4) < 0.3).float()
    model = trained(xylo_model(), x)
    hidden_layer, readout = model[1], model[3]
    hidden_layer.record_states = readout.record_states = True
    with torch.no_grad():
        hidden_spikes = model[1](model[0](x))
        output = model(x)
    out, rec = xylo.simulate(xylo.export(model), x.long(), record=True)

    # Hidden layer: every spike count, membrane and synaptic current, step by step.
    assert torch.equal(rec["spikes"], hidden_spikes.long())
    hidden = hidden_layer.recordings
    grid = hidden_layer.quantizers["v_mem"]
    assert torch.equal(rec["v_mem"], codes(hidden["v_mem"], grid))
    assert torch.equal(rec["i_syn"][..., 0], codes(hidden["i_syn"], grid))
    # Readout: Xylo delivers the hidden spikes one step late, so the chip's step t + 1 is
    # the model's step t, and the chip's first step (no input, no bias) stays at rest.
    assert torch.equal(out[:, 1:], output[:, :-1].long())
    assert not out[:, 0].any()
    grid_out = readout.quantizers["v_mem"]
    assert torch.equal(
        rec["v_mem_out"][:, 1:], codes(readout.recordings["v_mem"][:, :-1], grid_out)
    )
    assert torch.equal(
        rec["i_syn_out"][:, 1:], codes(readout.recordings["i_syn"][:, :-1], grid_out)
    )

    # Not a trivial case: spikes (several per step), and membranes where the chip's leak
    # v - max(v >> dash, 1) differs from alpha * v rounded to the nearest integer.
    assert rec["spikes"].max() > 1 and out.sum() > 0
    previous = torch.cat([torch.zeros_like(rec["v_mem"][:, :1]), rec["v_mem"][:, :-1]], 1)
    dash = torch.from_numpy(xylo.export(model)["dash_mem"]).long()
    chip = previous - torch.where(previous >> dash == 0, previous.sign(), previous >> dash)
    nearest = torch.round(previous * (1 - 2.0**-dash)).long()
    assert bool((chip != nearest).any())


def test_saturating_states_match_the_chip():
    # Input 4 x 15 events of weight 127 per step (7620 per step, all positive, so adding
    # them at once saturates as adding them one by one does) into a current with dash 4:
    # i + x passes 32767, which the chip saturates before the decay (and so does the
    # model: decay_state saturates to the state's range first), and the membranes
    # saturate too. Then silence: everything decays back from the limit.
    from aquatic import nn as ann

    qh, qo = xylo.qconfig(power_of_two=True), xylo.qconfig(power_of_two=True)
    model = torch.nn.Sequential(
        ann.Linear(4, 3, bias=False, qconfig=qh),
        ann.LIF(
            alpha_mem=1 - 2**-4,
            alpha_syn=1 - 2**-4,
            threshold=[4.0, 64.0, 500.0],
            bias=-2.0,
            max_spikes=31,
            record_states=True,
            qconfig=qh,
        ),
        ann.Linear(3, 2, bias=False, qconfig=qo),
        ann.LIF(alpha_mem=0.5, alpha_syn=0.5, threshold=[1.0, 400.0], qconfig=qo),
    )
    with torch.no_grad():
        model[0].weight.fill_(127 / 64)  # the largest int8 weight at the scale 2**-6
        model[2].weight.copy_(torch.tensor([[1.0, 0.5, 0.25], [2.0, 1.0, 0.5]]))
    x = torch.zeros(2, 40, 4)
    x[:, :20] = 15.0
    x[1, :20, 2:] = 7.0
    model(x)  # the quantizers observe the parameters (training mode)
    model.eval()
    with torch.no_grad():
        output = model(x)
    out, rec = xylo.simulate(xylo.export(model), x.long(), record=True)
    hidden = model[1].recordings
    grid = model[1].quantizers["v_mem"]
    assert torch.equal(rec["i_syn"][..., 0], codes(hidden["i_syn"], grid))
    assert torch.equal(rec["v_mem"], codes(hidden["v_mem"], grid))
    assert torch.equal(out[:, 1:], output[:, :-1].long())
    # the limits were reached, by the current before its decay and by the membranes
    i = rec["i_syn"][..., 0]
    before_decay = torch.cat([torch.zeros_like(i[:, :1]), i[:, :-1]], 1) + 7620
    assert bool((before_decay[0] > 32767).any())
    assert int(i.max()) == 32767 - (32767 >> 4)
    assert int((rec["v_mem"] + rec["spikes"] * torch.tensor([256, 4096, 32000])).max()) == 32767


def test_the_float_leak_would_not_be_exact():
    # The same trained model with alpha * v in place of the chip's integer leak (the state
    # still quantized before the spike decision) drifts from the chip: the rule matters.
    torch.manual_seed(0)
    x = (torch.rand(8, 40, 4) < 0.3).float()
    model = trained(xylo_model(), x)
    spec = xylo.export(model)
    for layer in (model[1], model[3]):
        for name in ("alpha_mem", "alpha_syn"):
            layer.quantizers[name].decay_state = None  # no rule: the layer multiplies
    with torch.no_grad():
        hidden = model[1](model[0](x))
    _, rec = xylo.simulate(spec, x.long(), record=True)
    assert not torch.equal(rec["spikes"], hidden.long())


def test_export_rejects_what_xylo_cannot_represent():
    from aquatic import nn as ann

    torch.manual_seed(0)
    x = torch.ones(1, 2, 4)
    with pytest.raises(DoesNotFitError, match="max_spikes=1; Xylo's hidden neurons emit up to 31"):
        xylo.export(trained(xylo_model(hidden_spikes=1), x))
    q = xylo.qconfig()
    conv = torch.nn.Sequential(
        ann.Conv1d(4, 4, 1, qconfig=q), ann.LIF(tau_mem=5.0, tau_syn=2.0, qconfig=q)
    )
    with pytest.raises(DoesNotFitError, match="Xylo takes input Linear -> LIF"):
        xylo.export(conv)
    model = trained(xylo_model(), x)
    old = model[0].quantizers["weight"]
    old.group.discard(old)  # a 9-bit weight quantizer in the same shared group
    model[0].quantizers["weight"] = type(old)(bits=9, group=old.group, power_of_two=True)
    model[0].quantizers["weight"](model[0].weight)
    with pytest.raises(
        DoesNotFitError, match="weights_in holds -?[0-9]+, outside the range -128..127"
    ):
        xylo.export(model)
    model = xylo_model()
    model[3] = ann.LIF(tau_mem=8.0, qconfig=xylo.qconfig())
    with pytest.raises(DoesNotFitError, match="'3' has no synaptic state"):
        xylo.export(model)


def test_dash_of():
    assert xylo.dash_of(torch.tensor([1 - 2**-15, 0.75])).tolist() == [15, 2]
    with pytest.raises(DoesNotFitError, match="not of the form 1 - 2\\*\\*-dash"):
        xylo.dash_of(torch.tensor([0.9]))
    with pytest.raises(DoesNotFitError, match="no leak"):
        xylo.dash_of(torch.tensor([1.0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_without_a_power_of_two_scale(seed):
    # Any shared scale: states are codes times a float32 scale, and the spike count
    # floor(v / threshold) of on-grid values must still be the chip's integer division.
    from aquatic import nn as ann

    torch.manual_seed(seed)
    qh, qo = xylo.qconfig(), xylo.qconfig()
    model = torch.nn.Sequential(
        ann.Linear(4, 16, bias=False, qconfig=qh),
        ann.LIFRecurrent(16, tau_mem=8.0, tau_syn=4.0, max_spikes=31, qconfig=qh),
        ann.Linear(16, 3, bias=False, qconfig=qo),
        ann.LIF(tau_mem=8.0, tau_syn=4.0, qconfig=qo),
    )
    x = (torch.rand(8, 60, 4) < 0.3).float()
    model = trained(model, x)
    scale = model[0].quantizers["weight"].qparams()["scale"].item()
    assert scale != 2.0 ** round(math.log2(scale))
    with torch.no_grad():
        hidden = model[1](model[0](x))
        output = model(x)
    chip, rec = xylo.simulate(xylo.export(model), x.long(), record=True)
    assert torch.equal(rec["spikes"], hidden.long()) and hidden.max() > 1
    assert torch.equal(chip[:, 1:], output[:, :-1].long())
