import pytest
import torch
from torch import nn

import aquatic


def randomize_bn(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn


def check_folded(model, x):
    model.eval()
    expected = model(x)
    folded = aquatic.fold_batch_norm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert torch.allclose(folded(x), expected, atol=1e-5)
    return folded


@pytest.mark.parametrize(
    "layer,bn,shape",
    [
        (nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), (2, 3, 6, 6)),
        (nn.Conv1d(4, 6, 3, groups=2), nn.BatchNorm1d(6, affine=False), (2, 4, 7)),
        (nn.Linear(5, 3), nn.BatchNorm1d(3), (4, 5)),
        (nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), (2, 4, 4, 4)),
        (nn.ConvTranspose1d(2, 3, 3, bias=False), nn.BatchNorm1d(3), (2, 2, 5)),
    ],
)
def test_fold_matches_eval_batch_norm(layer, bn, shape):
    torch.manual_seed(0)
    model = nn.Sequential(layer, randomize_bn(bn), nn.ReLU())
    folded = check_folded(model, torch.randn(shape))
    assert type(folded[1]) is nn.Identity and folded[0].bias is not None
    assert type(model[1]) is type(bn)  # not in place by default


def test_explicit_pairs_in_a_non_sequential_model_and_requires_grad():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = randomize_bn(nn.BatchNorm2d(2))

        def forward(self, x):
            return self.bn(self.conv(x)) * 2

    torch.manual_seed(0)
    model = Net().eval()
    model.conv.weight.requires_grad_(False)
    x = torch.randn(1, 1, 5, 5)
    expected = model(x)
    assert aquatic.fold_batch_norm(model) is not model
    folded = aquatic.fold_batch_norm(model, [("conv", "bn")], inplace=True)
    assert folded is model and type(model.bn) is nn.Identity
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert not model.conv.weight.requires_grad and model.conv.bias.requires_grad


def test_fold_into_aquatic_conv_before_qat():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), randomize_bn(nn.BatchNorm2d(3)))
    qmodel = aquatic.quantize(model, aquatic.qconfig.int8, fuse_batch_norm=False)
    with aquatic.disable_fake_quant(qmodel):
        check_folded(qmodel, torch.randn(2, 1, 5, 5))


@pytest.mark.parametrize(
    "model,pairs,error,match",
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(3)), None, ValueError, "3 features"),
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)),
            None,
            ValueError,
            "running statistics",
        ),
        (nn.Sequential(nn.ReLU(), nn.BatchNorm2d(2)), [("0", "1")], TypeError, "ReLU"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), [("0", "1")], TypeError, "BatchNorm"),
        (nn.Sequential(nn.Conv2d(1, 2, 3)), [("0", "bn")], ValueError, "'1.bn'.*no attribute"),
        (nn.Sequential(nn.Conv2d(1, 2, 3)), ["0"], TypeError, "pairs"),
    ],
)
def test_errors_leave_the_model_unchanged(model, pairs, error, match):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = nn.Sequential(nn.Conv2d(1, 2, 3), randomize_bn(nn.BatchNorm2d(2)))
    model = nn.Sequential(good, model)
    if pairs is not None:
        pairs = [("0.0", "0.1")] + [tuple("1." + n for n in p) if len(p) == 2 else p for p in pairs]
    with pytest.raises(error, match=match):
        aquatic.fold_batch_norm(model, pairs, inplace=True)
    assert type(good[1]) is nn.BatchNorm2d  # the valid pair was not folded either
    assert all(torch.equal(v, model[1].state_dict()[k]) for k, v in before.items())
