import pytest
import torch
from torch import nn

import aquatic
from aquatic import QConfig
from aquatic.quantizers import UniformQuantizer


@pytest.mark.parametrize("qconfig", [None, QConfig(), QConfig(weight=UniformQuantizer)])
def test_without_activation_field_passes_through(qconfig):
    quant = aquatic.nn.ActivationQuantizer(qconfig=qconfig)
    x = torch.randn(4, 5, requires_grad=True)
    y = quant(x)
    assert y is x and len(quant.quantizers) == 0
    assert repr(quant) == "ActivationQuantizer(\n  (quantizers): ModuleDict()\n)"


def test_quantizes_like_torch_fake_quant_between_layers():
    qconfig = QConfig(activation=UniformQuantizer.with_args(bits=8, signed=False, symmetric=False))
    model = nn.Sequential(nn.Linear(3, 4), aquatic.nn.ActivationQuantizer(qconfig=qconfig))
    x = torch.randn(6, 3)
    y = model(x)
    pre = model[0](x).detach()
    lo, hi = min(pre.min().item(), 0.0), max(pre.max().item(), 0.0)
    scale = torch.tensor((hi - lo) / 255, dtype=torch.float32)
    zp = torch.tensor(-round(lo / scale.item()), dtype=torch.int32)
    expected = torch.fake_quantize_per_tensor_affine(pre, scale, zp, 0, 255)
    assert torch.allclose(y, expected, rtol=0, atol=1e-6)
    assert "quantized=(activation)" in repr(model[1])
    y.sum().backward()  # gradient reaches the layer before (straight through)
    assert torch.equal(model[0].bias.grad, torch.full((4,), 6.0))


def test_eval_uses_frozen_range_and_switches():
    quant = aquatic.nn.ActivationQuantizer(qconfig=aquatic.qconfig.int8)
    quant(torch.tensor([0.0, 2.55]))
    quant.eval()
    assert torch.equal(quant(torch.tensor([0.5, 10.0])), torch.tensor([0.5, 2.55]))
    with aquatic.disable_fake_quant(quant):
        assert torch.equal(quant(torch.tensor([10.0])), torch.tensor([10.0]))


def test_keyword_only_and_checked():
    with pytest.raises(TypeError):
        aquatic.nn.ActivationQuantizer(aquatic.qconfig.int8)
    with pytest.raises(TypeError, match="aquatic.QConfig"):
        aquatic.nn.ActivationQuantizer(qconfig=UniformQuantizer)
