"""Building the integer models of bounded activations: ``ReLU6``, ``Hardtanh`` and
``torch.clamp`` (:func:`build_clamp`), and moving a clamp whose bounds are off the grid
after the next requantizer, where it is exact (:func:`settle_clamp`)."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.clamp import IntegerClamp
from aquatic.integer.layers import IntegerRequantize

__all__ = ["CLAMPS", "build_activation", "build_clamp", "settle_clamp"]

#: torch.nn activations that are a clamp of the real value (exact types: ReLU6 is a
#: Hardtanh with bounds 0 and 6).
CLAMPS = (nn.ReLU6, nn.Hardtanh)

#: Code bound standing for "no bound" on one side.
_UNBOUNDED = 2**62


def _as_float32(value: Optional[float], what: str) -> Optional[float]:
    """The bound as the float model uses it (a float32), checked."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"the clamp's {what} bound must be a number or None, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"the clamp's {what} bound must be finite, got {value!r}")
    return float(torch.tensor(value, dtype=torch.float32))


def build_clamp(
    name: str,
    spec: QSpec,
    low: Optional[float],
    high: Optional[float],
    where: str,
    source: str = "",
) -> Tuple[List[IntegerModule], QSpec]:
    """The integer clamp of the real value to ``[low, high]`` (``None``: unbounded side).

    Bounds on the input grid (``bound / scale`` an integer for every channel) become
    code bounds and the clamp is exact. A bound off the grid is rounded outward to the
    grid and the clamp is marked ``deferred``: :func:`settle_clamp` then applies the
    exact bound after the next requantizer. Without one, the output may lie up to one
    step from the float model's (a note says so).

    Args:
        name: the layer's qualified name.
        spec: what the input codes mean.
        low, high: the real bounds (as in ``torch.clamp(x, low, high)``), or ``None``.
        where: how messages name the layer.
        source: the class name of what is converted (e.g. ``"ReLU6"``).

    Returns:
        ``([IntegerClamp], spec)`` with the code range narrowed to the bounds.

    Raises:
        ValueError: ``low > high``, or a bound that is not finite.
        TypeError: a bound that is not a number.

    Example:
        >>> spec = QSpec(0.5, 0, low=-128, high=127)
        >>> (clamp,), out = build_clamp("act", spec, 0.0, 6.0, "layer 'act' (ReLU6)")
        >>> clamp(torch.tensor([-9, 4, 30])), (out.low, out.high), clamp.notes
        (tensor([ 0,  4, 12]), (0, 12), [])
    """
    low, high = _as_float32(low, "low"), _as_float32(high, "high")
    if low is not None and high is not None and low > high:
        raise ValueError(f"{where}: the clamp's low bound {low} is above its high bound {high}")
    scale, zero_point = spec.scale, spec.zero_point
    off_grid = []

    def codes(bound: Optional[float], outward) -> Tensor:
        if bound is None:
            return torch.tensor(-_UNBOUNDED if outward is math.floor else _UNBOUNDED)
        steps = bound / scale
        if not torch.equal(steps, torch.round(steps)):
            off_grid.append(bound)
        rounded = torch.floor(steps) if outward is math.floor else torch.ceil(steps)
        return rounded.to(torch.int64) + zero_point

    low_codes, high_codes = codes(low, math.floor), codes(high, math.ceil)
    notes = []
    if off_grid:
        notes.append(
            f"{where}: the clamp bound(s) {off_grid} are not on the input grid (scale "
            f"{scale.flatten()[0].item():.6g}); the output may be one step from the float "
            "model's. Put an activation quantizer right after it (then it is exact) or use "
            "bounds on the grid"
        )
    axis = spec.axis if low_codes.dim() or high_codes.dim() else None
    clamp = IntegerClamp(
        low_codes,
        high_codes,
        axis,
        deferred=[low, high] if off_grid else None,
        name=name,
        notes=notes,
        source=source,
    )
    new_low = None if low is None else int(low_codes.min())
    new_high = None if high is None else int(high_codes.max())
    if spec.low is not None:
        new_low = spec.low if new_low is None else max(new_low, spec.low)
    if spec.high is not None:
        new_high = spec.high if new_high is None else min(new_high, spec.high)
    return [clamp], QSpec(scale, zero_point, spec.axis, new_low, new_high)


def build_activation(
    name: str, module: nn.Module, spec: QSpec, where: str
) -> Tuple[List[IntegerModule], QSpec]:
    """The integer clamp of ``nn.ReLU6`` or ``nn.Hardtanh`` (see :func:`build_clamp`)."""
    return build_clamp(
        name, spec, module.min_val, module.max_val, where, source=type(module).__name__
    )


def _bound_code(bound: Optional[float], spec: QSpec, rounding: str) -> Optional[int]:
    """The code a quantizer with grid ``spec`` gives the real value ``bound``, computed as
    its fake-quantize kernel does (float32 ``x * (1 / s)`` then round; floor: ``x / s``)."""
    if bound is None:
        return None
    x = torch.tensor(bound, dtype=torch.float32)
    s = spec.scale.float()
    steps = torch.floor(x / s) if rounding == "floor" else torch.round(x * torch.reciprocal(s))
    code = int(steps) + int(spec.zero_point)
    return min(max(code, spec.low), spec.high)


def settle_clamp(
    modules: List[IntegerModule], new: List[IntegerModule], spec: QSpec
) -> Tuple[List[IntegerModule], QSpec]:
    """``modules + new``, with a deferred clamp made exact by the requantizer after it.

    When ``modules`` ends with an :class:`IntegerClamp` whose bounds are off its input
    grid and ``new`` is a lone :class:`IntegerRequantize` (``spec`` its output), the
    quantizer of the float model quantizes ``clamp(x, a, b)``, which equals
    ``clamp(Q(x), Q(a), Q(b))`` because ``Q`` is nondecreasing: a clamp to the codes of
    ``a`` and ``b`` after the requantizer is exact (the first clamp, rounded outward,
    only keeps the codes bounded). Otherwise ``modules + new`` unchanged.

    Returns:
        ``(modules, spec)``.
    """
    last = modules[-1] if modules else None
    if not (
        isinstance(last, IntegerClamp)
        and last.deferred is not None
        and len(new) == 1
        and isinstance(new[0], IntegerRequantize)
        and spec.scale.dim() == 0
        and spec.bounded
    ):
        return modules + new, spec
    low, high = last.deferred
    low_code = _bound_code(low, spec, new[0].rounding)
    high_code = _bound_code(high, spec, new[0].rounding)
    exact = IntegerClamp(
        spec.low if low_code is None else low_code,
        spec.high if high_code is None else high_code,
        name=last.name,
        source=last.source,
    )
    outer = IntegerClamp(last.low, last.high, last.axis, None, last.name, [], last.source)
    settled = QSpec(spec.scale, spec.zero_point, None, exact.low.item(), exact.high.item())
    return modules[:-1] + [outer] + new + [exact], settled
