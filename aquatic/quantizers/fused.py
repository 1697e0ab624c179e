"""When a :class:`~aquatic.quantizers.UniformQuantizer` may observe and fake-quantize in
compiled calls (:mod:`aquatic.functional.fake_quant_jit`) rather than run its observer
and its fake quantization as PyTorch operations and Python code.

It may where the result is the same bits: nearest rounding, an observer of aquatic's
own range rules (:class:`~aquatic.observers.MinMaxObserver` or
:class:`~aquatic.observers.MovingAverageMinMaxObserver`, not a subclass that merges
otherwise) on the quantizer's range without ``power_of_two``, and a contiguous float32
CPU tensor in eager mode outside ``torch.distributed`` (whose observers reduce extrema
across ranks first):

- per channel of axis 0 (a weight's output channels), with a min/max observer on a
  symmetric signed range that has seen a tensor:
  :func:`~aquatic.functional.fake_quant_jit.minmax_rows_step`;
- per tensor: :func:`~aquatic.functional.fake_quant_jit.observe_scalar_step`.

Beside saving passes over the tensor, this saves the dozen small operations and the
Python calls of the two steps, which weigh more inside a training step than alone: the
step's larger tensors push their code and data out of the caches (measured here: an
activation quantizer's forward and backward took 46 µs in a loop, 149 µs after a pass
over 16 MB).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from aquatic.functional import cpu_heap, fake_quant_jit
from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver
from aquatic.observers.range_checks import distributed, range_limit

__all__ = ["fused_step", "fits"]

# Codes of a covered range stay in it for ranges up to 2**21 codes
# (UniformQuantizer._covers).
_MAX_LEVELS = 1 << 21
_RULES = {
    MinMaxObserver._combine_float: "min_max",
    MovingAverageMinMaxObserver._combine_float: "average",
}


def fits(quantizer: Any, observer: Any) -> bool:
    """Whether ``quantizer`` and its ``observer`` are of a kind the compiled calls
    compute (not yet whether the tensor is).

    Example:
        >>> from aquatic.quantizers import UniformQuantizer
        >>> per_tensor, per_channel = UniformQuantizer(), UniformQuantizer(ch_axis=0)
        >>> fits(per_tensor, per_tensor.observer)
        True
        >>> fits(per_channel, per_channel.observer)  # once it has a range
        False
        >>> _ = per_channel(torch.randn(3, 4)); fits(per_channel, per_channel.observer)
        True
        >>> stochastic = UniformQuantizer(rounding="stochastic")
        >>> fits(stochastic, stochastic.observer)
        False
    """
    rule = _RULES.get(getattr(type(observer), "_combine_float", None))
    if rule is None or not isinstance(observer, (MinMaxObserver, MovingAverageMinMaxObserver)):
        return False
    if (
        quantizer.rounding != "nearest"
        or observer.power_of_two
        or observer.ch_axis != quantizer.ch_axis
        or observer.quant_min != quantizer.quant_min
        or observer.quant_max != quantizer.quant_max
    ):
        return False
    if quantizer.ch_axis is None:
        return True  # and observer.supports_scalars(the tensor): see fused_step
    return (
        quantizer.ch_axis == 0
        and rule == "min_max"
        and type(observer)._combine is MinMaxObserver._combine
        and observer.covers_last_batch()
        and observer.symmetric
        and quantizer.quant_min < 0
        and quantizer.quant_max - quantizer.quant_min < _MAX_LEVELS
        and observer.initialized
    )


def fused_step(quantizer: Any, input: Tensor) -> Optional[Tensor]:
    """The fake-quantized ``input`` after observing it, in compiled calls; ``None``
    where the quantizer, the tensor or the installation do not allow it (nothing has
    changed then).

    Shape:
        - input: any shape (per channel: the channels first); output: the same.

    Example:
        >>> from aquatic.quantizers import UniformQuantizer
        >>> q = UniformQuantizer(bits=8)
        >>> y = fused_step(q, torch.tensor([-1.0, 0.26, 2.54]))
        >>> y is None or (y, q.observer.max_val)  # None without Numba
        (tensor([-1.0000,  0.2600,  2.5400]), tensor(2.5400))
        >>> fused_step(q, torch.tensor([1.0, 2.0], dtype=torch.float64)) is None
        True
    """
    observer = quantizer._modules.get("observer")
    if not (
        fits(quantizer, observer)
        and fake_quant_jit.applies(input)
        and not (observer.training and distributed())
        # per tensor: a range its _combine_float merges (the observer's own methods)
        and (quantizer.ch_axis is not None or observer.supports_scalars(input))
    ):
        return None
    cpu_heap.settle(input)  # a large activation: the heap keeps what a step frees
    buffers = observer._buffers
    min_val, max_val = buffers["min_val"], buffers["max_val"]
    channels = () if quantizer.ch_axis is None else (input.shape[0],) if input.dim() else None
    if not (
        min_val.dtype == torch.float32
        and max_val.dtype == torch.float32
        and min_val.shape == channels
        and max_val.shape == channels
        and min_val.is_contiguous()  # the loops read and write them by address
        and max_val.is_contiguous()
    ):
        return None
    quant_min, quant_max = quantizer.quant_min, quantizer.quant_max
    limit = range_limit(input.dtype, quant_min, quant_max)
    if quantizer.ch_axis is not None:
        levels = min(quant_max, -quant_min)
        return fake_quant_jit.minmax_rows_step(input, min_val, max_val, levels, limit)
    rule, factor = fake_quant_jit.MIN_MAX, 0.0
    if isinstance(observer, MovingAverageMinMaxObserver):
        c = observer.averaging_constant
        # MovingAverageMinMaxObserver._combine_float's two forms
        if c < 0.5:
            rule, factor = fake_quant_jit.AVERAGE, c
        else:
            rule, factor = fake_quant_jit.AVERAGE_FROM_BATCH, 1.0 - c
    initialized = observer.initialized
    output = fake_quant_jit.observe_scalar_step(
        input, min_val, max_val, rule, factor, initialized, observer.symmetric, quant_min,
        quant_max, limit, not quantizer._covers(observer),
    )  # fmt: skip
    if output is not None and not initialized:
        observer.initialized = True
    return output
