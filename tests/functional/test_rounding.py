import pytest
import torch

from aquatic.functional import round_ste, sign_ste


def test_nearest_ties_to_even_and_identity_gradient():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 0.0]
    (y * torch.arange(6.0)).sum().backward()
    assert x.grad.tolist() == list(range(6))


def test_floor():
    x = torch.tensor([0.9, -0.1, 2.0], requires_grad=True)
    y = round_ste(x, "floor")
    assert y.tolist() == [0.0, -1.0, 2.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_stochastic_unbiased_and_reproducible():
    x = torch.full((50000,), -1.3)
    y = round_ste(x, "stochastic")
    assert set(y.unique().tolist()) == {-2.0, -1.0}
    assert abs(y.mean().item() + 1.3) < 0.01
    a = round_ste(x, "stochastic", torch.Generator().manual_seed(3))
    b = round_ste(x, "stochastic", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # Integral values pass unchanged.
    ints = torch.tensor([-3.0, 0.0, 4.0])
    assert torch.equal(round_ste(ints, "stochastic"), ints)


def test_unknown_mode():
    with pytest.raises(ValueError, match="'banker'"):
        round_ste(torch.zeros(2), "banker")


def test_sign_hardtanh_ste():
    x = torch.tensor([-2.0, -1.0, -0.2, 0.0, 0.7, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    x.grad = None
    sign_ste(x, clip=None).sum().backward()
    assert x.grad.tolist() == [1.0] * 6
