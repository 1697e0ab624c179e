"""A faster eager path for nearest-rounding affine fake quantization.

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

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["fake_quantize_nearest"]


def _per_channel_view(param: Tensor, input: Tensor, ch_axis: Optional[int]) -> Tensor:
    if ch_axis is None or param.dim() == 0:
        return param
    shape = [1] * input.dim()
    shape[ch_axis] = -1
    return param.reshape(shape)


def _fake_quantize_values(
    input: Tensor,
    scale: Tensor,
    zero_point: Optional[Tensor],
    quant_min: int,
    quant_max: int,
    ch_axis: Optional[int],
    clips: bool = True,
    need_mask: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Dequantized values and, if asked, the in-range mask (``input``'s dtype); no autograd.

    ``clips=False`` promises that no code leaves the range, so the clamp is skipped.
    """
    inv_scale = _per_channel_view(torch.reciprocal(scale), input, ch_axis)
    # x / s: float32 for reduced-precision inputs, float64 for float64, as the kernels.
    work = input if input.dtype in (torch.float32, torch.float64) else input.float()
    codes = torch.mul(work, inv_scale).round_()
    zp = None if zero_point is None else _per_channel_view(zero_point, input, ch_axis)
    if zp is None:
        codes.add_(0.0)  # -0.0 -> +0.0
    else:
        codes.add_(zp)
    mask = None
    if clips:
        if need_mask:
            clamped = torch.clamp(codes, quant_min, quant_max)
            # The mask goes into the codes' buffer, which is free once compared.
            mask = torch.eq(codes, clamped, out=codes)
            codes = clamped
        else:
            codes.clamp_(quant_min, quant_max)
    if zp is not None:
        codes.sub_(zp)
    # The per-tensor kernel forms (q - z) * s in float32 for every input dtype; the
    # per-channel one in the input's dtype (float64 stays float64).
    if codes.dtype == torch.float64 and ch_axis is None:
        codes = codes.float()
    value = codes.mul_(_per_channel_view(scale, input, ch_axis))
    if value.dtype != input.dtype:
        value = value.to(input.dtype)
    if mask is not None and mask.dtype != input.dtype:
        mask = mask.to(input.dtype)
    return value, mask


class _FakeQuantizeNearest(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, scale, zero_point, quant_min, quant_max, ch_axis):
        value, mask = _fake_quantize_values(
            input, scale, zero_point, quant_min, quant_max, ch_axis, need_mask=True
        )
        ctx.save_for_backward(mask)
        return value

    @staticmethod
    def backward(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None, None, None, None, None


class _FakeQuantizeInRange(torch.autograd.Function):
    # No code clips, so the gradient is the identity: no mask to keep or multiply.
    @staticmethod
    def forward(ctx, input, scale, zero_point, quant_min, quant_max, ch_axis):
        value, _ = _fake_quantize_values(
            input, scale, zero_point, quant_min, quant_max, ch_axis, clips=False
        )
        return value

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None, None, None, None, None


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
            symmetric quantizer; saves two passes over the tensor).
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
    if not input.requires_grad or not torch.is_grad_enabled():
        value, _ = _fake_quantize_values(
            input, scale, zero_point, quant_min, quant_max, ch_axis, clips
        )
        return value
    function = _FakeQuantizeNearest if clips else _FakeQuantizeInRange
    return function.apply(input, scale, zero_point, quant_min, quant_max, ch_axis)
