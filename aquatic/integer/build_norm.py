"""Building the :class:`~aquatic.integer.layer_norm.IntegerLayerNorm` of a
quantization-aware :class:`aquatic.nn.LayerNorm`."""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import nn

from aquatic.integer.base import QSpec
from aquatic.integer.layer_norm import IntegerLayerNorm
from aquatic.integer.reading import describe, read_grid
from aquatic.nn import LayerNorm

__all__ = ["build_layer_norm", "check_input_grid"]

#: Every product of the integer layer norm stays below this (twice it is formed).
_LIMIT_BITS = 61
#: More fraction bits than these add nothing that float32 had.
_MAX_SHIFT, _MAX_PRECISION = 24, 40


def check_input_grid(spec: QSpec, where: str) -> None:
    """Refuse input codes without one scale, one zero point and a range."""
    if spec.scale.dim() != 0 or spec.zero_point.dim() != 0 or not spec.bounded:
        raise ValueError(
            f"{where}: its input codes need one scale and a range; quantize the input per "
            "tensor (QConfig.activation of the layer before, or an "
            "aquatic.nn.ActivationQuantizer)"
        )


def build_layer_norm(name: str, module: nn.Module, spec: QSpec) -> Tuple[IntegerLayerNorm, QSpec]:
    """The integer layer norm of ``module`` for input codes described by ``spec``.

    Raises:
        TypeError: ``module`` is a ``torch.nn.LayerNorm``, not the aquatic twin.
        ValueError: no output quantizer, a ``normalized_shape`` over more than the last
            dimension, or input codes without one scale and a range.
    """
    where = describe(name, module)
    if not isinstance(module, LayerNorm):
        raise TypeError(
            f"{where} is a float torch.nn.LayerNorm, whose output is on no grid; build it as "
            "aquatic.nn.LayerNorm with a qconfig that has an activation quantizer"
        )
    if len(module.normalized_shape) != 1:
        raise ValueError(
            f"{where} normalizes over {tuple(module.normalized_shape)}; the integer layer "
            "norm normalizes the last dimension only"
        )
    if "activation" not in module.quantizers:
        raise ValueError(
            f"{where} has no activation quantizer, so its output is on no grid; the integer "
            "model needs QConfig.activation (e.g. aquatic.qconfig.int8)"
        )
    check_input_grid(spec, where)
    notes: List[str] = []
    out = read_grid(module.quantizers["activation"], f"{where}, quantizer 'activation'", notes)
    if out.per_channel:
        raise ValueError(f"{where}: the activation quantizer is per channel; use one scale")
    n = module.normalized_shape[0]
    values = module.quantize_params()
    ones = torch.ones(n, dtype=torch.float64)
    gamma = values.get("weight", module.weight)
    beta = values.get("bias", module.bias)
    gamma = ones if gamma is None else gamma.detach().double().cpu()
    beta = ones * 0 if beta is None else beta.detach().double().cpu()
    s, s_out = float(spec.scale), float(out.scale)
    spread = (n - 1) * (spec.high - spec.low)  # the largest |D_i|
    eps = module.eps * n**3 / s**2
    bits = math.log2(n * spread**2 + eps + 1)
    shift = min(_MAX_SHIFT, math.floor((_LIMIT_BITS - bits) / 2))
    gain = gamma * math.sqrt(n) / s_out
    offset = beta / s_out
    root_bits = bits / 2 + shift + 1
    largest = max(float(gain.abs().max()) * max(spread, 1) * 2.0**shift, 1.0)
    precision = min(
        _MAX_PRECISION,
        math.floor(_LIMIT_BITS - 1 - math.log2(largest)),
        math.floor(_LIMIT_BITS - 1 - root_bits - math.log2(float(offset.abs().max()) + 1)),
    )
    if shift < 4 or precision < 8:
        raise ValueError(
            f"{where}: {n} features of {spec.high - spec.low + 1} input codes leave too few "
            "bits for int64 arithmetic; quantize its input with fewer bits"
        )
    notes.append(
        f"{where}: the float model's mean, variance and square root are rounded; output "
        "codes may be one step apart"
    )
    norm = IntegerLayerNorm(
        torch.round(gain * 2.0**precision).to(torch.int64),
        torch.round(offset * 2.0**precision).to(torch.int64),
        shift,
        precision,
        int(round(eps * 4.0**shift)),
        int(out.zero_point),
        out.quant_min,
        out.quant_max,
        name=name,
        notes=notes,
        source=type(module).__name__,
    )
    return norm, QSpec(out.scale, out.zero_point, None, out.quant_min, out.quant_max)
