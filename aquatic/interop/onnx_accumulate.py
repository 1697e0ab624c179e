"""ONNX nodes of the integer accumulators (:class:`~aquatic.integer.IntegerLinear`,
:class:`~aquatic.integer.IntegerConv`), exact in onnxruntime.

The products ``(x - z_x) w`` are summed by an integer kernel where the operands fit 8
bits: ``MatMulInteger`` / ``ConvInteger`` on ``uint8`` operands with zero points (codes
and weights shifted into ``[0, 255]``; the zero points shift them back exactly). Both
operands are ``uint8`` because onnxruntime's x86 kernels for ``uint8 x int8`` may
saturate pairs of products in 16 bits on processors without VNNI (onnxruntime's
quantization guide, "When and why do I need to try U8U8?"); ``uint8 x uint8`` widens
first. Zero padding is an explicit ``Pad`` with the input's zero point (a real zero),
so the convolution itself pads nothing.

Wider codes take an exact route of their own: ``Linear`` multiplies in ``int64``
(``MatMul``), convolutions run in float32, which is exact when every partial sum is an
integer below :math:`2^{24}` in magnitude (certified from the input range and the sums of
``|weight|``; otherwise the export refuses). The left shift (``pre_shift``) and the bias
are then added in ``int64`` and the accumulator is cast to ``int32``, as the module does.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from aquatic.integer.base import INT32_MAX
from aquatic.integer.layers import IntegerConv, IntegerLinear
from aquatic.interop.onnx_graph import FLOAT32_EXACT, GraphBuilder, Value, register_emitter
from aquatic.interop.onnx_requant import channel_constant

__all__ = ["emit_linear", "emit_conv", "uint8_offset"]


def uint8_offset(low: int, high: int, zero: Optional[int] = None) -> Optional[int]:
    """An offset ``c`` with ``[low + c, high + c]`` (and ``zero + c``) inside ``[0, 255]``
    (128 where possible, so that int8 values keep their bit pattern), or ``None``."""
    ends = [low, high] + ([] if zero is None else [zero])
    first, last = -min(ends), 255 - max(ends)
    if first > last:
        return None
    return min(max(128, first), last)


def _where(module: nn.Module) -> str:
    return f"layer {module.name!r} ({module.source or type(module).__name__})"


def _check_input(module: nn.Module, x: Value) -> Tuple[int, int]:
    if not x.bounded:
        raise ValueError(
            f"{_where(module)} receives codes without a known range (e.g. a sum over "
            "time), so the ONNX graph cannot certify its accumulator; quantize that input "
            "with an activation quantizer"
        )
    return x.low, x.high


def _bounds(module: nn.Module, x: Value, out_axis: int, groups: int = 1) -> Tuple[int, int]:
    """``(products, total)``: the largest ``|sum of products|`` of one output, and with
    the left shift and the bias, from the input range and the weights."""
    low, high = _check_input(module, x)
    zero = module.input_zero_point
    magnitude = max(high - int(zero.min()), int(zero.max()) - low, 0)
    weight = module.weight.abs()
    if out_axis == 1:  # transposed: (in, out / groups, *): sums per group and output
        in_channels = weight.shape[0]
        weight = weight.reshape(groups, in_channels // groups, *weight.shape[1:])
        sums = weight.sum(dim=[1] + list(range(3, weight.dim()))).reshape(-1)
    else:
        sums = weight.sum(dim=list(range(1, weight.dim())))
    products = sums * magnitude
    shift = torch.bitwise_left_shift(torch.ones_like(module.pre_shift), module.pre_shift)
    total = products * shift
    if module.bias is not None:
        total = total + module.bias.abs()
    total_max = int(total.max()) if total.numel() else 0
    if total_max > INT32_MAX:
        raise ValueError(
            f"{_where(module)}: inputs in [{low}, {high}] can take the accumulator to "
            f"{total_max}, beyond int32, where the integer model wraps or raises; the ONNX "
            "export refuses it: narrow the input range or use fewer weight bits"
        )
    return (int(products.max()) if products.numel() else 0), total_max


def _finish(builder, module, acc: str, total: int, axis: int, shape, hint: str) -> Value:
    """Left shift and bias in int64, then int32 (as ``_Accumulator._finish``)."""
    acc = builder.cast(acc, torch.int64, f"{hint}_acc")
    if bool((module.pre_shift > 0).any()):
        factor = torch.bitwise_left_shift(torch.ones_like(module.pre_shift), module.pre_shift)
        scale = channel_constant(builder, factor, axis, np.int64, f"{hint}_pre_shift")
        acc = builder.node("Mul", [acc, scale], f"{hint}_shifted")
    if module.bias is not None:
        bias = channel_constant(builder, module.bias, axis, np.int64, f"{hint}_bias")
        acc = builder.node("Add", [acc, bias], f"{hint}_biased")
    out = builder.cast(acc, torch.int32, f"{hint}_out")
    return Value(out, torch.int32, shape, -total, total)


def _uint8_operands(builder, module, x: Value, weight: Tensor, hint: str):
    """``(x_u8, x_zero, w_u8, w_zero)`` for an 8-bit integer kernel, or ``None``."""
    zero = module.input_zero_point
    if zero.dim() != 0 or not weight.numel():
        return None
    x_offset = uint8_offset(x.low, x.high, int(zero))
    w_offset = uint8_offset(int(weight.min()), int(weight.max()), 0)
    if x_offset is None or w_offset is None:
        return None
    shift = builder.constant(np.array(x_offset, np.int32), f"{hint}_input_offset")
    moved = builder.node("Add", [builder.cast(x.name, torch.int32, hint), shift], hint)
    x_u8 = builder.cast(moved, torch.uint8, f"{hint}_input_u8")
    x_zero = builder.constant(np.array(int(zero) + x_offset, np.uint8), f"{hint}_input_zero")
    w_u8 = builder.constant((weight + w_offset).numpy().astype(np.uint8), f"{hint}_weight_u8")
    w_zero = builder.constant(np.array(w_offset, np.uint8), f"{hint}_weight_zero")
    return x_u8, x_zero, w_u8, w_zero


def _centered(builder, module, x: Value, dtype, axis: Optional[int], hint: str) -> str:
    """``x - z_x`` in ``dtype`` (``int64``, or float32 for the exact float route)."""
    codes = builder.cast(x.name, torch.int64, f"{hint}_codes")
    zero = channel_constant(builder, module.input_zero_point, axis, np.int64, f"{hint}_zero")
    centered = builder.node("Sub", [codes, zero], f"{hint}_centered")
    return builder.cast(centered, dtype, f"{hint}_centered")


@register_emitter(IntegerLinear)
def emit_linear(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``MatMulInteger`` on uint8 operands, else ``MatMul`` in ``int64``."""
    (x,) = inputs
    hint = module.name or "linear"
    _, total = _bounds(module, x, 0)
    operands = _uint8_operands(builder, module, x, module.weight.T.contiguous(), hint)
    if operands is not None:
        x_u8, x_zero, w_u8, w_zero = operands
        acc = builder.node("MatMulInteger", [x_u8, w_u8, x_zero, w_zero], f"{hint}_matmul")
    else:
        centered = _centered(builder, module, x, torch.int64, module.input_axis, hint)
        weight = builder.constant(module.weight.T.numpy().astype(np.int64), f"{hint}_weight")
        acc = builder.node("MatMul", [centered, weight], f"{hint}_matmul")
    return _finish(builder, module, acc, total, -1, output_shape, hint)


def _conv_attributes(module: nn.Module, pads) -> dict:
    attributes = dict(
        strides=list(module.stride),
        dilations=list(module.dilation),
        group=module.groups,
        kernel_shape=list(module.weight.shape[2:]),
        pads=list(pads),
    )
    if module.transposed:
        attributes["output_padding"] = list(module.output_padding)
    return attributes


@register_emitter(IntegerConv)
def emit_conv(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``Pad`` + ``ConvInteger`` on uint8 operands, else an exact float32 ``Conv``."""
    (x,) = inputs
    hint = module.name or "conv"
    if len(x.shape) != module.dim + 2:
        raise ValueError(
            f"{_where(module)} receives a {len(x.shape)}-d input; the ONNX export writes "
            f"(N, C, *) inputs of {module.dim + 2} dimensions (no time axis)"
        )
    products, total = _bounds(module, x, 1 if module.transposed else 0, module.groups)
    axis = -module.dim - 1
    operands = None
    if not module.transposed:
        operands = _uint8_operands(builder, module, x, module.weight, hint)
    if operands is not None:
        x_u8, x_zero, w_u8, w_zero = operands
        pads = [0] * module.dim
        if any(module.padding):
            widths = [0, 0] + list(module.padding)
            sizes = builder.constant(np.array(widths * 2, np.int64), f"{hint}_pads")
            x_u8 = builder.node("Pad", [x_u8, sizes, x_zero], f"{hint}_padded")
        attributes = _conv_attributes(module, pads * 2)
        acc = builder.node(
            "ConvInteger", [x_u8, w_u8, x_zero, w_zero], f"{hint}_conv", **attributes
        )
    else:
        low, high = _check_input(module, x)
        zero = module.input_zero_point
        largest = max(high - int(zero.min()), int(zero.max()) - low)
        if max(products, largest) >= FLOAT32_EXACT:
            raise ValueError(
                f"{_where(module)}: its codes do not fit 8 bits, and its sums can reach "
                f"{max(products, largest)}, beyond float32's exact integers (2**24), so no "
                "exact onnxruntime kernel computes it; use at most 8-bit inputs and weights "
                "for this layer"
            )
        centered = _centered(builder, module, x, torch.float32, module.input_axis, hint)
        weight = builder.constant(module.weight.numpy().astype(np.float32), f"{hint}_weight")
        op = "ConvTranspose" if module.transposed else "Conv"
        attributes = _conv_attributes(module, list(module.padding) * 2)
        acc = builder.node(op, [centered, weight], f"{hint}_conv", **attributes)
    return _finish(builder, module, acc, total, axis, output_shape, hint)
