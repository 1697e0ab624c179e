"""ONNX nodes of requantization and of ReLU on codes, in integer arithmetic.

:class:`~aquatic.integer.IntegerRequantize` computes
``clamp(round((x - z_in) * m * 2**-n) + z_out, low, high)`` with
:func:`~aquatic.integer.requant.multiply_shift`. ONNX's ``BitShift`` is defined for
unsigned types only, so the rounding shift is written with ``Mod`` and ``Div`` on
``int64`` (onnxruntime's CPU provider runs both on ``int64``): with ``d = 2**n``,

.. math::

    r = p \\bmod d \\in [0, d), \\qquad f = (p - r) / d = \\lfloor p / d \\rfloor

(``Mod`` with ``fmod=0`` takes the sign of the divisor, as Python's ``%``; ``p - r`` is a
multiple of ``d``, so ``Div``, which truncates toward zero in onnxruntime, divides
exactly). Half to even adds one when ``r > d/2``, or when ``r = d/2`` and ``f`` is odd;
floor rounding keeps ``f``. Saturation is ``Max``/``Min`` on ``int64``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from aquatic.functional.fake_quant import broadcast_along
from aquatic.integer.layers import IntegerReLU, IntegerRequantize
from aquatic.interop.onnx_graph import GraphBuilder, Value, register_emitter

__all__ = ["channel_constant", "rounding_shift", "normalize_shift", "emit_requantize", "emit_relu"]

#: The largest shift written as a division: ``2**62`` still fits ``int64``.
MAX_SHIFT = 62


def channel_constant(
    builder: GraphBuilder, value: Tensor, axis: Optional[int], dtype, hint: str
) -> str:
    """An initializer of ``value`` (scalar, or per channel along ``axis`` counted from the
    end) shaped to broadcast as :func:`~aquatic.functional.fake_quant.broadcast_along`."""
    array = broadcast_along(torch.as_tensor(value), axis).numpy().astype(dtype)
    return builder.constant(array, hint)


def rounding_shift(
    builder: GraphBuilder,
    product: str,
    shift: Tensor,
    axis: Optional[int],
    rounding: str,
    hint: str,
) -> str:
    """``product / 2**shift`` (``int64``, ``0 <= shift <= 62``) rounded half to even or down,
    as :func:`~aquatic.integer.requant.rounding_right_shift` rounds it."""
    if not bool((shift > 0).any()):
        return product
    divisor = torch.bitwise_left_shift(torch.ones_like(shift), shift)
    d = channel_constant(builder, divisor, axis, np.int64, f"{hint}_divisor")
    remainder = builder.node("Mod", [product, d], f"{hint}_remainder", fmod=0)
    exact = builder.node("Sub", [product, remainder], f"{hint}_multiple")
    floor = builder.node("Div", [exact, d], f"{hint}_floor")
    if rounding == "floor":
        return floor
    # d/2 where d > 1; for d = 1 the remainder is 0 and a "half" of 1 is never reached.
    half = torch.where(shift > 0, divisor // 2, divisor)
    h = channel_constant(builder, half, axis, np.int64, f"{hint}_half")
    two = builder.constant(np.array(2, np.int64), f"{hint}_two")
    one = builder.constant(np.array(1, np.int64), f"{hint}_one")
    above = builder.node("Greater", [remainder, h], f"{hint}_above")
    tie = builder.node("Equal", [remainder, h], f"{hint}_tie")
    odd = builder.node("Equal", [builder.node("Mod", [floor, two], f"{hint}_parity"), one], hint)
    up = builder.node("Or", [above, builder.node("And", [tie, odd], f"{hint}_tie_odd")], hint)
    return builder.node("Add", [floor, builder.cast(up, torch.int64, f"{hint}_up")], hint)


def normalize_shift(multiplier: Tensor, shift: Tensor, rounding: str) -> Tuple[Tensor, Tensor]:
    """``(multiplier, shift)`` with ``0 <= shift <= 62`` that
    :func:`~aquatic.integer.requant.multiply_shift` maps every product ``|p| < 2**62`` to
    as the given pair does: a negative shift is a left shift (folded into the multiplier),
    and a shift beyond 62 leaves ``|p| / 2**n < 1/2`` (nearest rounding gives 0; floor
    rounding gives the same 0 or -1 as a shift by 62)."""
    multiplier = torch.as_tensor(multiplier, dtype=torch.int64).clone()
    shift = torch.as_tensor(shift, dtype=torch.int64).clone()
    left = (-shift).clamp(min=0)
    multiplier = torch.bitwise_left_shift(multiplier, left)
    shift = shift.clamp(min=0)
    if rounding == "nearest":
        multiplier = torch.where(shift > MAX_SHIFT, 0, multiplier)
    shift = shift.clamp(max=MAX_SHIFT)
    return torch.broadcast_tensors(multiplier, shift)


def _normalized(module: IntegerRequantize) -> Tuple[Tensor, Tensor]:
    return normalize_shift(module.multiplier, module.shift, module.rounding)


@register_emitter(IntegerRequantize)
def emit_requantize(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``clamp(round((x - z_in) * m / 2**n) + z_out, low, high)`` in ``int64``, as int32."""
    (x,) = inputs
    hint = module.name or "requantize"
    axis = module.axis
    codes = builder.cast(x.name, torch.int64, f"{hint}_codes")
    z_in = channel_constant(builder, module.input_zero_point, axis, np.int64, f"{hint}_z_in")
    centered = builder.node("Sub", [codes, z_in], f"{hint}_centered")
    multiplier, shift = _normalized(module)
    m = channel_constant(builder, multiplier, axis, np.int64, f"{hint}_multiplier")
    product = builder.node("Mul", [centered, m], f"{hint}_product")
    rounded = rounding_shift(builder, product, shift, axis, module.rounding, hint)
    z_out = channel_constant(builder, module.output_zero_point, axis, np.int64, f"{hint}_z_out")
    shifted = builder.node("Add", [rounded, z_out], f"{hint}_shifted")
    low = builder.constant(np.array(module.low, np.int64), f"{hint}_low")
    high = builder.constant(np.array(module.high, np.int64), f"{hint}_high")
    clamped = builder.node("Min", [builder.node("Max", [shifted, low], hint), high], hint)
    out = builder.cast(clamped, torch.int32, f"{hint}_out")
    return Value(out, torch.int32, output_shape, module.low, module.high)


@register_emitter(IntegerReLU)
def emit_relu(
    builder: GraphBuilder, module: nn.Module, inputs: Sequence[Value], output_shape
) -> Value:
    """``max(x, z)`` in the input's type (the zero point per channel or one)."""
    (x,) = inputs
    hint = module.name or "relu"
    dtype = np.int64 if x.dtype == torch.int64 else np.int32
    zero = channel_constant(builder, module.zero_point, module.axis, dtype, f"{hint}_zero_point")
    out = builder.node("Max", [x.name, zero], f"{hint}_out")
    low = None
    if x.low is not None:
        low = max(x.low, int(module.zero_point.min()))
    return Value(out, x.dtype, output_shape, low, x.high)
