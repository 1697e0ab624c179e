"""What the twin families (conventional, pooling/normalisation, recurrent) share."""

import pytest
import torch
from torch import nn

import aquatic
from aquatic.nn.base import copy_forward_hooks

int8 = aquatic.qconfig.int8


@pytest.mark.parametrize(
    "twin, plain",
    [
        (aquatic.nn.Linear, nn.Linear(3, 2)),
        (aquatic.nn.AvgPool2d, nn.AvgPool2d(2)),
        (aquatic.nn.GRU, nn.GRU(3, 2)),
    ],
)
def test_from_float_refuses_subclasses_and_keeps_hooks(twin, plain):
    class Custom(type(plain)):
        pass

    with pytest.raises(TypeError, match=f"expects a torch.nn.{type(plain).__name__}, got Custom"):
        twin.from_float(Custom.__new__(Custom), int8)
    calls = []
    plain.register_forward_pre_hook(lambda *args: calls.append("pre"))
    new = twin.from_float(plain, int8)
    assert list(new._forward_pre_hooks.values()) == list(plain._forward_pre_hooks.values())


@pytest.mark.parametrize(
    "twin, plain",
    [(aquatic.nn.Linear, nn.Linear(3, 2)), (aquatic.nn.BatchNorm1d, nn.BatchNorm1d(3))],
)
def test_a_torch_checkpoint_loads_and_quantizers_keep_their_state(twin, plain):
    layer = twin.from_float(type(plain)(*_args(plain)), int8)
    before = {k: v.clone() for k, v in layer.quantizers.state_dict().items()}
    layer.load_state_dict(plain.state_dict())
    after = layer.quantizers.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(layer.weight, plain.weight)


def _args(plain):
    return (3, 2) if isinstance(plain, nn.Linear) else (3,)


def test_copy_forward_hooks_copies_every_kind():
    source, target = nn.Linear(2, 2), nn.Linear(2, 2)
    source.register_forward_pre_hook(lambda *a: None)
    source.register_forward_hook(lambda *a, **k: None, with_kwargs=True, always_call=True)
    copy_forward_hooks(source, target)
    assert len(target._forward_pre_hooks) == 1 and len(target._forward_hooks) == 1
    assert target._forward_hooks_with_kwargs == source._forward_hooks_with_kwargs
    assert target._forward_hooks_always_called == source._forward_hooks_always_called
