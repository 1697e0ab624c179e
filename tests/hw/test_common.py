"""The hardware exports' reading of a weight quantizer's grid."""

import pytest
import torch

import aquatic
from aquatic.functional.grid import NoRangeError
from aquatic.hw._common import DoesNotFitError, on_grid, weight_grid
from aquatic.quantizers import UniformQuantizer


def layer(**kwargs):
    return aquatic.nn.Linear(
        3, 2, qconfig=aquatic.QConfig(weight=UniformQuantizer.with_args(**kwargs))
    )


def test_weight_grid_is_per_tensor_and_symmetric():
    grid = weight_grid(layer(scale=0.25), "0", "xylo")
    assert float(grid.scale) == 0.25 and grid.ch_axis is None
    assert on_grid(torch.tensor([0.5, -0.75]), grid, "w").tolist() == [2, -3]


def test_weight_grid_refusals():
    with pytest.raises(DoesNotFitError, match="'0' \\(Linear\\) has no weight quantizer"):
        weight_grid(torch.nn.Linear(3, 2), "0", "xylo")
    with pytest.raises(DoesNotFitError, match="no single scale; xylo needs one per-tensor"):
        weight_grid(layer(scale=[0.1, 0.2], ch_axis=0), "0", "xylo")
    with pytest.raises(DoesNotFitError, match="needs symmetric quantization"):
        weight_grid(layer(scale=0.1, zero_point=3), "0", "xylo")
    with pytest.raises(NoRangeError, match="layer '0', weight quantizer: UniformQuantizer has no"):
        weight_grid(layer(), "0", "xylo")


def test_off_the_grid_is_a_does_not_fit_error():
    grid = weight_grid(layer(scale=0.25), "0", "xylo")
    with pytest.raises(DoesNotFitError, match="w is not on the grid of the shared scale 0.25"):
        on_grid(torch.tensor([0.3]), grid, "w")
