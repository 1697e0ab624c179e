"""ONNX nodes of the integer operations between layers of a graph: where tensors meet
(:class:`~aquatic.integer.graph_ops.IntegerCombine`), sums over dimensions
(:class:`~aquatic.integer.graph_ops.IntegerReduceSum`) and clamps
(:class:`~aquatic.integer.clamp.IntegerClamp`).

Everything is computed in ``int64`` as the modules compute it: centered codes
``q - z``, the products with the integer multipliers, and the rounding shift of
:func:`aquatic.interop.onnx_requant.rounding_shift` (Jacob et al. 2018, section 2.2, for
the fixed-point rescaling), then the output zero point and the saturation.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from aquatic.integer.base import output_dtype
from aquatic.integer.clamp import IntegerClamp
from aquatic.integer.graph_ops import IntegerCombine, IntegerReduceSum
from aquatic.interop.onnx_graph import GraphBuilder, Value, register_emitter
from aquatic.interop.onnx_requant import channel_constant, normalize_shift, rounding_shift

__all__ = ["emit_combine", "emit_reduce_sum", "emit_clamp", "saturate"]


def _int64(builder: GraphBuilder, x: Value, hint: str) -> str:
    return x.name if x.dtype == torch.int64 else builder.cast(x.name, torch.int64, hint)


def _scaled(builder: GraphBuilder, value: str, multiplier, shift, rounding: str, hint: str) -> str:
    """``round(value * multiplier * 2**-shift)`` on ``int64``, as ``multiply_shift``."""
    multiplier, shift = normalize_shift(multiplier, shift, rounding)
    if int(multiplier) != 1:
        m = builder.constant(np.array(int(multiplier), np.int64), f"{hint}_multiplier")
        value = builder.node("Mul", [value, m], f"{hint}_product")
    return rounding_shift(builder, value, shift, None, rounding, hint)


def saturate(
    builder: GraphBuilder, value: str, low: Optional[int], high: Optional[int], hint: str
) -> str:
    """``Max``/``Min`` of an ``int64`` tensor with the bounds that are not ``None``."""
    if low is not None:
        value = builder.node(
            "Max", [value, builder.constant(np.array(low, np.int64), f"{hint}_low")], hint
        )
    if high is not None:
        value = builder.node(
            "Min", [value, builder.constant(np.array(high, np.int64), f"{hint}_high")], hint
        )
    return value


@register_emitter(IntegerCombine)
def emit_combine(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``add``, ``mul`` or ``cat`` of codes on different grids, requantized in ``int64``."""
    if len(inputs) != module.multipliers.numel():
        raise ValueError(
            f"layer {module.name!r} (IntegerCombine) takes {module.multipliers.numel()} "
            f"inputs, got {len(inputs)}"
        )
    hint = module.name or module.op
    centered = []
    for i, x in enumerate(inputs):
        codes = _int64(builder, x, f"{hint}_codes{i}")
        zero = int(module.input_zero_points[i])
        if zero:
            z = builder.constant(np.array(zero, np.int64), f"{hint}_z{i}")
            codes = builder.node("Sub", [codes, z], f"{hint}_centered{i}")
        centered.append(codes)
    if module.op == "add":
        terms = []
        for i, codes in enumerate(centered):
            m = builder.constant(np.array(int(module.multipliers[i]), np.int64), f"{hint}_m{i}")
            terms.append(builder.node("Mul", [codes, m], f"{hint}_term{i}"))
        acc = terms[0]
        for term in terms[1:]:
            acc = builder.node("Add", [acc, term], f"{hint}_sum")
        out = _scaled(builder, acc, 1, module.shifts[0], module.rounding, hint)
    elif module.op == "mul":
        acc = centered[0]
        for codes in centered[1:]:
            acc = builder.node("Mul", [acc, codes], f"{hint}_product")
        out = _scaled(builder, acc, module.multipliers[0], module.shifts[0], module.rounding, hint)
    else:
        parts = [
            _scaled(
                builder,
                codes,
                module.multipliers[i],
                module.shifts[i],
                module.rounding,
                f"{hint}{i}",
            )
            for i, codes in enumerate(centered)
        ]
        out = builder.node("Concat", parts, f"{hint}_cat", axis=module.dim)
    if module.output_zero_point:
        z_out = builder.constant(np.array(module.output_zero_point, np.int64), f"{hint}_z_out")
        out = builder.node("Add", [out, z_out], f"{hint}_shifted")
    out = saturate(builder, out, module.low, module.high, hint)
    dtype = output_dtype(module.low, module.high)
    if dtype != torch.int64:
        out = builder.cast(out, dtype, f"{hint}_out")
    return Value(out, dtype, output_shape, module.low, module.high)


@register_emitter(IntegerReduceSum)
def emit_reduce_sum(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``ReduceSum`` of ``q - z`` over the module's dimensions, in ``int64``, as ``int32``
    (the module's type)."""
    (x,) = inputs
    hint = module.name or "reduce_sum"
    codes = _int64(builder, x, f"{hint}_codes")
    if module.zero_point:
        z = builder.constant(np.array(module.zero_point, np.int64), f"{hint}_z")
        codes = builder.node("Sub", [codes, z], f"{hint}_centered")
    axes = builder.constant(np.array(module.dims, np.int64), f"{hint}_axes")
    total = builder.node("ReduceSum", [codes, axes], f"{hint}_sum", keepdims=int(module.keepdim))
    out = builder.cast(total, torch.int32, f"{hint}_out")
    low = high = None
    if x.bounded:
        count = 1
        for d in module.dims:
            count *= x.shape[d]
        low, high = (x.low - module.zero_point) * count, (x.high - module.zero_point) * count
    return Value(out, torch.int32, output_shape, low, high)


@register_emitter(IntegerClamp)
def emit_clamp(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``Min(Max(q, low), high)`` in the input's type (bounds per tensor or per channel)."""
    (x,) = inputs
    hint = module.name or "clamp"
    dtype = np.int64 if x.dtype == torch.int64 else np.int32
    low = channel_constant(builder, module.low, module.axis, dtype, f"{hint}_low")
    high = channel_constant(builder, module.high, module.axis, dtype, f"{hint}_high")
    out = builder.node("Min", [builder.node("Max", [x.name, low], hint), high], f"{hint}_out")
    lows, highs = int(module.low.min()), int(module.high.max())
    new_low = lows if x.low is None else max(x.low, lows)
    new_high = highs if x.high is None else min(x.high, highs)
    return Value(out, x.dtype, output_shape, min(new_low, new_high), max(new_low, new_high))
