"""Building the integer models of aquatic's pooling layers: sum pooling, and the
requantizer of a pooling layer's output quantizer."""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import nn

from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.build import build_requantize
from aquatic.integer.pooling import IntegerSumPool

__all__ = ["build_window_sum", "with_output_quantizer"]


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
