"""ONNX nodes of the integer modules that commute with quantization: max pooling, sum
pooling, reshaping and sums over a dimension (:mod:`aquatic.integer.pooling`).

onnxruntime's ``MaxPool`` takes no ``int32``, so codes are pooled as float64, which
holds every ``int32`` exactly; sum pooling is a float32 convolution with a window of
ones, exact while every window sum stays below :math:`2^{24}` (checked from the range).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from aquatic.integer.pooling import IntegerMaxPool, IntegerReshape, IntegerSum, IntegerSumPool
from aquatic.interop.onnx_graph import FLOAT32_EXACT, GraphBuilder, Value, register_emitter

__all__ = ["emit_maxpool", "emit_sumpool", "emit_reshape", "emit_sum"]


def _where(module: nn.Module) -> str:
    return f"layer {module.name!r} ({module.source or type(module).__name__})"


def _no_time_axis(module: nn.Module, x: Value) -> None:
    if len(x.shape) != module.dim + 2:
        raise ValueError(
            f"{_where(module)} receives a {len(x.shape)}-d input; the ONNX export writes "
            f"(N, C, *) inputs of {module.dim + 2} dimensions (no time axis)"
        )


@register_emitter(IntegerMaxPool)
def emit_maxpool(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``MaxPool`` of the codes as float64 (exact), cast back to the input's type."""
    (x,) = inputs
    _no_time_axis(module, x)
    hint = module.name or "maxpool"
    codes = builder.cast(x.name, torch.float64, f"{hint}_codes")
    pooled = builder.node(
        "MaxPool",
        [codes],
        f"{hint}_pooled",
        kernel_shape=list(module.kernel_size),
        strides=list(module.stride),
        pads=list(module.padding) * 2,
        dilations=list(module.dilation),
        ceil_mode=int(module.ceil_mode),
    )
    out = builder.cast(pooled, x.dtype, f"{hint}_out")
    return Value(out, x.dtype, output_shape, x.low, x.high)


@register_emitter(IntegerSumPool)
def emit_sumpool(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """Window sums of ``x - z``: a float32 ``Conv`` with ones over ``(-1, 1, *window)``."""
    (x,) = inputs
    hint = module.name or "sumpool"
    dim = module.dim
    if not x.bounded:
        raise ValueError(f"{_where(module)} receives codes without a known range")
    zero = int(module.zero_point)
    magnitude = max(abs(x.high - zero), abs(x.low - zero))
    bound = magnitude * math.prod(module.kernel_size)
    if bound >= FLOAT32_EXACT:
        raise ValueError(
            f"{_where(module)}: window sums can reach {bound}, beyond float32's exact "
            "integers (2**24); use fewer input bits or a smaller window"
        )
    codes = builder.cast(x.name, torch.int64, f"{hint}_codes")
    z = builder.constant(np.array(zero, np.int64), f"{hint}_zero")
    centered = builder.cast(builder.node("Sub", [codes, z], hint), torch.float32, hint)
    spatial = list(x.shape[-dim:])
    flat = builder.constant(np.array([-1, 1] + spatial, np.int64), f"{hint}_flat_shape")
    flat = builder.node("Reshape", [centered, flat], f"{hint}_flat")
    window = builder.constant(np.ones([1, 1] + list(module.kernel_size), np.float32), hint)
    summed = builder.node(
        "Conv",
        [flat, window],
        f"{hint}_summed",
        kernel_shape=list(module.kernel_size),
        strides=list(module.stride),
        pads=list(module.padding) * 2,
    )
    shape = builder.constant(np.array([-1] + list(output_shape[1:]), np.int64), f"{hint}_shape")
    out = builder.node("Reshape", [summed, shape], f"{hint}_out")
    out = builder.cast(out, torch.int32, f"{hint}_out")
    return Value(out, torch.int32, output_shape, -bound, bound)


@register_emitter(IntegerReshape)
def emit_reshape(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``Reshape`` to the example's output shape, keeping a varying batch axis."""
    (x,) = inputs
    hint = module.name or "reshape"
    first = module.start_dim if module.op == "flatten" else module.dim
    keeps_batch = first % len(x.shape) != 0
    target = list(output_shape)
    target[0] = 0 if keeps_batch else -1  # 0: copy the input's batch size
    shape = builder.constant(np.array(target, np.int64), f"{hint}_shape")
    out = builder.node("Reshape", [x.name, shape], f"{hint}_out")
    return Value(out, x.dtype, output_shape, x.low, x.high)


@register_emitter(IntegerSum)
def emit_sum(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``ReduceSum`` over ``dim`` in ``int64`` (the module sums in ``int64``)."""
    (x,) = inputs
    hint = module.name or "sum"
    dim = module.dim % len(x.shape)
    if dim == 0:
        raise ValueError(f"{_where(module)} sums over the batch axis, which the export varies")
    codes = builder.cast(x.name, torch.int64, f"{hint}_codes")
    axes = builder.constant(np.array([dim], np.int64), f"{hint}_axes")
    out = builder.node("ReduceSum", [codes, axes], f"{hint}_out", keepdims=0)
    count = x.shape[dim]
    low = None if x.low is None else min(x.low * count, x.low)
    high = None if x.high is None else max(x.high * count, x.high)
    return Value(out, torch.int64, output_shape, low, high)
