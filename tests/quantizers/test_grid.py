"""Every quantizer's grid() describes its forward pass, and agrees with qparams()."""

import pytest
import torch

import aquatic
from aquatic.functional.grid import NoRangeError
from aquatic.hw.loihi import StateQuantizer
from aquatic.quantizers import (
    AccumulatorBiasQuantizer,
    BinaryQuantizer,
    BitShiftDecay,
    FixedPointQuantizer,
    Grid,
    LSQPlusQuantizer,
    LSQQuantizer,
    PACTQuantizer,
    Quantizer,
    ScaleGroup,
    SharedScaleQuantizer,
    SharedStateQuantizer,
    TernaryQuantizer,
    UniformDecay,
    UniformQuantizer,
)

# A ScaleGroup holds its members weakly, as a model's layers would hold them strongly:
# the weight that sets the state's scale must stay referenced.
_SCALE_SETTERS = []


def shared_pair():
    group = ScaleGroup(power_of_two=True)
    weight = SharedScaleQuantizer(bits=8, group=group, power_of_two=True)
    weight(torch.tensor([0.7, -1.3]))  # sets the group's scale
    _SCALE_SETTERS.append(weight)
    return SharedStateQuantizer(bits=16, group=group, power_of_two=True)


# name -> (factory, whether to_int(x) gives the codes of forward(x))
QUANTIZERS = {
    "uniform": (lambda: UniformQuantizer(bits=8), True),
    "uniform-asymmetric": (lambda: UniformQuantizer(bits=6, symmetric=False), True),
    "uniform-per-channel": (lambda: UniformQuantizer(bits=4, ch_axis=0), True),
    "uniform-fixed-per-channel": (
        lambda: UniformQuantizer(bits=8, ch_axis=1, scale=[0.1, 0.2, 0.05, 0.5, 1.0]),
        True,
    ),
    "uniform-power-of-two": (lambda: UniformQuantizer(bits=8, power_of_two=True), True),
    "uniform-floor": (lambda: UniformQuantizer(bits=8, rounding="floor"), True),
    "uniform-stochastic": (
        lambda: UniformQuantizer(
            bits=8, rounding="stochastic", generator=torch.Generator().manual_seed(0)
        ),
        False,
    ),
    "fixed-point": (lambda: FixedPointQuantizer(int_bits=1, frac_bits=4), True),
    "lsq": (lambda: LSQQuantizer(bits=4), True),
    "lsq-per-channel": (lambda: LSQQuantizer(bits=4, ch_axis=0), True),
    "lsq-plus": (lambda: LSQPlusQuantizer(bits=8), True),
    "pact": (lambda: PACTQuantizer(bits=4, alpha=1.5), True),
    "shared-scale": (lambda: SharedScaleQuantizer(bits=8, group="g"), True),
    "shared-state": (shared_pair, True),
    "binary": (lambda: BinaryQuantizer(ch_axis=0), True),
    "binary-unscaled": (lambda: BinaryQuantizer(scale=None), True),
    "ternary": (lambda: TernaryQuantizer(ch_axis=0), True),
    "ternary-per-tensor": (lambda: TernaryQuantizer(ch_axis=None), True),
    "loihi-state": (lambda: StateQuantizer(), True),
}


def check_grid_describes(quantizer, input, output, to_int_matches=True):
    grid = quantizer.grid()
    assert isinstance(grid, Grid)
    assert grid.scale.dtype == torch.float32
    assert not grid.zero_point.is_floating_point()
    assert grid.zero_point.shape == grid.scale.shape
    assert grid.per_channel == (grid.scale.dim() == 1)
    codes = grid.codes(output)  # raises unless on the grid and in range
    assert torch.equal(grid.dequantize(codes), output)
    if to_int_matches:
        assert torch.equal(quantizer.to_int(input).to(torch.int64), codes)
    return grid


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_forward_lies_on_the_grid(name):
    torch.manual_seed(0)
    factory, to_int_matches = QUANTIZERS[name]
    quantizer = factory()
    x = torch.randn(3, 5) * 2
    y = quantizer(x).detach()
    grid = check_grid_describes(quantizer, x, y, to_int_matches)
    assert grid.rounding == getattr(quantizer, "rounding", grid.rounding)


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_qparams_agree_with_the_grid(name):
    torch.manual_seed(0)
    quantizer = QUANTIZERS[name][0]()
    quantizer(torch.randn(3, 5))
    grid, params = quantizer.grid(), quantizer.qparams()
    for field in ("scale", "zero_point"):
        assert torch.equal(params[field], getattr(grid, field))
        assert params[field].dtype == getattr(grid, field).dtype
    for field in ("quant_min", "quant_max", "ch_axis"):
        assert params[field] == getattr(grid, field)


def test_per_channel_grids_name_their_axis():
    quantizer = UniformQuantizer(bits=4, ch_axis=1)
    quantizer(torch.randn(2, 3, 4))
    grid = quantizer.grid()
    assert grid.ch_axis == 1 and grid.scale.shape == (3,)
    assert BinaryQuantizer(scale=None).grid().ch_axis is None  # one scale of 1


def test_power_of_two_quantizers_have_power_of_two_grids():
    quantizer = UniformQuantizer(bits=8, power_of_two=True)
    quantizer(torch.randn(10))
    assert quantizer.grid().power_of_two
    assert FixedPointQuantizer(int_bits=3, frac_bits=4).grid().power_of_two
    assert not UniformQuantizer(bits=8, scale=0.3).grid().power_of_two


def test_rounding_names():
    assert UniformQuantizer(scale=0.1, rounding="floor").grid().rounding == "floor"
    assert BinaryQuantizer().grid().rounding == "sign"
    assert TernaryQuantizer().grid().rounding == "threshold"
    assert UniformDecay(bits=4, rounding="floor").grid().rounding == "ceil"


def test_accumulator_bias_grid_follows_the_layer():
    qconfig = aquatic.QConfig(
        weight=UniformQuantizer.with_args(ch_axis=0),
        bias=AccumulatorBiasQuantizer.with_args(input_scale=0.25),
    )
    layer = aquatic.nn.Linear(4, 3, qconfig=qconfig)
    layer(torch.randn(2, 4))
    quantizer = layer.quantizers["bias"]
    grid = quantizer.grid()
    weight_scale = layer.quantizers["weight"].grid().scale
    assert torch.equal(grid.scale, (0.25 * weight_scale).float())
    assert grid.ch_axis == 0 and (grid.quant_min, grid.quant_max) == (-(2**31), 2**31 - 1)
    bias = layer.quantize_params()["bias"]
    check_grid_describes(quantizer, layer.bias.detach(), bias)


def test_uniform_decay_alpha_grid_counts_retention():
    quantizer = UniformDecay(bits=4)
    alpha = torch.tensor([0.0, 0.5, 0.9, 0.97, 1.0])
    alpha_q = quantizer(alpha)
    grid = check_grid_describes(quantizer, alpha, alpha_q, to_int_matches=False)
    assert (grid.quant_min, grid.quant_max) == (1, 16) and float(grid.scale) == 2**-4
    # Codes a = 2**bits - d, where to_int gives d.
    assert torch.equal(grid.codes(alpha_q), 16 - quantizer.to_int(alpha).to(torch.int64))


@pytest.mark.parametrize(
    "quantizer, match",
    [
        (BitShiftDecay(bits=4), r"BitShiftDecay\(param='alpha'\) is not on a uniform grid"),
        (UniformDecay(bits=12, param="tau"), r"UniformDecay\(param='tau'\) is not on"),
    ],
)
def test_decays_without_a_uniform_grid_say_so(quantizer, match):
    with pytest.raises(ValueError, match=match + ".*to_int"):
        quantizer.grid()


@pytest.mark.parametrize(
    "quantizer",
    [
        UniformQuantizer(),
        LSQQuantizer(),
        SharedScaleQuantizer(),
        AccumulatorBiasQuantizer(input_scale=1.0),
    ],
    ids=lambda q: type(q).__name__,
)
def test_no_range_yet(quantizer):
    name = type(quantizer).__name__
    with pytest.raises(ValueError, match=f"{name} has no range yet; run data through it"):
        quantizer.grid()
    # qparams() raises what it always raised (a RuntimeError), with the same advice.
    with pytest.raises(RuntimeError, match="no range yet"):
        quantizer.qparams()
    with pytest.raises(NoRangeError):
        quantizer.grid()


class _Legacy(Quantizer):
    """A quantizer written against the old contract: qparams() only."""

    def fake_quantize(self, input):
        return torch.round(input * 4) / 4

    def qparams(self):
        return {"scale": torch.tensor(0.25), "quant_min": -8, "quant_max": 7}


class _NoGrid(Quantizer):
    def fake_quantize(self, input):
        return torch.sign(input)


class _GridOnly(Quantizer):
    def grid(self):
        return Grid(torch.tensor(0.5), torch.tensor(1), 0, 15)


def test_subclasses_that_describe_themselves_by_qparams_get_a_grid():
    grid = _Legacy().grid()
    assert float(grid.scale) == 0.25 and int(grid.zero_point) == 0
    assert (grid.quant_min, grid.quant_max, grid.ch_axis) == (-8, 7, None)


def test_qparams_follow_from_grid():
    assert _GridOnly().qparams()["zero_point"].item() == 1
    with pytest.raises(NotImplementedError):
        _NoGrid().qparams()


def test_quantizers_without_a_grid_raise_naming_their_class():
    with pytest.raises(ValueError, match="_NoGrid is not on a uniform grid"):
        _NoGrid().grid()
