"""When a per-channel :class:`~aquatic.quantizers.UniformQuantizer` may observe and
fake-quantize in one compiled call (:func:`aquatic.functional.fake_quant_jit.minmax_rows_step`).

It may where the result is the same bits as its two steps: a running minimum and
maximum (:class:`~aquatic.observers.MinMaxObserver`'s own merge and qparams), a
symmetric signed range with nearest rounding, one range per channel of axis 0 (a
weight's output channels), a range already observed once, and a contiguous float32 CPU
tensor in eager mode outside ``torch.distributed`` (whose observers reduce extrema
across ranks first). Per tensor, the observer works on Python floats and the
quantization runs in a compiled loop already
(:func:`aquatic.functional.fake_quant_jit.quantize_scalar`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from aquatic.functional import fake_quant_jit
from aquatic.observers import MinMaxObserver
from aquatic.observers.range_checks import distributed, range_limit

__all__ = ["fused_step", "fits"]

# Codes of a covered range stay in it for ranges up to 2**21 codes
# (UniformQuantizer._covers).
_MAX_LEVELS = 1 << 21


def fits(quantizer: Any, observer: Any) -> bool:
    """Whether ``quantizer`` and its ``observer`` are of the kind the fused step computes
    (not yet whether the tensor is)."""
    return (
        quantizer.rounding == "nearest"
        and quantizer.quant_min < 0
        and quantizer.quant_max - quantizer.quant_min < _MAX_LEVELS
        and quantizer.ch_axis == 0
        and isinstance(observer, MinMaxObserver)
        and type(observer)._combine is MinMaxObserver._combine
        and observer.covers_last_batch()
        and observer.symmetric
        and not observer.power_of_two
        and observer.ch_axis == quantizer.ch_axis
        and observer.quant_min == quantizer.quant_min
        and observer.quant_max == quantizer.quant_max
        and observer.initialized
    )


def fused_step(quantizer: Any, input: Tensor) -> Optional[Tensor]:
    """The fake-quantized ``input`` after observing it, in one compiled call; ``None``
    where the quantizer, the tensor or the installation do not allow it (nothing has
    changed then)."""
    observer = quantizer._modules.get("observer")
    if not (
        input.dim() > 0
        and fits(quantizer, observer)
        and fake_quant_jit.applies(input)
        and not (observer.training and distributed())
    ):
        return None
    buffers = observer._buffers
    min_val, max_val = buffers["min_val"], buffers["max_val"]
    if not (
        min_val.dtype == torch.float32
        and max_val.dtype == torch.float32
        and min_val.shape == (input.shape[0],)
        and max_val.shape == min_val.shape
    ):
        return None
    levels = min(quantizer.quant_max, -quantizer.quant_min)
    limit = range_limit(input.dtype, quantizer.quant_min, quantizer.quant_max)
    return fake_quant_jit.minmax_rows_step(input, min_val, max_val, levels, limit)
