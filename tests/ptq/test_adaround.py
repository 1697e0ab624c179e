import warnings

import pytest
import torch
from torch import nn

import aquatic
from aquatic.functional.adaround import (
    annealed_beta,
    initial_logits,
    rectified_sigmoid,
    rounding_regularizer,
)
from aquatic.ptq import adaround, weight_qconfig
from aquatic.qconfig import QConfig
from aquatic.quantizers import UniformQuantizer

PER_TENSOR_ASYM = QConfig(weight=UniformQuantizer.with_args(bits=3, symmetric=False))


def _correlated(n, features, seed):
    # Inputs with strongly correlated features: the errors of neighbouring weights add
    # up in the output, which is what learned rounding can cancel and nearest cannot.
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=gen) / features**0.5
    return [torch.randn(32, features, generator=gen) @ mixing + 0.5 for _ in range(n)]


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))


def _output_mse(qmodel, float_model, batches):
    with torch.no_grad():
        return sum(float(((qmodel(x) - float_model(x)) ** 2).mean()) for x in batches)


def _calibrated(model, qconfig, batches):
    return aquatic.calibrate(aquatic.quantize(model, qconfig), batches, progress=False)


def test_learned_rounding_beats_nearest_on_the_layer_output():
    model = nn.Sequential(nn.Linear(12, 16))
    torch.manual_seed(1)
    calib = _correlated(4, 12, seed=0)
    nearest = _calibrated(model, weight_qconfig(3), calib)
    learned = _calibrated(model, weight_qconfig(3), calib)
    report = adaround(learned, calib, iters=300, progress=False)
    (record,) = report
    assert record.rounded and record.note == ""
    assert record.learned_mse < 0.8 * record.nearest_mse
    assert 0 < record.flipped < 0.5
    # Measured here, independently of the report, on the calibration data.
    assert _output_mse(learned, model, calib) < 0.8 * _output_mse(nearest, model, calib)
    assert _output_mse(nearest, model, calib) == pytest.approx(record.nearest_mse * 4, rel=1e-4)


def test_rounded_weights_lie_on_the_grid_one_step_from_the_float_weight():
    model = _mlp()
    calib = _correlated(3, 12, seed=2)
    float_weights = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    qmodel = _calibrated(model, weight_qconfig(2), calib)
    adaround(qmodel, calib, iters=100, progress=False)
    for layer, w in zip((qmodel[0], qmodel[2]), float_weights):
        quantizer = layer.quantizers["weight"]
        assert torch.equal(quantizer(layer.weight), layer.weight)  # the quantizer keeps it
        grid = quantizer.grid()
        scale, _ = grid.along(w)
        codes = grid.codes(layer.weight)  # raises if off the grid
        steps = (w / scale).clamp(grid.quant_min, grid.quant_max)
        assert ((codes - steps).abs() < 1 + 1e-5).all()  # rounded down or up, not further
    # The float model is untouched (quantize copies it).
    assert torch.equal(model[0].weight, float_weights[0])


@pytest.mark.parametrize("qconfig", [weight_qconfig(3), PER_TENSOR_ASYM], ids=["channel", "tensor"])
def test_conv_per_channel_and_per_tensor_with_zero_point(qconfig):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3))
    gen = torch.Generator().manual_seed(4)
    calib = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(3)]
    qmodel = _calibrated(model, qconfig, calib)
    nearest_codes = qmodel[0].quantizers["weight"].to_int(qmodel[0].weight)
    report = adaround(qmodel, calib, iters=150, batch_size=5, progress=False)
    assert [r.layer for r in report] == ["0", "2"]
    assert all(r.learned_mse <= r.nearest_mse for r in report)
    assert any(r.rounded for r in report)
    for layer, record in zip((qmodel[0], qmodel[2]), report):
        quantizer = layer.quantizers["weight"]
        # Rounded: moved onto the grid; nearest kept: left as it was.
        assert torch.equal(quantizer(layer.weight), layer.weight) == record.rounded
    if report[0].rounded:
        codes = qmodel[0].quantizers["weight"].to_int(qmodel[0].weight)
        changed = (codes != nearest_codes).float().mean().item()
        assert changed == pytest.approx(report[0].flipped)


def test_same_seed_same_rounding():
    model = _mlp(seed=5)
    calib = _correlated(3, 12, seed=6)
    runs = []
    for _ in range(2):
        qmodel = _calibrated(model, weight_qconfig(3), calib)
        adaround(qmodel, calib, iters=80, batch_size=16, seed=7, progress=False)
        runs.append(qmodel)
    assert torch.equal(runs[0][0].weight, runs[1][0].weight)
    assert torch.equal(runs[0][2].weight, runs[1][2].weight)


def test_calibrate_with_adaround_is_calibrate_then_adaround():
    model = _mlp(seed=8)
    calib = _correlated(2, 12, seed=9)
    one_call = aquatic.calibrate(
        aquatic.quantize(model, weight_qconfig(3)),
        calib,
        progress=False,
        rounding="adaround",
        rounding_iters=60,
    )
    two_calls = _calibrated(model, weight_qconfig(3), calib)
    adaround(two_calls, calib, iters=60, progress=False)
    assert torch.equal(one_call[0].weight, two_calls[0].weight)
    assert not torch.equal(one_call[0].weight, model[0].weight)


def test_unsupported_layers_are_recorded_and_named_in_a_warning():
    torch.manual_seed(10)
    model = nn.Sequential(nn.ConvTranspose1d(2, 3, 3), nn.ReLU(), nn.Conv1d(3, 2, 3))
    gen = torch.Generator().manual_seed(11)
    calib = [torch.randn(4, 2, 9, generator=gen) for _ in range(2)]
    qmodel = _calibrated(model, weight_qconfig(3), calib)
    before = qmodel[0].weight.detach().clone()
    with pytest.warns(UserWarning, match=r"0 \(ConvTranspose1d is not supported"):
        report = adaround(qmodel, calib, iters=30, progress=False)
    assert [(r.layer, r.rounded) for r in report][0] == ("0", False)
    assert report.skipped[0].note.startswith("ConvTranspose1d is not supported")
    assert torch.equal(qmodel[0].weight, before)
    assert "ConvTranspose1d" in str(report)


def test_binary_weights_are_recorded_without_a_warning():
    model = _mlp(seed=12)
    calib = _correlated(2, 12, seed=13)
    qmodel = _calibrated(model, {"0": weight_qconfig(1), "2": weight_qconfig(3)}, calib)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = adaround(qmodel, calib, iters=30, progress=False)
    assert not report[0].rounded and "does not round" in report[0].note
    assert report[1].note in ("",) or "nearest kept" in report[1].note


def test_bad_input_is_refused_with_the_fix():
    model = _mlp()
    calib = _correlated(1, 12, seed=0)
    qmodel = _calibrated(model, weight_qconfig(3), calib)
    for kwargs, match in [
        ({"iters": 0}, "iters must be a positive int"),
        ({"batch_size": 2.5}, "batch_size must be a positive int"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"weight": float("nan")}, "weight must be a number >= 0"),
        ({"seed": "1"}, "seed must be an int"),
    ]:
        with pytest.raises(ValueError, match=match):
            adaround(qmodel, calib, progress=False, **kwargs)
    with pytest.raises(ValueError, match="no layer with a weight quantizer"):
        adaround(model, calib, progress=False)
    with pytest.raises(ValueError, match="calibrate the model first"):
        adaround(aquatic.quantize(model, weight_qconfig(3)), calib, progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        adaround("model", calib)
    with pytest.raises(TypeError, match="single tensor"):
        adaround(qmodel, calib[0])
    with pytest.raises(ValueError, match="unknown rounding 'up'"):
        aquatic.calibrate(qmodel, calib, rounding="up")
    with pytest.raises(ValueError, match="rounding_iters must be a positive int"):
        aquatic.calibrate(qmodel, calib, rounding="adaround", rounding_iters=0)


def test_inputs_with_a_time_axis_are_rows():
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(6, 4))
    gen = torch.Generator().manual_seed(15)
    calib = [torch.randn(3, 5, 6, generator=gen) for _ in range(2)]  # (N, T, features)
    qmodel = _calibrated(model, weight_qconfig(2), calib)
    (record,) = adaround(qmodel, calib, iters=50, progress=False)
    assert record.learned_mse <= record.nearest_mse


def test_mixed_precision_judges_allocations_after_learned_rounding():
    model = _mlp(seed=16)
    calib = _correlated(3, 12, seed=17)
    before = [p.detach().clone() for p in model.parameters()]
    options = dict(candidates=(2, 8), budget=200, progress=False)
    nearest = aquatic.mixed_precision(model, calib, **options)
    learned = aquatic.mixed_precision(
        model, calib, rounding="adaround", rounding_iters=100, **options
    )
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    two_bit = [nearest.table.as_dict()[n][2] for n in ("0", "2")]
    two_bit_learned = [learned.table.as_dict()[n][2] for n in ("0", "2")]
    assert sum(two_bit_learned) < sum(two_bit)
    assert learned.cost <= 200


def test_rounding_functions():
    v = torch.linspace(-8, 8, 101)
    h = rectified_sigmoid(v)
    assert h.min() == 0 and h.max() == 1 and (h.diff() >= 0).all()
    rest = torch.rand(50, generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01
    assert torch.allclose(rectified_sigmoid(initial_logits(rest)), rest, atol=1e-5)
    assert rounding_regularizer(torch.zeros(3), beta=20.0) == pytest.approx(3.0)
    betas = [annealed_beta(k, 50) for k in range(51)]
    assert betas[0] == 20.0 and betas[-1] == 2.0
    assert all(a >= b for a, b in zip(betas, betas[1:]))


def test_bias_correction_after_learned_rounding_measures_against_the_float_weights():
    model = _mlp(seed=18)
    calib = _correlated(3, 12, seed=19)
    options = dict(progress=False, rounding="adaround", rounding_iters=60)
    plain = aquatic.calibrate(aquatic.quantize(model, weight_qconfig(2)), calib, **options)
    corrected = aquatic.calibrate(
        aquatic.quantize(model, weight_qconfig(2)), calib, bias_correction=True, **options
    )
    assert torch.equal(plain[0].weight, corrected[0].weight)
    assert not torch.equal(plain[0].bias, corrected[0].bias)  # a shift was measured
    # By hand, without the float weights, there is nothing left to measure: a warning.
    with pytest.warns(UserWarning, match="lie on their grid already"):
        aquatic.ptq.correct_bias(plain, calib)
