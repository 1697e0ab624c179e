"""Nearest-rounding affine fake quantization as vectorised tensor ops: torch's bits, faster.

Quantizers reach these kernels through
:func:`aquatic.functional.fake_quant_uniform.fake_quantize_uniform`, which decides when
they apply.

``torch.fake_quantize_per_tensor_affine`` and ``_per_channel_affine`` run a scalar
loop on the CPU (several nanoseconds per element) and their backward multiplies by a
boolean mask, which costs as much again. The same arithmetic written as a handful of
vectorised tensor ops is several times faster, and gives the same bits:

- :math:`x \\cdot (1/s)` in float32 (``1/s`` rounded to float32 first), as the kernels do;
- ``torch.round`` rounds half to even, like the kernels' ``nearbyint``;
- the zero point and the clamp act on integral floats, exact below :math:`2^{24}`;
- :math:`(q - z)\\, s` is one float32 multiplication of an exact integer, correctly
  rounded, which is what the kernels get from their exact double product rounded to
  float32. Zero codes come out as ``+0.0``, as the kernels' integer arithmetic gives.

The gradient is the kernels' rule: the incoming gradient where
:math:`\\mathrm{round}(x/s) + z` lies in :math:`[q_{min}, q_{max}]`, zero elsewhere.
The mask is kept in the input's floating dtype, because comparisons that write floats
and float multiplications are vectorised where boolean ones are not.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from aquatic.functional import fake_quant_jit
from aquatic.functional.fake_quant import broadcast_along
from aquatic.functional.qparams import to_float32

__all__ = ["fake_quantize_nearest", "fake_quantize_nearest_scalar"]


Scalar = Union[Tensor, float, int]

# 0-dim zeros per (dtype, device): ``zero + codes * scale`` rounds once like
# ``codes * scale`` but turns -0.0 into +0.0, in one pass rather than two.
_ZEROS: Dict[Tuple[torch.dtype, torch.device], Tensor] = {}


def _zero(like: Tensor) -> Tensor:
    key = (like.dtype, like.device)
    zero = _ZEROS.get(key)
    if zero is None:
        zero = _ZEROS[key] = torch.zeros((), dtype=like.dtype, device=like.device)
    return zero


def _codes(
    input: Tensor,
    inv_scale: Scalar,
    zero_point: Optional[Scalar],
    quant_min: int,
    quant_max: int,
    clips: bool,
    need_mask: bool,
    out: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Codes ``clamp(round(x * inv_scale) + z)`` as floats and, if asked, the in-range mask
    (``input``'s dtype). ``out``: a float32 buffer for the codes (float32 input only)."""
    # x / s: float32 for reduced-precision inputs, float64 for float64, as the kernels.
    work = input if input.dtype in (torch.float32, torch.float64) else input.float()
    if out is None and torch.compiler.is_compiling() and not work.is_contiguous():
        # The codes take the input's strides, and their buffer is reused below as an
        # ``out=``, which torch.compile refuses when it is not contiguous (a transposed
        # view, such as attention's keys).
        work = work.contiguous()
    codes = torch.mul(work, inv_scale, out=out) if out is not None else torch.mul(work, inv_scale)
    codes.round_()
    if zero_point is not None:
        codes.add_(zero_point)  # also turns -0.0 into +0.0
    mask = None
    if clips:
        if need_mask:
            clamped = torch.clamp(codes, quant_min, quant_max)
            # The mask goes into the codes' buffer, which is free once compared.
            mask = torch.eq(codes, clamped, out=codes)
            if mask.dtype != input.dtype:
                mask = mask.to(input.dtype)
            codes = clamped
        else:
            codes.clamp_(quant_min, quant_max)
    return codes, mask


def _dequantize(
    codes: Tensor,
    scale: Scalar,
    zero_point: Optional[Scalar],
    dtype: torch.dtype,
    per_channel: bool,
    out: Optional[Tensor] = None,
) -> Tensor:
    """``(codes - z) * scale`` in ``dtype``, written to ``out`` if given (``codes`` is
    overwritten)."""
    # The per-tensor kernel forms (q - z) * s in float32 for every input dtype; the
    # per-channel one in the input's dtype (float64 stays float64).
    if codes.dtype == torch.float64 and not per_channel:
        codes = codes.float()
    direct = out is not None and out.dtype == codes.dtype
    target = out if direct else codes
    if zero_point is not None:
        value = torch.mul(codes.sub_(zero_point), scale, out=target)
    elif torch.compiler.is_compiling() or (isinstance(scale, Tensor) and codes.is_cpu):
        # codes * scale, then + 0.0 turns -0.0 into +0.0. Two passes, but on the CPU
        # each is several times faster than torch.addcmul(0, codes, scale), which
        # computes the same bits in one (and a compiled graph fuses them).
        value = torch.mul(codes, scale, out=target).add_(0.0)
    elif isinstance(scale, Tensor):
        # 0 + codes * scale: one rounding, like codes * scale, and -0.0 becomes +0.0.
        value = torch.addcmul(_zero(codes), codes, scale, out=target)
    else:
        # 0 + codes * scale: one rounding, like codes * scale, and -0.0 becomes +0.0.
        value = torch.add(_zero(codes), codes, alpha=scale, out=target)
    if out is not None and not direct:
        return out.copy_(value)
    return value if value.dtype == dtype else value.to(dtype)


def _fake_quantize_values(
    input: Tensor,
    scale: Scalar,
    inv_scale: Scalar,
    zero_point: Optional[Scalar],
    quant_min: int,
    quant_max: int,
    per_channel: bool,
    clips: bool = True,
    need_mask: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Dequantized values and, if asked, the in-range mask (``input``'s dtype); no autograd.

    ``scale``, ``inv_scale`` (float32 ``1/scale``) and ``zero_point`` are tensors shaped
    to broadcast against ``input``, or Python numbers holding float32 values; a
    ``zero_point`` of ``None`` means 0. ``clips=False`` promises that no code leaves the
    range, so the clamp is skipped.
    """
    codes, mask = _codes(input, inv_scale, zero_point, quant_min, quant_max, clips, need_mask)
    return _dequantize(codes, scale, zero_point, input.dtype, per_channel), mask


class _FakeQuantizeNearest(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, scale, inv_scale, zero_point, quant_min, quant_max, per_channel):
        value, mask = _fake_quantize_values(
            input, scale, inv_scale, zero_point, quant_min, quant_max, per_channel, True, True
        )
        ctx.save_for_backward(mask)
        return value

    @staticmethod
    def backward(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None, None, None, None, None, None


class _FakeQuantizeInRange(torch.autograd.Function):
    # No code clips, so the gradient is the identity: no mask to keep or multiply.
    @staticmethod
    def forward(ctx, input, scale, inv_scale, zero_point, quant_min, quant_max, per_channel):
        value, _ = _fake_quantize_values(
            input, scale, inv_scale, zero_point, quant_min, quant_max, per_channel, False
        )
        return value

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None, None, None, None, None, None


# Above this size, the extra tensor that input.clone() or input * mask makes (a pass,
# and on the CPU often fresh pages) costs more than a Python autograd.Function.
_CLONE_LIMIT = 1 << 16


def _apply(input, scale, inv_scale, zero_point, quant_min, quant_max, per_channel, clips):
    if not input.requires_grad or not torch.is_grad_enabled():
        value, _ = _fake_quantize_values(
            input, scale, inv_scale, zero_point, quant_min, quant_max, per_channel, clips
        )
        return value
    if torch.compiler.is_compiling() or input.numel() >= _CLONE_LIMIT:
        function = _FakeQuantizeNearest if clips else _FakeQuantizeInRange
        return function.apply(
            input, scale, inv_scale, zero_point, quant_min, quant_max, per_channel
        )
    # Eager: a built-in op carries the gradient, and its result is then overwritten,
    # through a detached alias (no autograd recording, no no_grad block), with the
    # quantized value. input * mask has the gradient grad * mask, input.clone() the
    # identity; both are C++ autograd nodes, cheaper than a Python autograd.Function.
    detached = input.detach()
    if clips:
        codes, mask = _codes(detached, inv_scale, zero_point, quant_min, quant_max, True, True)
        output = input * mask
        _dequantize(codes, scale, zero_point, input.dtype, per_channel, out=output.detach())
        return output
    output = input.clone()
    target = output.detach()
    buffer = target if input.dtype == torch.float32 else None
    codes, _ = _codes(detached, inv_scale, zero_point, quant_min, quant_max, False, False, buffer)
    _dequantize(codes, scale, zero_point, input.dtype, per_channel, out=target)
    return output


# Copies reduced by _computed_once: more than inductor unrolls into pointwise code
# (torch._inductor.config.unroll_reductions_threshold, 8).
_COPIES = 16


def _computed_once(value: Tensor) -> Tensor:
    """``value`` itself (the maximum of identical copies), computed into a buffer of its own
    under torch.compile.

    Inductor inlines small pointwise computations into the loops that read them, so a
    scale computed from an observed range (a few float divisions) would be recomputed in
    every vector iteration of the fake-quantization loop, for every element block of the
    tensor. A reduction is always computed once, into a buffer; the loop then reads it.
    """
    return value.unsqueeze(-1).expand(*value.shape, _COPIES).amax(-1)


def fake_quantize_nearest(
    input: Tensor,
    scale: Tensor,
    zero_point: Optional[Tensor],
    quant_min: int,
    quant_max: int,
    ch_axis: Optional[int] = None,
    clips: bool = True,
) -> Tensor:
    """Nearest-rounding fake quantization, bit-identical to torch's kernels, faster.

    Equal in values and gradients to :func:`torch.fake_quantize_per_tensor_affine`
    (``ch_axis=None``) or :func:`torch.fake_quantize_per_channel_affine`. Arguments are
    not validated: callers (the quantizers) have checked them once already.

    Args:
        input: floating-point tensor.
        scale: float32 scale, a scalar tensor or one value per channel.
        zero_point: integer zero point shaped like ``scale``, or ``None`` for zero (a
            symmetric quantizer; saves a pass over the tensor).
        quant_min, quant_max: the integer range.
        ch_axis: the channel axis of a per-channel ``scale`` (non-negative), or ``None``.
        clips: ``False`` when the caller knows that every code lies in the range (from
            the tensor's own extrema: codes are monotonic in the input); the clamp and
            the gradient mask are then skipped. The result is the same.

    Shape:
        - input: any shape; output: the same shape and dtype.

    Example:
        >>> x = torch.tensor([-1.0, 0.26, 13.0], requires_grad=True)
        >>> y = fake_quantize_nearest(x, torch.tensor(0.1), None, -128, 127)
        >>> y.detach()
        tensor([-1.0000,  0.3000, 12.7000])
        >>> y.sum().backward(); x.grad
        tensor([1., 1., 0.])
    """
    per_channel = ch_axis is not None and scale.dim() > 0
    # Shaped once, then inverted: the inverse has the shape already (one view fewer).
    scale = broadcast_along(scale, ch_axis, input.dim())
    inv_scale = torch.reciprocal(scale)
    if zero_point is not None:
        zero_point = broadcast_along(zero_point, ch_axis, input.dim())
    if torch.compiler.is_compiling():
        scale, inv_scale = _computed_once(scale), _computed_once(inv_scale)
        if zero_point is not None:
            zero_point = _computed_once(zero_point)
    return _apply(input, scale, inv_scale, zero_point, quant_min, quant_max, per_channel, clips)


def fake_quantize_nearest_scalar(
    input: Tensor,
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    clips: bool = True,
) -> Tensor:
    """:func:`fake_quantize_nearest`, per tensor, with the scale and zero point as numbers.

    No tensor is made for the scale or zero point, which saves several small ops per
    call in eager mode; values and gradients are the same.

    Args:
        input: floating-point tensor.
        scale: the scale, a Python float holding a float32 value (as
            :func:`~aquatic.functional.qparams.calculate_qparams_float` returns).
        zero_point: the integer zero point.
        quant_min, quant_max: the integer range.
        clips: as :func:`fake_quantize_nearest`.

    Shape:
        - input: any shape; output: the same shape and dtype.

    Example:
        >>> fake_quantize_nearest_scalar(torch.tensor([-1.0, 0.26, 13.0]), 0.1, 0, -128, 127)
        tensor([-1.0000,  0.3000, 12.7000])
    """
    inv_scale = to_float32(1.0 / scale)
    # clamp(r + z, qmin, qmax) - z == clamp(r, qmin - z, qmax - z) for the integral
    # floats involved: the zero point moves into the range, two passes fewer.
    if fake_quant_jit.applies(input, dense=True):  # the same arithmetic in one compiled pass
        low, high = float(quant_min - zero_point), float(quant_max - zero_point)
        return fake_quant_jit.quantize_scalar(input, scale, inv_scale, low, high, clips)
    return _apply(
        input, scale, inv_scale, None, quant_min - zero_point, quant_max - zero_point, False, clips
    )
