import torch
from torch import nn

import aquatic
from aquatic.qconfig import QConfig
from aquatic.quantizers import UniformQuantizer

W4 = QConfig(weight=UniformQuantizer.with_args(bits=4, narrow_range=True))


def _biased_model():
    # Every weight 0.3 next to a 1.0: on the 4-bit grid of step 1/7 each 0.3 rounds to
    # 2/7, the same way, so on positive inputs the output mean drops by a fixed amount.
    layer = nn.Linear(16, 4)
    with torch.no_grad():
        layer.weight.fill_(0.3)
        layer.weight[:, 0] = 1.0
        layer.bias.zero_()
    return nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 2))


def _batches(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(32, 16, generator=gen) + 0.5 for _ in range(n)]


def _mean_error(qmodel, float_model, batches):
    with torch.no_grad():
        errors = [(qmodel[0](x) - float_model[0](x)).mean(dim=0) for x in batches]
    return torch.stack(errors).mean(dim=0).abs().max().item()


def test_bias_correction_reduces_output_mean_error():
    float_model = _biased_model()
    plain = aquatic.calibrate(aquatic.quantize(float_model, W4), _batches(4, 0), progress=False)
    corrected = aquatic.calibrate(
        aquatic.quantize(float_model, W4), _batches(4, 0), progress=False, bias_correction=True
    )
    held_out = _batches(4, 1)
    before = _mean_error(plain, float_model, held_out)
    after = _mean_error(corrected, float_model, held_out)
    assert before > 0.1
    assert after < 0.05 * before
    # Only biases moved; the weights (and their quantized values) are the float ones.
    assert torch.equal(corrected[0].weight, float_model[0].weight)
    assert not torch.equal(corrected[0].bias, float_model[0].bias)


def test_layers_without_bias_or_weight_quantizer_are_left_alone():
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(16, 4, bias=False), nn.Linear(4, 2))
    mapping = {"0": W4, "1": QConfig(activation=UniformQuantizer.with_args(bits=8))}
    model = aquatic.quantize(float_model, mapping)
    aquatic.calibrate(model, _batches(2, 0), progress=False, bias_correction=True)
    assert model[0].bias is None
    assert torch.equal(model[1].bias, float_model[1].bias)


def test_conv_bias_correction_per_channel():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight.fill_(0.3)
        conv.weight[:, 0, 0, 0] = 1.0
    float_model = nn.Sequential(conv)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 2, 6, 6, generator=gen) + 0.5 for _ in range(3)]
    qmodel = aquatic.calibrate(
        aquatic.quantize(float_model, W4), batches, progress=False, bias_correction=True
    )
    with torch.no_grad():
        shift = torch.stack([(qmodel(x) - float_model(x)).mean(dim=(0, 2, 3)) for x in batches])
    assert shift.mean(dim=0).abs().max() < 1e-4  # exact on the calibration data itself


def test_bias_quantizer_refilled_after_correction():
    qconfig = QConfig(
        weight=UniformQuantizer.with_args(bits=4, narrow_range=True),
        bias=UniformQuantizer.with_args(bits=8),
    )
    model = aquatic.quantize(_biased_model(), {"0": qconfig})
    aquatic.calibrate(model, _batches(2, 0), progress=False, bias_correction=True)
    observer = model[0].quantizers["bias"].observer
    assert observer.max_val == model[0].bias.max() or observer.min_val == model[0].bias.min()
    assert not model[0].quantizers["bias"].observer_enabled


def test_modes_restored():
    model = aquatic.quantize(_biased_model(), W4)
    model.train()
    aquatic.calibrate(model, _batches(2, 0), progress=False, bias_correction=True)
    assert all(m.training for m in model.modules())
