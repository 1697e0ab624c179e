"""Calibration, bias correction, learned rounding, sensitivity and mixed precision on a
CUDA device."""

import pytest
import torch
from torch import nn

import aquatic
from aquatic.observers import HistogramObserver, MSEObserver, PercentileObserver
from aquatic.qconfig import QConfig
from aquatic.quantizers import LSQQuantizer, UniformQuantizer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("observer", [PercentileObserver, MSEObserver, HistogramObserver])
def test_estimators_match_cpu(observer):
    x = torch.randn(4, 300) * 3
    cpu, gpu = observer(ch_axis=0), observer(ch_axis=0).cuda()
    cpu(x)
    gpu(x.cuda())
    assert torch.allclose(gpu.max_val.cpu(), cpu.max_val, rtol=1e-5)
    assert torch.allclose(gpu.min_val.cpu(), cpu.min_val, rtol=1e-5)


def test_ptq_road_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).cuda()
    batches = [torch.randn(32, 8) for _ in range(3)]  # moved to the model's device
    qconfig = QConfig(
        weight=UniformQuantizer.with_args(bits=4, ch_axis=0, observer=MSEObserver),
        activation=LSQQuantizer.with_args(bits=8),
    )
    qmodel = aquatic.calibrate(
        aquatic.quantize(model, qconfig), batches, progress=False, bias_correction=True
    )
    assert qmodel[0].quantizers["activation"].scale.device.type == "cuda"
    table = aquatic.sensitivity(model, (2, 8), batches, progress=False)
    assert len(table) == 4
    mapping = aquatic.mixed_precision(model, batches, budget=200, progress=False)
    assert mapping.cost <= 200


def test_learned_rounding_on_cuda():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)).cuda()
    mixing = torch.randn(3, 3)
    batches = [torch.einsum("ij,njt->nit", mixing, torch.randn(16, 3, 8)) for _ in range(3)]
    qmodel = aquatic.quantize(model, aquatic.ptq.weight_qconfig(3))
    qmodel = aquatic.calibrate(qmodel, batches, progress=False)
    report = aquatic.ptq.adaround(qmodel, batches, iters=50, progress=False)
    assert [r.layer for r in report] == ["0", "3"]
    for record, layer in zip(report, (qmodel[0], qmodel[3])):
        assert layer.weight.device.type == "cuda"
        assert record.learned_mse <= record.nearest_mse
        weight = layer.weight
        assert torch.equal(layer.quantizers["weight"](weight), weight) == record.rounded
