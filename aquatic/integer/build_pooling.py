"""Building the integer models of pooling: sum pooling, adaptive average pooling and
means, and the requantizer of a pooling layer's output quantizer."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.average import IntegerAverage
from aquatic.integer.build import build_requantize
from aquatic.integer.pooling import IntegerSumPool
from aquatic.integer.reading import read_grid
from aquatic.integer.requant import is_power_of_two

__all__ = ["build_adaptive_pool", "build_window_sum", "with_output_quantizer"]


def _tuple(value, dim: int) -> List[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * dim


def with_output_quantizer(
    name: str, module: nn.Module, modules: List[IntegerModule], spec: QSpec, where: str
) -> Tuple[List[IntegerModule], QSpec]:
    """``(modules, spec)``, followed by the requantizer of ``module``'s output quantizer
    (``QConfig.activation`` of an aquatic pooling layer), if it has one."""
    quantizers = getattr(module, "quantizers", {})
    if "activation" not in quantizers:
        return modules, spec
    source = type(module).__name__
    requant, spec = build_requantize(
        f"{name}.activation", quantizers["activation"], spec, f"{where}, 'activation'", source
    )
    return modules + [requant], spec


def build_window_sum(
    name: str, module: nn.Module, spec: QSpec, where: str, dim: int
) -> Tuple[List[IntegerModule], QSpec]:
    """Sum pooling (:class:`aquatic.nn.SumPool2d`): the window sums of ``code - zero
    point``, on the input's scale."""
    if module.ceil_mode:
        raise ValueError(
            f"{where} sums partial windows (ceil_mode=True); the integer model needs "
            "ceil_mode=False"
        )
    kernel = _tuple(module.kernel_size, dim)
    stride = _tuple(module.stride if module.stride else module.kernel_size, dim)
    pool = IntegerSumPool(
        dim, kernel, stride, [0] * dim, spec.zero_point, name=name, source=type(module).__name__
    )
    magnitude = spec.magnitude()
    bound = None if magnitude is None else magnitude * math.prod(kernel)
    low = None if bound is None else -bound
    return [pool], QSpec(spec.scale, torch.tensor(0), spec.axis, low, bound)


def _average(
    name: str,
    spec: QSpec,
    where: str,
    source: str,
    quantizer: Optional[nn.Module],
    window: Optional[int],
    **config,
) -> Tuple[List[IntegerModule], QSpec]:
    notes: List[str] = []
    if quantizer is not None:
        grid = read_grid(quantizer, f"{where}, quantizer 'activation'", notes)
        if grid.scale.dim() != 0 or grid.zero_point.dim() != 0:
            raise ValueError(
                f"{where} quantizes its output per channel; the integer model supports "
                "per-tensor activation quantizers only (use ch_axis=None)"
            )
        ratio = spec.scale / grid.scale
        out = QSpec(grid.scale, grid.zero_point, None, grid.quant_min, grid.quant_max)
        rounding, output_zero_point = grid.rounding, grid.zero_point
        if not is_power_of_two(ratio):
            notes.append(
                f"{where}: the scale ratio {float(ratio.flatten()[0]):.6g} is not a power of "
                "two; averaged codes may be one step from the float model's"
            )
    else:
        # torch's float pooling: the average goes back onto the input's grid.
        ratio = torch.ones_like(spec.scale)
        out = QSpec(spec.scale, spec.zero_point, spec.axis, spec.low, spec.high)
        rounding, output_zero_point = "nearest", spec.zero_point
        notes.append(
            f"{where}: the integer model rounds the average to the input grid, which the "
            "float model leaves unrounded; quantize the output (an aquatic pooling layer "
            "with QConfig.activation, or an ActivationQuantizer after it) for the grid of "
            "your choice"
        )
    if quantizer is not None and (window is None or window & (window - 1)):
        size = (
            "the window size is only known from the input"
            if window is None
            else (f"the window holds {window} values, not a power of two")
        )
        notes.append(f"{where}: {size}; the average may be one step from the float model's")
    low = -(2**31) if out.low is None else out.low
    high = 2**31 - 1 if out.high is None else out.high
    module = IntegerAverage(
        ratio=ratio,
        input_zero_point=spec.zero_point,
        output_zero_point=output_zero_point,
        low=low,
        high=high,
        rounding=rounding,
        axis=spec.axis if ratio.dim() else None,
        name=name,
        notes=notes,
        source=source,
        **config,
    )
    return [module], out


def build_adaptive_pool(
    name: str, module: nn.Module, spec: QSpec, where: str, window: Optional[int] = None
) -> Tuple[List[IntegerModule], QSpec]:
    """``nn.AdaptiveAvgPool1d/2d`` (or the aquatic twin, with its output quantizer):
    integer window sums, then a requantization by ``ratio / window size``
    (:class:`~aquatic.integer.average.IntegerAverage`).

    Args:
        window: the number of values in every window, where the caller knows the input's
            shape (e.g. ``H * W`` for global pooling); ``None`` notes the output as
            possibly one step apart.
    """
    dim = 1 if isinstance(module, nn.AdaptiveAvgPool1d) else 2
    size = module.output_size
    sizes = list(size) if isinstance(size, (tuple, list)) else [size] * dim
    sizes = [-1 if v is None else int(v) for v in sizes]
    quantizers = getattr(module, "quantizers", {})
    quantizer = quantizers["activation"] if "activation" in quantizers else None
    return _average(
        name,
        spec,
        where,
        type(module).__name__,
        quantizer,
        window,
        mode="adaptive",
        output_size=sizes,
    )
