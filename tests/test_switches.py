import pytest
import torch
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = UniformQuantizer(bits=3)
        self.b = UniformQuantizer(bits=3)


def test_freeze_observers_function_and_context():
    model = Two()
    model.a(torch.tensor([1.0]))
    with aquatic.freeze_observers(model):
        assert not model.a.observer_enabled and not model.b.observer_enabled
        model.a(torch.tensor([4.0]))
    assert model.a.observer.max_val.item() == 1.0
    assert model.a.observer_enabled and model.b.observer_enabled
    aquatic.freeze_observers(model)
    assert not model.a.observer_enabled
    aquatic.enable_observers(model)
    assert model.a.observer_enabled


def test_disable_fake_quant_restores_previous_state():
    model = Two()
    model.b.fake_quant_enabled = False
    with aquatic.disable_fake_quant(model):
        x = torch.tensor([0.123])
        assert torch.equal(model.a(x), x)
    assert model.a.fake_quant_enabled and not model.b.fake_quant_enabled
    aquatic.disable_fake_quant(model)
    aquatic.enable_fake_quant(model)
    assert model.a.fake_quant_enabled and model.b.fake_quant_enabled


def test_not_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        aquatic.freeze_observers([1, 2])
