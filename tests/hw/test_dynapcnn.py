"""Tests of the DYNAP-CNN profile: IAF simulator (hand-computed traces, sinabs)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from aquatic.hw import dynapcnn
from aquatic.hw._common import DoesNotFitError


def dense(**changes):
    spec = {"weight": [[3, -2]], "bias": [1], "threshold": 4, "threshold_low": -5}
    spec.update(changes)
    return spec


def test_golden_trace_by_hand():
    # v += 3*a - 2*b + 1; spike floor(v/4) when v >= 4; subtract; v = max(v, -5)
    # t0 [1,0]: v = 4 -> 1 spike, 0 | t1 [2,0]: v = 7 -> 1, 3 | t2 [0,3]: v = -2
    # t3 [0,3]: v = -7 -> -5 | t4 [5,0]: v = -5 + 16 = 11 -> 2 spikes, 3
    spikes = torch.tensor([[1, 0], [2, 0], [0, 3], [0, 3], [5, 0]]).unsqueeze(0)
    out, rec = dynapcnn.simulate({"layers": [dense()]}, spikes, record=True)
    assert out.flatten().tolist() == [1, 1, 0, 0, 2]
    assert rec[0]["v_mem"].flatten().tolist() == [0, 3, -2, -5, 3]
    out = dynapcnn.simulate({"layers": [dense(reset="zero", max_spikes=1)]}, spikes)
    # zero reset: t1 v = 7 -> 0; t2 -5 (clamped from -5); t3 -5; t4 -5 + 16 = 11 -> 1
    assert out.flatten().tolist() == [1, 1, 0, 0, 1]


def test_convolution_layer():
    # A 2x2 kernel of ones over a 3x3 input with one event in the centre: each of the
    # four outputs sees it once; with stride 2 and padding 1 only the top-left one does.
    x = torch.zeros(1, 1, 1, 3, 3, dtype=torch.long)
    x[..., 1, 1] = 1
    conv = {"weight": torch.ones(1, 1, 2, 2, dtype=torch.int8), "threshold": 1}
    assert dynapcnn.simulate({"layers": [conv]}, x).flatten().tolist() == [1, 1, 1, 1]
    strided = dict(conv, stride=2, padding=1)
    assert dynapcnn.simulate({"layers": [strided]}, x).flatten().tolist() == [0, 0, 0, 1]


def test_overflow_and_validation():
    spec = {"layers": [dense(weight=[[127, 127]], threshold=32767, name="conv1")]}
    with pytest.raises(OverflowError, match="conv1: the membrane left the 16-bit range"):
        dynapcnn.simulate(spec, torch.full((1, 200, 2), 1))
    with pytest.raises(DoesNotFitError, match="weight holds 300"):
        dynapcnn.check_spec({"layers": [dense(weight=[[300, 0]])]})
    with pytest.raises(DoesNotFitError, match="kernels are square"):
        dynapcnn.check_spec(
            {"layers": [{"weight": torch.ones(1, 1, 2, 3, dtype=torch.long), "threshold": 1}]}
        )
    with pytest.raises(ValueError, match="reset must be one of"):
        dynapcnn.check_spec({"layers": [dense(reset="clip")]})


def sinabs_discretize():
    """sinabs' ``discretize`` module, loaded without ``sinabs.backend.dynapcnn``'s
    ``__init__`` (which imports samna, the chip driver)."""
    sinabs = pytest.importorskip("sinabs")
    path = Path(sinabs.__file__).parent / "backend" / "dynapcnn" / "discretize.py"
    if not path.exists():
        pytest.skip("this sinabs has no backend/dynapcnn/discretize.py")
    spec = importlib.util.spec_from_file_location("_sinabs_discretize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_identical_to_sinabs_after_its_discretisation():
    sl = pytest.importorskip("sinabs.layers")
    discretize = sinabs_discretize()
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
        conv.bias.copy_(torch.randn(3, generator=g) * 0.05)
    iaf = sl.IAF(spike_threshold=1.0, min_v_mem=-1.0)
    discretize.discretize_conv_spike_(conv, iaf, to_int=False)
    spikes = (torch.rand(2, 20, 2, 6, 6, generator=g) < 0.3).float()
    with torch.no_grad():
        drive = conv(spikes.flatten(0, 1)).unflatten(0, (2, 20))
        expected = iaf(drive)
    spec = {
        "layers": [
            {
                "weight": conv.weight.detach().round().long(),
                "bias": conv.bias.detach().round().long(),
                "padding": 1,
                "threshold": int(iaf.spike_threshold),
                "threshold_low": int(iaf.min_v_mem),
            }
        ]
    }
    out = dynapcnn.simulate(spec, spikes.long())
    assert torch.equal(out, expected.long())
    assert out.sum() > 0


# --- Preset and export ----------------------------------------------------------------


class TimeFolded(torch.nn.Module):
    """Conv2d -> IAF -> Flatten -> Linear -> IAF on (N, T, C, H, W) inputs."""

    def __init__(self, qconfig):
        super().__init__()
        from aquatic import nn as ann

        self.conv = ann.Conv2d(2, 3, 3, padding=1, qconfig=qconfig)
        self.iaf1 = ann.IAF(threshold=1.0, max_spikes=3, min_v_mem=-1.0, qconfig=qconfig)
        self.flat = torch.nn.Flatten()
        self.fc = ann.Linear(3 * 5 * 5, 4, qconfig=qconfig)
        self.iaf2 = ann.IAF(threshold=0.25, qconfig=qconfig)

    def forward(self, x):
        n, t = x.shape[:2]
        h = self.iaf1(self.conv(x.flatten(0, 1)).unflatten(0, (n, t)))
        return self.iaf2(self.fc(self.flat(h.flatten(0, 1))).unflatten(0, (n, t)))


def test_trained_model_spikes_exactly_like_its_export():
    torch.manual_seed(0)
    model = TimeFolded(dynapcnn.qconfig())
    x = (torch.rand(4, 12, 2, 5, 5) < 0.4).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        loss = (model(x).mean() - 0.3) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    spec = dynapcnn.export(model, input_shape=(2, 5, 5))
    assert [layer["name"] for layer in spec["layers"]] == ["conv", "fc"]
    assert spec["layers"][0]["weight"].abs().max() <= 127
    out, rec = dynapcnn.simulate(spec, x.long(), record=True)
    assert torch.equal(out, expected.long())
    assert rec[0]["spikes"].sum() > 0 and out.sum() > 0  # both layers are live


def test_export_rejects_what_dynapcnn_lacks():
    from aquatic import nn as ann

    q = dynapcnn.qconfig()
    with pytest.raises(
        DoesNotFitError, match="'1' is a LIF; DYNAP-CNN neurons are integrate-and-fire"
    ):
        dynapcnn.export(
            torch.nn.Sequential(ann.Linear(2, 2, qconfig=q), ann.LIF(tau_mem=5.0, qconfig=q))
        )
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), ann.IAF())
    with pytest.raises(DoesNotFitError, match="'0' \\(Linear\\) has no weight quantizer"):
        dynapcnn.export(plain)
    nine_bits = ann.Linear(2, 2, qconfig=q._replace(weight=q.weight.with_args(bits=9)))
    nine_bits(torch.ones(1, 2))
    with pytest.raises(
        DoesNotFitError,
        match="0.weight holds 1[0-9]+, outside the range -128..127 \\(8-bit weights\\)",
    ):
        model = torch.nn.Sequential(nine_bits, ann.IAF(threshold=1.0))
        with torch.no_grad():
            nine_bits.weight.fill_(1.0)
            nine_bits.quantizers["weight"](nine_bits.weight)
        model[1].threshold.fill_(1.0)
        dynapcnn.export(model)


def test_export_detects_accumulator_overflow():
    from aquatic import nn as ann

    q = dynapcnn.qconfig()
    lin = ann.Linear(600, 1, bias=False, qconfig=q)
    iaf = ann.IAF(threshold=1.0, qconfig=q)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin(torch.ones(1, 600))
        iaf(torch.zeros(1, 1, 1))
    # 600 inputs of code 127 can add 76200 > 32767 in one step
    with pytest.raises(
        OverflowError, match="layer '0': the 16-bit membrane accumulator can overflow"
    ):
        dynapcnn.export(torch.nn.Sequential(lin, iaf))


# --- Pooling --------------------------------------------------------------------------


def test_sum_pooling_between_cores_by_hand():
    # Core 0: a 1x1 identity convolution, threshold 1, then 2x2 sum pooling; core 1 (dense)
    # sees the four window sums of a 4x4 spike map.
    x = torch.zeros(1, 1, 1, 4, 4, dtype=torch.long)
    x[..., 0, 0] = x[..., 0, 1] = x[..., 1, 1] = x[..., 3, 2] = 1
    identity = {"weight": torch.ones(1, 1, 1, 1, dtype=torch.long), "threshold": 1, "pool": 2}
    dense_sum = {"weight": torch.eye(4, dtype=torch.long), "threshold": 1, "max_spikes": 9}
    out, rec = dynapcnn.simulate({"layers": [identity, dense_sum]}, x, record=True)
    assert rec[0]["spikes"].shape == (1, 1, 1, 4, 4)  # the neurons' own spikes
    assert out.flatten().tolist() == [3, 0, 0, 1]
    with pytest.raises(DoesNotFitError, match="pool=3: DYNAP-CNN sum-pools over \\(1, 2, 4\\)"):
        dynapcnn.check_spec({"layers": [dict(identity, pool=3)]})
    with pytest.raises(DoesNotFitError, match="only convolutional layers pool"):
        dynapcnn.check_spec({"layers": [dict(dense_sum, pool=2)]})


def conv_snn(q, pool):
    from aquatic import nn as ann

    return torch.nn.Sequential(
        ann.Conv2d(2, 4, 3, padding=1, qconfig=q),
        ann.IAF(threshold=1.0, max_spikes=2, min_v_mem=-1.0, qconfig=q),
        pool,
        ann.Conv2d(4, 4, 3, padding=1, bias=False, qconfig=q),
        ann.IAF(threshold=1.0, qconfig=q),
        torch.nn.Flatten(start_dim=2),
        ann.Linear(4 * 3 * 3, 3, qconfig=q),
        ann.IAF(threshold=0.5, qconfig=q),
    )


def trained_conv_snn(pool, seed=0):
    torch.manual_seed(seed)
    model = conv_snn(dynapcnn.qconfig(), pool)
    x = (torch.rand(4, 10, 2, 6, 6) < 0.4).float()
    y = torch.arange(4) % 3
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x).sum(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x


@pytest.mark.parametrize("kind", ["sum", "avg"])
def test_conv_snn_with_pooling_spikes_exactly_like_its_export(kind):
    from aquatic import nn as ann

    pool = ann.SumPool2d(2) if kind == "sum" else ann.AvgPool2d(2)
    model, x = trained_conv_snn(pool)
    with torch.no_grad():
        expected = model(x)
    spec = dynapcnn.export(model, input_shape=(2, 6, 6), max_input_spikes=1)
    first, second = spec["layers"][:2]
    assert [layer["name"] for layer in spec["layers"]] == ["0", "3", "6"]
    assert first["pool"] == 2 and second["pool"] == 1
    one = int(model[4].spec().threshold / model[0].quantizers["weight"].grid().scale)
    assert second["threshold"] == (one if kind == "sum" else 4 * one)
    out, rec = dynapcnn.simulate(spec, x.long(), record=True)
    assert torch.equal(out, expected.long())
    assert rec[0]["spikes"].sum() > 0 and rec[1]["spikes"].sum() > 0 and out.sum() > 0


def test_pooling_export_names_what_does_not_fit():
    from aquatic import nn as ann

    q = dynapcnn.qconfig()
    cases = [
        (ann.SumPool2d(3), "'2' pools over 3x3 windows; DYNAP-CNN pools over 1x1, 2x2, 4x4"),
        (ann.SumPool2d(2, stride=1), "'2' \\(SumPool2d\\): DYNAP-CNN pools non-overlapping"),
        (ann.AvgPool2d(2, padding=1), "'2' \\(AvgPool2d\\): DYNAP-CNN pools without padding"),
        (torch.nn.MaxPool2d(2), "layer '2' is a MaxPool2d; DYNAP-CNN cores take Conv2d"),
        (torch.nn.LPPool2d(2, 2), "norm_type=2; DYNAP-CNN sum-pools"),
    ]
    for pool, message in cases:
        model = conv_snn(q, pool)
        with pytest.raises(DoesNotFitError, match=message):
            dynapcnn.export(model)
    model, _ = trained_conv_snn(ann.SumPool2d(2))
    tail = torch.nn.Sequential(*list(model)[:5], ann.AvgPool2d(2))
    with pytest.raises(DoesNotFitError, match="'5' averages the last core's spikes"):
        dynapcnn.export(tail)
    dense_pool = torch.nn.Sequential(*list(model)[5:], ann.SumPool2d(2))
    with pytest.raises(DoesNotFitError, match="pools the output of the dense layer '1'"):
        dynapcnn.export(dense_pool)
    with torch.no_grad():
        model[4].threshold.fill_(200.0)  # times 4 after average pooling: beyond 16 bits
    model[2] = ann.AvgPool2d(2)
    with pytest.raises(DoesNotFitError, match="area 4, .* 4.threshold then reaches"):
        dynapcnn.export(model)
