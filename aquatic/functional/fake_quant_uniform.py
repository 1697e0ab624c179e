"""Uniform affine fake quantization: the one entry point that picks the kernel.

:func:`fake_quantize_uniform` computes the affine fake quantization of
:mod:`aquatic.functional.fake_quant` (Jacob et al. 2018; values and gradients of
:func:`torch.fake_quantize_per_tensor_affine` / ``_per_channel_affine`` for nearest
rounding) and chooses how:

- ``rounding="floor"`` or ``"stochastic"``: :func:`~aquatic.functional.fake_quantize_affine`;
- nearest rounding, ``scale`` a Python float (one range, the observer's scalar path):
  :func:`~aquatic.functional.fake_quant_nearest.fake_quantize_nearest_scalar`;
- nearest rounding, ``scale`` a tensor (per tensor or per channel):
  :func:`~aquatic.functional.fake_quant_nearest.fake_quantize_nearest`, vectorised.

With ``extrema`` (the input's minimum and maximum, which an observer has just computed)
it also checks whether any code clips; when none does, the clamp and the gradient mask
are skipped. The result is the same either way.

Where a layer's weight is quantized, from :class:`aquatic.nn.Linear`:

1. ``Linear.forward`` calls its weight quantizer (through ``quantized_weight_and_bias``,
   which :mod:`aquatic.nn.twin` shares among the layers). Every quantizer runs the
   template :meth:`aquatic.quantizers.Quantizer.forward`: check the input, ``observe``
   it (a :class:`~aquatic.quantizers.UniformQuantizer` updates its observer, which
   returns the batch extrema), then ``fake_quantize`` it.
2. :meth:`UniformQuantizer.fake_quantize <aquatic.quantizers.UniformQuantizer.fake_quantize>`
   takes the scale and zero point (fixed, or from the observer: tensors, or Python
   floats for one range on the CPU) and calls :func:`fake_quantize_uniform`, here.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from aquatic.functional.fake_quant import (
    check_axis,
    check_range,
    fake_quantize_affine_kernel,
)
from aquatic.functional.qparam_checks import check_float_input
from aquatic.functional.fake_quant_nearest import (
    fake_quantize_nearest,
    fake_quantize_nearest_scalar,
)
from aquatic.functional.qparams import to_float32

__all__ = ["fake_quantize_uniform"]

# Without extrema, a per-tensor input at least this large that needs a gradient gets
# one aminmax pass: cheaper than the clamp, mask and masked gradient it usually saves.
_PROBE_MIN = 4096

Number = Union[int, float]


def fake_quantize_uniform(
    input: Tensor,
    scale: Union[Tensor, float],
    zero_point: Union[Tensor, int, None],
    quant_min: int,
    quant_max: int,
    ch_axis: Optional[int] = None,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
    extrema: Optional[Sequence[Union[Tensor, Number]]] = None,
    in_range: bool = False,
) -> Tensor:
    """Fake-quantize ``input`` on a uniform affine grid, with the fastest exact kernel.

    Equal, values and gradients, to :func:`~aquatic.functional.fake_quantize_affine`
    with the same arguments (for nearest rounding: torch's fake-quantize kernels).

    Args:
        input: floating-point tensor.
        scale: float32 scale, a scalar tensor or one per channel; or a Python float
            holding a float32 value (per tensor, as
            :func:`~aquatic.functional.qparams.calculate_qparams_float` gives).
        zero_point: integer zero point shaped like ``scale`` (an int for a float
            ``scale``), or ``None`` for 0, which saves two passes over the tensor.
        quant_min, quant_max: the integer range.
        ch_axis: the channel axis of a per-channel ``scale``; ``None`` for per tensor.
        rounding: ``"nearest"`` (half to even), ``"floor"`` or ``"stochastic"``.
        generator: random number generator for stochastic rounding.
        extrema: ``(min, max)`` of ``input`` if the caller knows them (per channel
            where ``scale`` is; Python floats holding float32 values for a float
            ``scale``), so that nearest rounding can skip the clamp when no code clips.
            They must bound ``input``'s values, or the result may leave the range.
        in_range: ``True`` promises that no code of ``input`` leaves
            ``[quant_min, quant_max]`` (nearest rounding only), so that neither the
            clamp nor the check for it runs: a quantizer knows it when its scale was
            just computed to cover this very input (see
            :meth:`aquatic.observers.RangeObserver.covers_last_batch`). A false promise
            gives values outside the range.

    Shape:
        - input: any shape; output: the same shape and dtype.

    Raises:
        TypeError: if ``input`` is not a floating-point tensor.
        ValueError: for an empty range, a ``ch_axis`` outside ``input``, or a Python
            float ``scale`` with a ``ch_axis``.

    Example:
        >>> x = torch.tensor([-1.0, 0.26, 13.0], requires_grad=True)
        >>> y = fake_quantize_uniform(x, 0.1, 0, -128, 127)
        >>> y.detach()
        tensor([-1.0000,  0.3000, 12.7000])
        >>> y.sum().backward(); x.grad
        tensor([1., 1., 0.])
        >>> fake_quantize_uniform(x.detach(), torch.tensor(0.1), None, -128, 127,
        ...                       rounding="floor")
        tensor([-1.0000,  0.2000, 12.7000])
    """
    # The checks run on every call: the usual case costs two tests, not four calls.
    if not (isinstance(input, Tensor) and input.is_floating_point()):
        check_float_input(input)
    if not (type(quant_min) is int and type(quant_max) is int and quant_min < quant_max):
        check_range(quant_min, quant_max)
    tensor_scale = isinstance(scale, Tensor)
    if not tensor_scale and ch_axis is not None:
        raise ValueError(
            f"a Python number scale is one scale per tensor, but ch_axis={ch_axis} was "
            "given; pass one scale per channel as a tensor, or ch_axis=None"
        )
    if rounding != "nearest":
        return fake_quantize_affine_kernel(
            input,
            scale if tensor_scale else torch.tensor(scale, dtype=torch.float32),
            _zero_point_tensor(zero_point, scale if tensor_scale else None),
            quant_min,
            quant_max,
            check_axis(input, ch_axis),
            rounding,
            generator,
        )
    if not tensor_scale:
        if in_range:
            zero_point = 0 if zero_point is None else int(zero_point)
            return fake_quantize_nearest_scalar(
                input, float(scale), zero_point, quant_min, quant_max, False
            )
        return _per_tensor_scalar(input, scale, zero_point, quant_min, quant_max, extrema)
    ch_axis = check_axis(input, ch_axis)
    if scale.dtype != torch.float32:
        scale = scale.float()
    clips = not in_range
    if (
        clips
        and extrema is not None
        and input.is_cpu
        and input.dtype != torch.float64
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    ):
        # One sync, cheap on the CPU (on a GPU or in a compiled graph the masked path
        # costs less than a sync; a traced graph must clamp whatever its inputs).
        clips = _codes_clip(extrema, scale, zero_point, quant_min, quant_max)
    return fake_quantize_nearest(input, scale, zero_point, quant_min, quant_max, ch_axis, clips)


def _zero_point_tensor(zero_point: Union[Tensor, int, None], scale: Optional[Tensor]) -> Tensor:
    if isinstance(zero_point, Tensor):
        return zero_point
    device = scale.device if scale is not None else None
    return torch.tensor(zero_point or 0, dtype=torch.int32, device=device)


def _per_tensor_scalar(
    input: Tensor,
    scale: Number,
    zero_point: Union[Tensor, int, None],
    quant_min: int,
    quant_max: int,
    extrema: Optional[Sequence[Union[Tensor, Number]]],
) -> Tensor:
    """Nearest rounding with the scale and zero point as Python numbers."""
    scale = float(scale)
    zero_point = 0 if zero_point is None else int(zero_point)
    clips = True
    # float64 inputs are divided in float64 by the kernels; the float32 check below
    # would not be theirs.
    if input.dtype != torch.float64:
        tracing = torch.jit.is_tracing()  # a traced graph must clamp whatever its inputs
        if (
            extrema is None
            and input.requires_grad
            and input.numel() >= _PROBE_MIN
            and input.is_cpu
            and not torch.compiler.is_compiling()
            and not tracing
        ):
            low, high = torch.aminmax(input.detach())
            extrema = (low.item(), high.item())
        if extrema is not None and not tracing:
            low, high = float(extrema[0]), float(extrema[1])
            clips = _codes_clip_scalar(low, high, scale, zero_point, quant_min, quant_max)
    return fake_quantize_nearest_scalar(input, scale, zero_point, quant_min, quant_max, clips)


def _codes_clip(
    extrema: Sequence[Union[Tensor, Number]],
    scale: Tensor,
    zero_point: Optional[Tensor],
    quant_min: int,
    quant_max: int,
) -> bool:
    """Whether any code of a tensor with these (float32) extrema leaves the range.

    Codes ``round(x * (1/s)) + z`` are monotonic in ``x``, so the extreme codes are
    those of the extrema, computed with the kernels' float32 arithmetic.
    """
    if isinstance(extrema[0], Tensor):
        ends = torch.stack(tuple(extrema))
        if ends.dtype != torch.float32:
            ends = ends.float()
    else:
        ends = torch.tensor(tuple(extrema), dtype=torch.float32, device=scale.device)
    ends.mul_(torch.reciprocal(scale)).round_()
    if zero_point is not None:
        ends.add_(zero_point)
    if ends.dim() > 1:
        ends = torch.stack(torch.aminmax(ends))
    low, high = ends.tolist()
    return not (quant_min <= low and high <= quant_max)


def _codes_clip_scalar(
    low: float, high: float, scale: float, zero_point: int, quant_min: int, quant_max: int
) -> bool:
    """:func:`_codes_clip` with Python floats (float32 values), the same arithmetic."""
    inv_scale = to_float32(1.0 / scale)
    low, high = to_float32(low * inv_scale), to_float32(high * inv_scale)
    if not (math.isfinite(low) and math.isfinite(high)):
        return True
    return not (quant_min <= round(low) + zero_point and round(high) + zero_point <= quant_max)
