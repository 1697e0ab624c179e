"""Codes with one scale per channel onto one common scale, before a reshape mixes the
channels (``Flatten`` after a layer with per-channel weights and no activation
quantizer)."""

from __future__ import annotations

from typing import List, Tuple

import torch

from aquatic.integer.base import INT32_MAX, IntegerModule, IntegerOverflowError, QSpec
from aquatic.integer.build import precision_for
from aquatic.integer.layers import IntegerRequantize
from aquatic.integer.requant import is_power_of_two, quantize_multiplier

__all__ = ["build_common_scale"]


def build_common_scale(
    name: str, spec: QSpec, where: str, source: str = ""
) -> Tuple[List[IntegerModule], QSpec]:
    """Requantize per-channel codes to the finest of their scales, zero point 0.

    Each channel's codes are multiplied by :math:`s_c / s_{min} \\ge 1`: when every ratio
    is a power of two (power-of-two weight scales) that is a left shift and exact;
    otherwise the codes are rounded on the finer grid, less than one of the channel's
    own steps from the float value (a note says so).

    Returns:
        ``([IntegerRequantize], spec)`` with one scale, or ``([], spec)`` when ``spec``
        is per tensor already.

    Raises:
        aquatic.integer.IntegerOverflowError: the scaled codes could exceed int32.

    Example:
        >>> spec = QSpec(torch.tensor([0.5, 0.25]), 0, axis=-1, low=-10, high=10)
        >>> (requant,), out = build_common_scale("f", spec, "layer 'f' (Flatten)")
        >>> requant(torch.tensor([[3, 3]])), float(out.scale), requant.notes
        (tensor([[6, 3]], dtype=torch.int32), 0.25, [])
    """
    if spec.scale.dim() == 0 and spec.zero_point.dim() == 0:
        return [], spec
    scale = spec.scale
    common = scale.min()
    ratio = scale / common
    magnitude = spec.magnitude()
    notes = []
    low, high = -INT32_MAX - 1, INT32_MAX
    if magnitude is not None:
        bound = int(torch.ceil(magnitude * ratio.max()))
        if bound > INT32_MAX:
            raise IntegerOverflowError(
                f"{where}: codes on the finest channel scale could reach {bound}, beyond "
                "int32; quantize the layer's output (QConfig.activation) before it"
            )
        low, high = -bound, bound
    if not is_power_of_two(ratio):
        notes.append(
            f"{where}: the per-channel scales are not powers of two of each other, so the "
            "codes are rounded onto the finest one; they may be one step apart"
        )
    multiplier, shift = quantize_multiplier(ratio, precision_for(magnitude))
    module = IntegerRequantize(
        multiplier,
        shift,
        spec.zero_point,
        0,
        low,
        high,
        "nearest",
        spec.axis,
        name=f"{name}.common_scale",
        notes=notes,
        source=source,
    )
    return [module], QSpec(common, torch.tensor(0), None, low, high)
