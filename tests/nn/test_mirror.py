"""aquatic.nn mirrors torch.nn: every public name is reachable, twins shadow torch's."""

import importlib

import pytest
import torch

import aquatic
import aquatic.nn as qnn

TORCH_NAMES = sorted(name for name in dir(torch.nn) if not name.startswith("_"))


def test_the_list_is_torch_nn_as_installed():
    # A sanity check of the list the next test walks: torch.nn's classes and modules.
    for name in ("Module", "Sequential", "ReLU", "CrossEntropyLoss", "Parameter", "functional"):
        assert name in TORCH_NAMES
    assert len(TORCH_NAMES) > 150


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_every_torch_nn_name_is_reachable(name):
    ours, theirs = getattr(qnn, name), getattr(torch.nn, name)
    if ours is not theirs:
        # Only a quantization-aware twin may differ, and it is a subclass of torch's.
        assert isinstance(ours, type) and issubclass(ours, theirs), name
        assert name in vars(qnn), name


def test_twins_shadow_torch_names():
    assert qnn.Linear is not torch.nn.Linear and issubclass(qnn.Linear, torch.nn.Linear)
    assert qnn.Conv2d is not torch.nn.Conv2d
    assert qnn.ReLU is torch.nn.ReLU and qnn.Module is torch.nn.Module


def test_star_import_gives_torch_names_and_twins():
    namespace = {}
    exec("from aquatic.nn import *", namespace)
    assert namespace["Sequential"] is torch.nn.Sequential
    assert namespace["Linear"] is qnn.Linear
    assert set(TORCH_NAMES) <= set(namespace)


def test_dir_lists_the_mirror():
    assert set(TORCH_NAMES) <= set(dir(qnn))


def test_submodules_import_as_torch_own_modules():
    functional = importlib.import_module("aquatic.nn.functional")
    assert functional is torch.nn.functional
    rnn = importlib.import_module("aquatic.nn.utils.rnn")
    assert rnn is torch.nn.utils.rnn  # one module, not a second copy of its classes
    from aquatic.nn.init import xavier_uniform_

    assert xavier_uniform_ is torch.nn.init.xavier_uniform_
    # aquatic's own submodules are untouched.
    assert importlib.import_module("aquatic.nn.linear").Linear is qnn.Linear


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="nor has torch.nn"):
        qnn.NoSuchLayer
    with pytest.raises(AttributeError):
        qnn._private_thing


def test_a_plain_script_with_aquatic_nn_in_place_of_torch_nn_trains():
    import aquatic.nn as nn

    qconfig = aquatic.qconfig.int8

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 4, 3, qconfig=qconfig),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(4 * 6 * 6, 3, qconfig=qconfig),
            )

        def forward(self, x):
            return nn.functional.log_softmax(self.body(x), dim=1)

    torch.manual_seed(0)
    net = Net()
    nn.init.zeros_(net.body[3].bias)
    x = torch.randn(32, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    loss_fn = nn.NLLLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert "weight" in net.body[0].quantizers and "activation" in net.body[3].quantizers
    # CrossEntropyLoss from the mirror is torch's.
    assert isinstance(nn.CrossEntropyLoss()(net.body(x), y), torch.Tensor)
