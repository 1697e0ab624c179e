import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import aquatic
from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver
from aquatic.qconfig import QConfig
from aquatic.quantizers import LSQPlusQuantizer, LSQQuantizer, PACTQuantizer, UniformQuantizer


def _batches(n=4, shape=(16, 6), seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Batch i has values up to about i + 1: the range must cover every batch.
    return [torch.randn(*shape, generator=gen) * (i + 1) for i in range(n)]


def _model(qconfig=aquatic.qconfig.int8):
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    return aquatic.quantize(float_model, qconfig, quantize_output=True)


ACT_MINMAX = QConfig(
    activation=UniformQuantizer.with_args(bits=8, signed=True, observer=MinMaxObserver),
    weight=UniformQuantizer.with_args(bits=8),
)


def test_ranges_cover_every_batch_and_freeze():
    model = _model(ACT_MINMAX)
    batches = _batches()
    aquatic.calibrate(model, batches, progress=False)
    with torch.no_grad():
        first = model[0]
        outs = [first.to_float()(x) for x in batches]  # quantized weight, no activation
    observer = first.quantizers["activation"].observer
    assert observer.max_val == max(o.max() for o in outs)
    assert observer.min_val == min(o.min() for o in outs)
    assert all(not q.observer_enabled for q in aquatic.ptq.calibration.quantizers_of(model))
    before = observer.max_val.clone()
    model.train()
    model(batches[-1] * 100)
    assert torch.equal(observer.max_val, before)  # frozen, even in training


def test_modes_restored_and_dropout_off():
    model = _model(ACT_MINMAX)
    model.train()
    model[1].eval()
    aquatic.calibrate(model, _batches(), progress=False)
    assert model.training and not model[1].training and model[0].training
    assert model[0].quantizers["activation"].training


def test_idempotent_with_moving_average():
    model = _model()  # int8: moving-average activation ranges, dropout in the model
    batches = _batches()
    aquatic.calibrate(model, batches, progress=False)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    assert aquatic.calibrate(model, batches, progress=False) is model
    second = model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_data_forms_and_num_batches():
    batches = _batches()
    labels = [torch.zeros(len(x), dtype=torch.long) for x in batches]
    a, b, c = _model(ACT_MINMAX), _model(ACT_MINMAX), _model(ACT_MINMAX)
    aquatic.calibrate(a, batches[:2], progress=False)
    aquatic.calibrate(b, list(zip(batches, labels)), num_batches=2, progress=False)
    loader = DataLoader(TensorDataset(torch.cat(batches[:2]), torch.cat(labels[:2])), batch_size=16)
    aquatic.calibrate(c, loader, progress=False)
    for other in (b, c):
        assert torch.equal(
            a[3].quantizers["activation"].observer.max_val,
            other[3].quantizers["activation"].observer.max_val,
        )


def test_bad_input():
    model = _model()
    with pytest.raises(ValueError, match="no batches"):
        aquatic.calibrate(model, [], progress=False)
    with pytest.raises(ValueError, match="num_batches"):
        aquatic.calibrate(model, _batches(), num_batches=0, progress=False)
    with pytest.raises(TypeError, match="single tensor"):
        aquatic.calibrate(model, torch.randn(4, 6), progress=False)
    with pytest.raises(TypeError, match="iterable"):
        aquatic.calibrate(model, 3, progress=False)
    with pytest.raises(ValueError, match="no aquatic quantizers"):
        aquatic.calibrate(nn.Linear(6, 2), _batches(), progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        aquatic.calibrate("model", _batches(), progress=False)


def test_progress_bar_optional(monkeypatch, capsys):
    model = _model()
    aquatic.calibrate(model, _batches(), progress=True)
    assert "calibrate" in capsys.readouterr().err  # tqdm's bar, on stderr
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    aquatic.calibrate(model, _batches(), progress=True)
    assert capsys.readouterr().err == ""


def test_spiking_threshold_and_state_ranges():
    qconfig = QConfig(
        threshold=UniformQuantizer.with_args(bits=8),
        state=UniformQuantizer.with_args(bits=8),
        weight=UniformQuantizer.with_args(bits=8),
    )
    model = nn.Sequential(
        aquatic.nn.Linear(6, 5, qconfig=qconfig), aquatic.nn.LIF(tau_mem=4.0, qconfig=qconfig)
    )
    gen = torch.Generator().manual_seed(1)
    batches = [torch.rand(3, 10, 6, generator=gen) * (i + 1) for i in range(3)]
    aquatic.calibrate(model, batches, progress=False)
    lif = model[1]
    assert set(lif.quantizers) >= {"threshold", "v_mem"}
    for name in ("threshold", "v_mem"):
        q = lif.quantizers[name]
        assert q.observed and not q.observer_enabled
    # The state range comes from every batch: more than the first batch alone gives.
    first_only = nn.Sequential(
        aquatic.nn.Linear(6, 5, qconfig=qconfig), aquatic.nn.LIF(tau_mem=4.0, qconfig=qconfig)
    )
    first_only.load_state_dict(
        {k: v for k, v in model.state_dict().items() if "quantizers" not in k}, strict=False
    )
    aquatic.calibrate(first_only, batches[:1], progress=False)
    assert (
        lif.quantizers["v_mem"].observer.max_val
        > first_only[1].quantizers["v_mem"].observer.max_val
    )
    before = lif.quantizers["v_mem"].observer.max_val.clone()
    assert aquatic.calibrate(model, batches, progress=False) is model  # and again: same ranges
    assert torch.equal(lif.quantizers["v_mem"].observer.max_val, before)


@pytest.mark.parametrize(
    "factory, symmetric",
    [
        (LSQQuantizer.with_args(bits=4), True),
        (LSQQuantizer.with_args(bits=4, ch_axis=1), True),
        (LSQPlusQuantizer.with_args(bits=4), False),
    ],
)
def test_learned_scales_start_from_calibration(factory, symmetric):
    model = aquatic.quantize(
        nn.Sequential(nn.Linear(6, 8)), QConfig(activation=factory), quantize_output=True
    )
    batches = _batches()
    aquatic.calibrate(model, batches, progress=False)
    q = model[0].quantizers["activation"]
    reference = MSEObserver(
        quant_min=q.quant_min, quant_max=q.quant_max, symmetric=symmetric, ch_axis=q.ch_axis
    )
    with torch.no_grad():
        for x in batches:
            reference(model[0].to_float(baked=False)(x))
    scale, zero_point = reference.calculate_qparams()
    assert q.initialized and torch.equal(q.scale.detach(), scale)
    if symmetric:
        # not what LSQ's own first-batch initialisation (2 mean|x| / sqrt(Q_P)) gives
        fresh = factory()
        fresh(model[0].to_float(baked=False)(batches[0]).detach())
        assert not torch.allclose(fresh.scale, q.scale)
    else:
        assert torch.equal(q.zero_point.detach(), zero_point.float())


def test_pact_alpha_from_calibration():
    model = aquatic.quantize(
        nn.Sequential(nn.Linear(6, 8)),
        QConfig(activation=PACTQuantizer.with_args(bits=3)),
        quantize_output=True,
    )
    batches = _batches()
    aquatic.calibrate(model, batches, progress=False)
    q = model[0].quantizers["activation"]
    assert q.alpha.item() != 10.0  # PACT's default start
    with torch.no_grad():
        top = max(model[0].to_float(baked=False)(x).max() for x in batches)
    assert 0 < q.alpha.item() <= top
