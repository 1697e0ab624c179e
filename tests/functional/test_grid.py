"""Grid: the typed grid of a uniform quantizer, and the one broadcast helper."""

import pytest
import torch

from aquatic.functional import Grid
from aquatic.functional.fake_quant import broadcast_along
from aquatic.functional.grid import TOLERANCE, NoRangeError, is_power_of_two


def per_tensor(scale=0.25, zero_point=0, low=-128, high=127):
    return Grid(torch.tensor(scale), torch.tensor(zero_point, dtype=torch.int32), low, high)


def per_channel():
    # Two channels along axis 1 of a (N, 2) tensor.
    return Grid(
        torch.tensor([0.5, 0.1]), torch.tensor([0, 3], dtype=torch.int32), 0, 255, ch_axis=1
    )


def test_fields_in_order_with_defaults():
    grid = per_tensor()
    assert Grid._fields == ("scale", "zero_point", "quant_min", "quant_max", "ch_axis", "rounding")
    assert grid.ch_axis is None and grid.rounding == "nearest"
    assert not grid.per_channel
    assert per_channel().per_channel


def test_power_of_two():
    assert per_tensor(0.25).power_of_two
    assert not per_tensor(0.3).power_of_two
    assert not per_channel().power_of_two  # 0.1
    both = Grid(torch.tensor([0.5, 2.0**-7]), torch.zeros(2, dtype=torch.int32), -8, 7, 0)
    assert both.power_of_two
    assert is_power_of_two(torch.tensor([0.25, 4.0])) and not is_power_of_two(torch.tensor(-0.5))


def test_along_shapes_scale_and_zero_point_for_a_tensor():
    scale, zero_point = per_channel().along(torch.zeros(4, 2))
    assert scale.shape == (1, 2) and zero_point.shape == (1, 2)
    assert torch.equal(zero_point, torch.tensor([[0, 3]], dtype=torch.int32))
    # A negative axis counts from the end.
    grid = per_channel()._replace(ch_axis=-2)
    assert grid.along(torch.zeros(3, 2, 5))[0].shape == (1, 2, 1)
    # Per tensor: the 0-dim tensors themselves.
    assert per_tensor().along(torch.zeros(4, 2))[0].dim() == 0
    with pytest.raises(ValueError, match="ch_axis=1 is out of range"):
        per_channel().along(torch.zeros(2))


def test_broadcast_along():
    param = torch.tensor([1.0, 2.0])
    assert broadcast_along(param, 1, ndim=3).shape == (1, 2, 1)
    assert broadcast_along(param, -1, ndim=3).shape == (1, 1, 2)
    assert broadcast_along(param, -3).shape == (2, 1, 1)
    assert broadcast_along(param, None, ndim=3) is param
    scalar = torch.tensor(3.0)
    assert broadcast_along(scalar, 0, ndim=2) is scalar
    with pytest.raises(ValueError, match="needs ndim"):
        broadcast_along(param, 1)


def test_codes_steps_and_dequantize_round_trip():
    grid = per_channel()
    codes = torch.tensor([[0, 0], [7, 255], [255, 10]])
    values = grid.dequantize(codes)
    # (q - z) * s in float32, per channel along axis 1.
    expected = (codes - torch.tensor([0, 3])).float() * torch.tensor([0.5, 0.1])
    assert torch.equal(values, expected)
    assert torch.equal(grid.codes(values), codes)
    assert torch.equal(grid.steps(values), codes - torch.tensor([0, 3]))
    assert grid.codes(values).dtype == torch.int64


def test_off_the_grid_is_an_error_naming_the_worst_value():
    grid = per_tensor(0.25)
    value = torch.tensor([0.5, 0.3, 1.0])  # 0.3 is 1.2 steps
    with pytest.raises(ValueError, match=r"w is not on the grid of the scale 0.25: 0.3 is 1.2000"):
        grid.steps(value, "w")

    class CustomError(ValueError):
        pass

    with pytest.raises(CustomError, match="the shared scale 0.25.*; retrain it"):
        grid.steps(value, "w", error=CustomError, scale_name="shared scale", hint="retrain it")
    with pytest.raises(ValueError, match="is nan"):
        grid.steps(torch.tensor([float("nan")]))


def test_tolerance_allows_float32_rounding_only():
    grid = per_tensor(0.1)
    # 0.1 * k in float32 is not exactly k / 10, but it is on the grid.
    values = torch.arange(-128, 128, dtype=torch.float32) * torch.tensor(0.1)
    assert torch.equal(grid.steps(values), torch.arange(-128, 128))
    with pytest.raises(ValueError):
        grid.steps(torch.tensor([0.1 * (1 + 3 * TOLERANCE)]))


def test_codes_outside_the_range_are_an_error():
    grid = per_tensor(1.0, low=-2, high=2)
    assert grid.steps(torch.tensor([5.0])).item() == 5  # steps do not check the range
    with pytest.raises(ValueError, match="code 5, outside the grid's range -2..2"):
        grid.codes(torch.tensor([5.0]), "x")


def test_check_scale():
    assert per_tensor(0.5).check_scale("q") == per_tensor(0.5)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="q has the scale .* positive and finite"):
            per_tensor(bad).check_scale("q")


def test_qparams_dict():
    grid = per_channel()
    params = grid.qparams()
    assert list(params) == ["scale", "zero_point", "quant_min", "quant_max", "ch_axis"]
    assert params["scale"] is grid.scale and params["ch_axis"] == 1


def test_no_range_error_is_a_value_error_and_a_runtime_error():
    assert issubclass(NoRangeError, ValueError) and issubclass(NoRangeError, RuntimeError)
