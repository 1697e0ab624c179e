"""read_grid: the integer model's reading of a quantizer's grid, with its own checks."""

import pytest
import torch

from aquatic.integer.reading import grid_steps, read_grid
from aquatic.quantizers import BinaryQuantizer, BitShiftDecay, UniformQuantizer


def test_scale_in_float64_and_stochastic_rounding_noted():
    quantizer = UniformQuantizer(scale=0.1, rounding="stochastic")
    notes = []
    grid = read_grid(quantizer, "q", notes)
    assert grid.scale.dtype == torch.float64 and grid.zero_point.dtype == torch.int64
    assert float(grid.scale) == float(torch.tensor(0.1))  # the float32 scale, widened
    assert grid.rounding == "nearest"
    assert notes == ["q rounds stochastically; the integer model rounds to nearest instead"]


def test_refusals_name_the_quantizer_and_the_fix():
    with pytest.raises(ValueError, match="q: UniformQuantizer has no range yet.*aquatic.convert"):
        read_grid(UniformQuantizer(), "q", [])
    with pytest.raises(
        ValueError, match="q: BitShiftDecay.*not on a uniform grid.*UniformQuantizer"
    ):
        read_grid(BitShiftDecay(), "q", [])
    with pytest.raises(ValueError, match="q is a BinaryQuantizer, which thresholds rather than"):
        read_grid(BinaryQuantizer(), "q", [])
    assert read_grid(BinaryQuantizer(), "q", [], rounds=False).rounding == "sign"
    off = UniformQuantizer(scale=0.5)
    off.fake_quant_enabled = False
    with pytest.raises(ValueError, match="switched off.*enable_fake_quant"):
        read_grid(off, "q", [])


def test_grid_steps_names_the_fix():
    grid = read_grid(UniformQuantizer(scale=0.5), "q", [])
    assert grid_steps(torch.tensor([1.0, -1.5]), grid, "w").tolist() == [2, -3]
    with pytest.raises(ValueError, match="w is not on the grid of the scale 0.5: 0.7 is 1.4000"):
        grid_steps(torch.tensor([0.7]), grid, "w")
