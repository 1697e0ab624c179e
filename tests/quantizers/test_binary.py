import pytest
import torch

from aquatic.quantizers import BinaryQuantizer, TernaryQuantizer


def test_binary_xnor_scale_per_channel_and_gradient():
    w = torch.tensor([[0.5, -1.5, 0.0], [0.2, -0.4, 2.0]], requires_grad=True)
    q = BinaryQuantizer(scale="mean", ch_axis=0)
    y = q(w)
    a = torch.tensor([2.0 / 3, 2.6 / 3])  # mean |w| per row
    sign = torch.tensor([[1.0, -1.0, 1.0], [1.0, -1.0, 1.0]])
    assert torch.allclose(y, sign * a[:, None])
    y.sum().backward()
    # d/dw_ij [a_i * sign(w_ij)] summed over j: a_i * 1{|w_ij|<=1} + sign(w_ij)/n * sum_j sign
    n = 3
    expected = a[:, None] * (w.detach().abs() <= 1).float() + torch.sign(w.detach()) / n * sign.sum(
        1, keepdim=True
    )
    expected[0, 2] = a[0] + 0.0 / n  # sign(0) has no |.| derivative: abs'(0) = 0
    assert torch.allclose(w.grad, expected)


def test_binary_no_scale_and_codes():
    q = BinaryQuantizer(scale=None)
    x = torch.tensor([-0.2, 0.0, 3.0])
    assert q(x).tolist() == [-1.0, 1.0, 1.0]
    codes = q.to_int(x)
    assert codes.dtype == torch.int8 and codes.tolist() == [-1, 1, 1]
    p = q.qparams()
    assert (p["quant_min"], p["quant_max"]) == (-1, 1)


def test_binary_to_int_dequantizes_to_forward():
    w = torch.randn(4, 5)
    q = BinaryQuantizer(ch_axis=0)
    y = q(w)
    codes = q.to_int(w)
    assert torch.equal(codes.float() * q.qparams()["scale"][:, None], y)


def test_ternary_twn_rule():
    w = torch.tensor([1.0, -0.9, 0.1, 0.0, 0.3])
    q = TernaryQuantizer(ch_axis=None)
    delta = 0.7 * w.abs().mean()  # 0.322
    mask = w.abs() > delta
    a = w.abs()[mask].mean()
    assert torch.allclose(q(w), torch.sign(w) * mask * a)
    assert q.to_int(w).tolist() == [1, -1, 0, 0, 0]


def test_ternary_ste_and_idempotent_codes():
    w = torch.randn(3, 8, requires_grad=True)
    q = TernaryQuantizer(ch_axis=0)
    y = q(w)
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    assert set(q.to_int(w).unique().tolist()) <= {-1, 0, 1}
    assert torch.equal(q.to_int(y.detach()), q.to_int(w))


def test_state_dict_per_channel_scale():
    q = BinaryQuantizer(ch_axis=0)
    q(torch.randn(3, 4))
    fresh = BinaryQuantizer(ch_axis=0)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.qparams()["scale"], q.qparams()["scale"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="'max'"):
        BinaryQuantizer(scale="max")
    with pytest.raises(ValueError, match="clip"):
        BinaryQuantizer(clip=0)
    with pytest.raises(ValueError, match="threshold_factor"):
        TernaryQuantizer(threshold_factor=-1)
