import pytest
import torch
from torch import nn

import aquatic
from aquatic.ptq import SensitivityTable
from aquatic.qconfig import QConfig
from aquatic.quantizers import UniformQuantizer


def _mlp(fragile=None, width=16, depth=4, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    if fragile is not None:
        # One huge weight per output row, on an input that is always 0 (a dead unit
        # before it): harmless in float, but it sets the row's scale, and on a coarse
        # grid every other weight of the row rounds to 0.
        with torch.no_grad():
            model[fragile - 2].bias[0] = -100.0
            model[fragile].weight[:, 0] = 40.0
    return model


def _batches(n=3, width=16, seed=1, labels=False):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(32, width, generator=gen) for _ in range(n)]
    if labels:
        return [(x, torch.randint(0, width, (32,), generator=gen)) for x in xs]
    return xs


def test_fragile_layer_ranks_first():
    model = _mlp(fragile=4)
    table = aquatic.sensitivity(model, (2, 4), _batches(), progress=False)
    assert isinstance(table, SensitivityTable) and len(table) == 4 * 2
    assert table.ranked()[0].layer == "4"
    by_layer = table.as_dict()
    assert all(by_layer["4"][4] > by_layer[other][4] for other in ("0", "2", "6"))
    assert all(r.change >= 0 for r in table)  # MSE against the float output


def test_more_bits_hurt_less():
    table = aquatic.sensitivity(_mlp(), (2, 8), _batches(), progress=False).as_dict()
    assert all(row[2] > row[8] for row in table.values())


def test_model_left_unchanged():
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    aquatic.sensitivity(model, 4, _batches(), progress=False)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, aquatic.nn.Linear) for m in model.modules())


class Wrapped(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 1.0


def test_cached_replay_equals_full_runs():
    model = _mlp(fragile=2)
    fast = aquatic.sensitivity(model, (3, 8), _batches(), progress=False)
    slow = aquatic.sensitivity(Wrapped(model), (3, 8), _batches(), progress=False)
    assert [r.layer for r in slow] == ["inner." + r.layer for r in fast]
    for a, b in zip(fast, slow):
        assert a.candidate == b.candidate
        assert a.change == pytest.approx(b.change, rel=1e-5, abs=1e-9)


def test_metric_on_targets():
    model = _mlp(fragile=4)
    loss = nn.functional.mse_loss
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # regression targets near the float model's outputs
        data = [(x, model(x) + 0.1 * torch.randn(32, 16, generator=gen)) for x in _batches()]
    table = aquatic.sensitivity(model, [2], data, metric=loss, progress=False)
    assert table.metric == "mse_loss"
    assert table.baseline > 0
    assert table.ranked()[0].layer == "4"
    with pytest.raises(ValueError, match="targets"):
        aquatic.sensitivity(model, [2], _batches(), metric=loss, progress=False)


def test_qconfig_candidates_and_table_text():
    qconfigs = {
        "w8": QConfig(weight=UniformQuantizer.with_args(bits=8)),
        "w8a4": QConfig(
            weight=UniformQuantizer.with_args(bits=8), activation=UniformQuantizer.with_args(bits=4)
        ),
    }
    table = aquatic.sensitivity(_mlp(depth=2), qconfigs, _batches(), progress=False)
    assert {r.candidate for r in table} == {"w8", "w8a4"}
    text = str(table).splitlines()
    assert text[0].split() == ["layer", "candidate", "change", "in", "output", "MSE"]
    top = table.ranked()[0]
    assert text[2].split()[:2] == [top.layer, top.candidate]
    assert table.as_dict()["0"]["w8a4"] > table.as_dict()["0"]["w8"]


def test_plot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    table = aquatic.sensitivity(_mlp(depth=2), (2, 4), _batches(), progress=False)
    ax = table.plot()
    assert len(ax.patches) == 4 and ax.get_ylabel() == "change in output MSE"


def test_bad_input():
    model = _mlp(depth=2)
    with pytest.raises(TypeError, match="unknown candidate 'int8'"):
        aquatic.sensitivity(model, ["int8"], _batches(), progress=False)
    with pytest.raises(ValueError, match="unknown candidate 17"):
        aquatic.sensitivity(model, (4, 17), _batches(), progress=False)
    with pytest.raises(ValueError, match="no batches"):
        aquatic.sensitivity(model, (4,), [], progress=False)
    with pytest.raises(ValueError, match="no layers to quantize"):
        aquatic.sensitivity(nn.Sequential(nn.ReLU()), (4,), _batches(), progress=False)
    with pytest.raises(ValueError, match="no candidates"):
        aquatic.sensitivity(model, (), _batches(), progress=False)


class SpikeCount(nn.Module):
    def forward(self, x):
        return x.sum(dim=1)


def test_spiking_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16),
        aquatic.nn.LIF(tau_mem=4.0, threshold=0.5),
        nn.Linear(16, 4),
        aquatic.nn.LIF(tau_mem=4.0, threshold=0.5),
        SpikeCount(),
    )
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 12, 8, generator=gen) for _ in range(2)]
    table = aquatic.sensitivity(model, (2, 8), batches, progress=False).as_dict()
    assert set(table) == {"0", "2"}
    assert all(row[2] > row[8] for row in table.values())  # spike counts change at 2 bits
    mapping = aquatic.mixed_precision(model, batches, budget=80, candidates=(2, 8), progress=False)
    assert mapping.cost <= 80
    qmodel = aquatic.calibrate(aquatic.quantize(model, mapping), batches, progress=False)
    assert qmodel(batches[0]).shape == (4, 4)


def test_bias_correction_judges_the_corrected_layer():
    # The last layer's output error is its own: removing its mean shift on the very
    # batches the error is measured on can only lower the mean squared error.
    model, batches = _mlp(depth=2), _batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = aquatic.sensitivity(model, 2, batches, progress=False).as_dict()
    corrected = aquatic.sensitivity(model, 2, batches, progress=False, bias_correction=True)
    corrected = corrected.as_dict()
    assert corrected["2"][2] < plain["2"][2]
    assert corrected["0"][2] != plain["0"][2]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
