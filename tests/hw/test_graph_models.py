"""Chip exports of models with a forward of their own: chains export as their
nn.Sequential twin does; graphs that branch or join are refused with the node named."""

import numpy as np
import pytest
import torch
from torch import nn

import aquatic
from aquatic import nn as ann
from aquatic.hw import DoesNotFitError, dynapcnn, loihi, xylo


class XyloNet(nn.Module):
    def __init__(self, residual=False):
        super().__init__()
        qh, qo = xylo.qconfig(power_of_two=True), xylo.qconfig(power_of_two=True)
        self.residual = residual
        self.fc1 = ann.Linear(4, 16, bias=False, qconfig=qh)
        self.lif1 = ann.LIFRecurrent(16, tau_mem=8.0, tau_syn=4.0, max_spikes=31, qconfig=qh)
        self.fc2 = ann.Linear(16, 3, bias=False, qconfig=qo)
        self.lif2 = ann.LIF(tau_mem=8.0, tau_syn=4.0, qconfig=qo)

    def forward(self, x):
        h = self.lif1(self.fc1(x))
        if self.residual:
            h = h + self.fc1(x)
        return self.lif2(self.fc2(torch.flatten(h, 2)))


def test_a_chain_of_ones_own_exports_as_its_sequential_twin():
    torch.manual_seed(0)
    x = (torch.rand(4, 30, 4) < 0.3).float()
    model = XyloNet()
    model(x)
    model.eval()
    twin = nn.Sequential(model.fc1, model.lif1, model.fc2, model.lif2)
    got, expected = xylo.export(model), xylo.export(twin)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_graphs_that_branch_are_refused_naming_the_node():
    with pytest.raises(DoesNotFitError, match="Xylo takes a chain of layers; 'x' .* feeds"):
        xylo.export(XyloNet(residual=True))


class Joined(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(4, 4), ann.LIF(tau_mem=4.0)
        self.fc2, self.lif2 = nn.Linear(4, 4), ann.LIF(tau_mem=4.0)

    def forward(self, x):
        a = self.lif1(self.fc1(x))
        return self.lif2(self.fc2(a)) + a


@pytest.mark.parametrize("export, chip", [(loihi.export, "Loihi"), (dynapcnn.export, "DYNAP-CNN")])
def test_other_chips_refuse_joins(export, chip):
    with pytest.raises(DoesNotFitError, match=f"{chip} takes a chain of layers; 'lif1'"):
        export(Joined())


def test_an_operation_between_layers_is_named():
    class Relu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(4, 4), ann.LIF(tau_mem=4.0)

        def forward(self, x):
            return self.lif(torch.relu(self.fc(x)))

    with pytest.raises(DoesNotFitError, match="Loihi cannot hold 'relu' \\(graph node 'relu'"):
        loihi.export(Relu())
