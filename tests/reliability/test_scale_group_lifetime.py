"""A ScaleGroup holds its members weakly: a deleted layer stops setting the shared scale."""

import copy
import gc
import pickle

import torch

from aquatic.quantizers import ScaleGroup, SharedScaleQuantizer


def test_a_deleted_member_leaves_the_group_and_the_scale():
    group = ScaleGroup()
    kept = SharedScaleQuantizer(bits=8, group=group)
    dropped = SharedScaleQuantizer(bits=8, group=group)
    kept(torch.tensor([1.27]))
    dropped(torch.tensor([-127.0]))  # a range 100 times wider sets the scale
    assert torch.equal(group.scale(), torch.tensor(1.0))
    del dropped
    gc.collect()
    assert group.members == [kept]
    assert torch.equal(group.scale(), torch.tensor(0.01))
    assert repr(group) == "ScaleGroup(members=1, power_of_two=False)"


def test_a_deleted_layer_leaves_the_group():
    from aquatic import nn as ann
    from aquatic.qconfig import QConfig

    group = ScaleGroup()
    qconfig = QConfig(weight=SharedScaleQuantizer.with_args(group=group))
    small = ann.Linear(2, 2, qconfig=qconfig)
    large = ann.Linear(2, 2, qconfig=qconfig)
    with torch.no_grad():
        small.weight.fill_(0.5)
        large.weight.fill_(50.0)
    small(torch.ones(1, 2))
    large(torch.ones(1, 2))
    assert len(group.members) == 2
    del large
    gc.collect()
    assert len(group.members) == 1
    assert torch.equal(group.scale(), torch.tensor(0.5) / 127)


def test_copies_keep_their_own_members():
    group = ScaleGroup()
    model = torch.nn.ModuleList(
        [SharedScaleQuantizer(bits=8, group=group), SharedScaleQuantizer(bits=16, group=group)]
    )
    model[0](torch.tensor([2.54]))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone[0].group is clone[1].group is not group
        assert clone[0].group.members == [clone[0], clone[1]]
        assert torch.equal(clone[1].group.scale(), group.scale())
