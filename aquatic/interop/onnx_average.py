"""ONNX nodes of :class:`~aquatic.integer.average.IntegerAverage`: adaptive average
pooling and means over dimensions, on codes.

The window sums :math:`S = \\sum (q - z_{in})` are written exactly in ``int64``: a
``ReduceSum`` for a mean, and for adaptive pooling one ``MatMul`` per pooled axis with a
0/1 matrix whose column ``i`` selects window ``i`` of
:func:`~aquatic.integer.average.adaptive_windows`. Each sum is then requantized by the
multiplier and shift of ``ratio / window size`` that the module derives
(:func:`~aquatic.integer.requant.quantize_multiplier`, Jacob et al. 2018, section 2.2).
The module picks the multiplier's precision from the largest sum it sees (31 bits while
sums stay below :math:`2^{31}`); the export derives the same 31-bit multipliers from the
input's code range and refuses a layer whose sums could reach :math:`2^{31}`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from aquatic.functional.fake_quant import broadcast_along
from aquatic.integer.average import IntegerAverage, adaptive_windows
from aquatic.integer.requant import quantize_multiplier
from aquatic.interop.onnx_combine import saturate
from aquatic.interop.onnx_graph import GraphBuilder, Value, register_emitter
from aquatic.interop.onnx_requant import channel_constant, normalize_shift, rounding_shift

__all__ = ["emit_average"]

#: The module uses 31-bit multipliers while every window sum is below this.
SUM_LIMIT = 2**31


def _window_matrix(size: int, output: int) -> np.ndarray:
    matrix = np.zeros((size, output), np.int64)
    for i, window in enumerate(adaptive_windows(size, output)):
        matrix[window.start : window.stop, i] = 1
    return matrix


@register_emitter(IntegerAverage)
def emit_average(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """Window sums, requantized by ``ratio / window size``, saturated, as ``int32``."""
    (x,) = inputs
    hint = module.name or "average"
    where = f"layer {module.name!r} (IntegerAverage)"
    if not x.bounded:
        raise ValueError(
            f"{where}: the range of its input codes is unknown, so the export cannot choose "
            "the multipliers the layer uses; quantize the layer before it"
        )
    rank = len(x.shape)
    codes = x.name if x.dtype == torch.int64 else builder.cast(x.name, torch.int64, hint)
    z_in = channel_constant(builder, module.input_zero_point, module.axis, np.int64, f"{hint}_z_in")
    sums = builder.node("Sub", [codes, z_in], f"{hint}_centered")
    if module.mode == "mean":
        axes = builder.constant(np.array(module.dims, np.int64), f"{hint}_axes")
        sums = builder.node("ReduceSum", [sums, axes], f"{hint}_sum", keepdims=int(module.keepdim))
        window = math.prod(x.shape[d] for d in module.dims)
        count = torch.tensor(window, dtype=torch.float64)
    else:
        count = torch.ones((), dtype=torch.float64)
        window = 1
        for offset, target in enumerate(module.output_size):
            axis = rank + offset - len(module.output_size)
            size = x.shape[axis]
            target = size if target == -1 else target
            windows = adaptive_windows(size, target)
            lengths = torch.tensor([len(w) for w in windows], dtype=torch.float64)
            count = count.unsqueeze(-1) * lengths
            window *= max(len(w) for w in windows)
            perm = list(range(rank))
            perm[axis], perm[-1] = perm[-1], perm[axis]
            moved = builder.node("Transpose", [sums], f"{hint}_moved", perm=perm)
            matrix = builder.constant(_window_matrix(size, target), f"{hint}_windows")
            summed = builder.node("MatMul", [moved, matrix], f"{hint}_window_sums")
            sums = builder.node("Transpose", [summed], f"{hint}_sums", perm=perm)
    zero = broadcast_along(module.input_zero_point, module.axis)
    bound = max(int((x.high - zero).abs().max()), int((x.low - zero).abs().max())) * window
    if bound >= SUM_LIMIT:
        raise ValueError(
            f"{where}: its window sums could reach {bound} (codes in [{x.low}, {x.high}], "
            f"{window} per window), at or beyond 2**31, where the layer lowers its "
            "multipliers' precision with the data; use fewer bits or smaller windows"
        )
    ratio = broadcast_along(torch.tensor(module.ratio, dtype=torch.float64), module.axis)
    multiplier, shift = quantize_multiplier(ratio / count, 31)
    multiplier, shift = normalize_shift(multiplier, shift, module.rounding)
    m = builder.constant(multiplier.numpy().astype(np.int64), f"{hint}_multiplier")
    product = builder.node("Mul", [sums, m], f"{hint}_product")
    out = rounding_shift(builder, product, shift, None, module.rounding, hint)
    z_out = channel_constant(
        builder, module.output_zero_point, module.axis, np.int64, f"{hint}_z_out"
    )
    out = builder.node("Add", [out, z_out], f"{hint}_shifted")
    out = saturate(builder, out, module.low, module.high, hint)
    out = builder.cast(out, torch.int32, f"{hint}_out")
    return Value(out, torch.int32, output_shape, module.low, module.high)
