"""Building the integer models of conventional layers (accumulators and requantizers)."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.integer.base import INT32_MAX, IntegerOverflowError, QSpec
from aquatic.functional.grid import Grid
from aquatic.integer.reading import describe, grid_steps, read_grid
from aquatic.integer.layers import IntegerConv, IntegerLinear, IntegerRequantize
from aquatic.integer.requant import is_power_of_two, quantize_multiplier

__all__ = ["build_accumulator", "build_requantize", "precision_for"]

#: float32 holds every integer below this exactly: the float model's sums are exact there.
FLOAT32_EXACT = 2**24
#: Finest bias grid (in bits below the accumulator's) that is added exactly.
_MAX_PRE_SHIFT = 24
#: Fractional bits below the accumulator grid kept for a bias that is off it.
_MAX_FLOAT_BIAS_BITS = 16


def precision_for(bound: Optional[int]) -> int:
    """Multiplier bits such that ``bound * multiplier`` stays below :math:`2^{62}`."""
    bits = 31 if bound is None else math.ceil(math.log2(max(int(bound), 1) + 1))
    return int(min(31, max(1, 62 - bits)))


def build_requantize(
    name: str, quantizer: nn.Module, spec: QSpec, where: str, source: str = ""
) -> Tuple[IntegerRequantize, QSpec]:
    """Requantize codes described by ``spec`` onto ``quantizer``'s grid."""
    notes: List[str] = []
    grid = read_grid(quantizer, where, notes)
    if grid.scale.dim() != 0 or grid.zero_point.dim() != 0:
        raise ValueError(
            f"{where} quantizes per channel; the integer model supports per-tensor "
            "activation quantizers only (use ch_axis=None)"
        )
    ratio = spec.scale / grid.scale
    multiplier, shift = quantize_multiplier(ratio, precision_for(spec.magnitude()))
    exact = is_power_of_two(ratio)
    if not exact:
        notes.append(
            f"{where}: the scale ratio {float(ratio.flatten()[0]):.6g} is not a power of two; "
            "requantized codes may be one step from the float model's"
        )
    module = IntegerRequantize(
        multiplier,
        shift,
        spec.zero_point,
        grid.zero_point,
        grid.quant_min,
        grid.quant_max,
        grid.rounding,
        spec.axis,
        name=name,
        notes=notes,
        source=source,
    )
    return module, QSpec(grid.scale, grid.zero_point, None, grid.quant_min, grid.quant_max)


def _out_channel_scale(layer: nn.Module, grid: Grid, where: str) -> Tuple[Tensor, int]:
    """The weight scale of every output channel, and the weight's output axis."""
    weight = layer.weight
    out_axis = getattr(layer, "_weight_out_axis", 0)
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if grid.scale.dim() == 0:
        return grid.scale, out_axis
    if grid.ch_axis is None or grid.ch_axis % weight.dim() != out_axis:
        raise ValueError(
            f"{where}: the weight is quantized per channel along ch_axis={grid.ch_axis}, not "
            f"along the output channels (axis {out_axis}); an integer accumulator needs one "
            f"scale per output channel: use ch_axis={out_axis} or one scale"
        )
    scale = grid.scale
    if scale.numel() != channels:  # transposed convolutions: (in, out / groups, ...)
        scale = scale.repeat(channels // scale.numel())
    return scale, out_axis


def _bias_codes(bias: Tensor, unit: Tensor, acc_bound: Optional[int], where: str, notes: List[str]):
    """Bias on the accumulator grid: ``(codes, pre_shift)`` with ``bias = codes * unit / 2**pre_shift``.

    A bias on a finer power-of-two grid is added exactly by shifting the products left,
    as long as the sum stays where float32 (the float model) is exact too; otherwise
    the bias is rounded to the accumulator grid (Jacob et al. 2018, section 2.4).
    """
    steps = bias.detach().to(torch.float64) / unit
    if is_power_of_two(unit) and acc_bound is not None:
        for pre_shift in range(_MAX_PRE_SHIFT + 1):
            scaled = steps * 2.0**pre_shift
            if acc_bound * 2**pre_shift + float(scaled.abs().max()) >= FLOAT32_EXACT:
                break
            if torch.equal(scaled, torch.round(scaled)):
                return scaled.to(torch.int64), pre_shift
    rounded = torch.round(steps)
    if float((steps - rounded).abs().max()) <= 1e-3:
        return rounded.to(torch.int64), 0
    # Off the grid: give the bias extra fractional bits (the products shifted left), as
    # many as int32 leaves room for, so that rounding it hardly moves the output.
    pre_shift = 0
    if acc_bound is not None:
        largest = acc_bound + float(steps.abs().max()) + 1
        while pre_shift < _MAX_FLOAT_BIAS_BITS and largest * 2 ** (pre_shift + 1) <= INT32_MAX:
            pre_shift += 1
    notes.append(
        f"{where}: the bias is not on the accumulator grid (input scale times weight scale) "
        f"and is rounded to {pre_shift} bits below it; quantize it with "
        "aquatic.quantizers.AccumulatorBiasQuantizer for an exact bias"
    )
    return torch.round(steps * 2.0**pre_shift).to(torch.int64), pre_shift


@torch.no_grad()
def build_accumulator(name: str, layer: nn.Module, spec: QSpec):
    """The integer module of an aquatic ``Linear``/``Conv*``/``ConvTranspose*`` layer.

    Returns:
        ``(modules, output_spec)``: the accumulator and, when the layer quantizes its
        output, the requantizer.
    """
    where = describe(name, layer)
    if "weight" not in layer.quantizers:
        raise ValueError(
            f"{where} has no weight quantizer, so its weights have no integer codes; build "
            "it with a QConfig whose weight field is set (e.g. aquatic.qconfig.int8)"
        )
    if spec.scale.dim() != 0:
        raise ValueError(
            f"{where} receives codes with one scale per channel (the output of a layer with "
            "per-channel weights and no activation quantizer); an accumulator needs one "
            "input scale: quantize that output (QConfig.activation or an "
            "aquatic.nn.ActivationQuantizer)"
        )
    # Values first: quantizers such as BinaryQuantizer record the scale they last used.
    values = layer.quantize_params()
    notes: List[str] = []
    grid = read_grid(
        layer.quantizers["weight"], f"{where}, quantizer 'weight'", notes, rounds=False
    )
    w_scale, out_axis = _out_channel_scale(layer, grid, where)
    # (code - zero_point) of every weight: what the accumulator multiplies by.
    codes = grid_steps(values["weight"], grid, f"{where}, 'weight'")
    transposed = getattr(layer, "transposed", False)
    channel_dims = tuple(d for d in range(codes.dim()) if d != out_axis)
    weight_sum = codes.abs().sum(dim=channel_dims)
    if transposed and layer.groups > 1:
        weight_sum = weight_sum.repeat(layer.groups)
    magnitude = spec.magnitude()

    unit = spec.scale * w_scale
    bias = values.get("bias", layer.bias)
    pre_shift, bias_codes = 0, None
    if bias is not None:
        products = None if magnitude is None else int(weight_sum.max()) * magnitude
        bias_codes, pre_shift = _bias_codes(bias, unit, products, where, notes)
    bound = None
    if magnitude is not None:
        bias_max = 0 if bias_codes is None else int(bias_codes.abs().max())
        bound = int(weight_sum.max()) * magnitude * 2**pre_shift + bias_max
        if bound > INT32_MAX:
            raise IntegerOverflowError(
                f"{where}: the accumulator can reach {bound} (sum of |weight codes| "
                f"{int(weight_sum.max())} times input codes up to {magnitude}), beyond int32 "
                f"({INT32_MAX}); use fewer input bits, smaller weights or a narrower input range"
            )
        if bound >= FLOAT32_EXACT:
            notes.append(
                f"{where}: the accumulator can reach {bound} steps, beyond float32's exact "
                "integers (2**24): the float model rounds its sums there"
            )
    else:
        notes.append(f"{where}: the input has no bound, so float32 exactness is not checked")
    if not (is_power_of_two(spec.scale) and is_power_of_two(w_scale)):
        notes.append(
            f"{where}: the input and weight scales are not powers of two, so the float "
            "model's products are rounded; outputs may be one step apart"
        )

    input_axis = None if spec.zero_point.dim() == 0 else spec.axis
    common = dict(
        weight=codes,
        bias=bias_codes,
        input_zero_point=spec.zero_point,
        pre_shift=pre_shift,
        input_axis=input_axis,
        check_overflow=bound is None,
        name=name,
        notes=notes,
        source=type(layer).__name__,
    )
    if isinstance(layer, nn.Linear):
        module = IntegerLinear(**common)
        axis = -1
    else:
        dim = len(layer.kernel_size)
        if layer.padding_mode != "zeros":
            raise ValueError(
                f"{where} uses padding_mode={layer.padding_mode!r}; the integer model supports "
                "zero padding only"
            )
        if isinstance(layer.padding, str):
            raise ValueError(f"{where} uses padding={layer.padding!r}; give the padding as numbers")
        module = IntegerConv(
            dim=dim,
            transposed=transposed,
            stride=list(layer.stride),
            padding=list(layer.padding),
            dilation=list(layer.dilation),
            groups=layer.groups,
            output_padding=list(getattr(layer, "output_padding", (0,) * dim)),
            **common,
        )
        axis = -dim - 1
    out_scale = unit / 2**pre_shift
    out = QSpec(
        out_scale,
        torch.tensor(0),
        axis if out_scale.dim() == 1 else None,
        None if bound is None else -bound,
        bound,
    )
    modules = [module]
    if "activation" in layer.quantizers:
        requant, out = build_requantize(
            f"{name}.activation",
            layer.quantizers["activation"],
            out,
            f"{where}, 'activation'",
            type(layer).__name__,
        )
        modules.append(requant)
    return modules, out
