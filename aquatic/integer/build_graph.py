"""Building the integer modules of a traced graph's operations: where tensors meet
(:func:`build_combine`)."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from aquatic.integer.base import QSpec
from aquatic.integer.build import FLOAT32_EXACT
from aquatic.integer.graph_ops import IntegerCombine
from aquatic.integer.reading import read_grid
from aquatic.integer.requant import is_power_of_two, quantize_multiplier

__all__ = ["build_combine"]

#: Assumed largest |code - zero point| of an input without a bound (int32 codes).
_UNBOUNDED = 2**31


def _magnitude(spec: QSpec) -> int:
    value = spec.magnitude()
    return _UNBOUNDED if value is None else value


def _per_tensor(specs: Sequence[QSpec], where: str) -> None:
    for spec in specs:
        if spec.scale.dim() != 0 or spec.zero_point.dim() != 0:
            raise ValueError(
                f"{where} combines codes that have one scale per channel (the output of a "
                "layer with per-channel weights and no activation quantizer); quantize that "
                "input per tensor first (QConfig.activation or an aquatic.nn.ActivationQuantizer)"
            )


def _shared_shift(ratios: Sequence[float], magnitudes: Sequence[int]):
    """Multipliers with one common shift, their weighted sum kept below 2**62."""
    for precision in range(31, 0, -1):
        pairs = [
            quantize_multiplier(torch.tensor(r, dtype=torch.float64), precision) for r in ratios
        ]
        shift = max(int(n) for _, n in pairs)
        multipliers = [int(m) << (shift - int(n)) for m, n in pairs]
        if sum(m * b for m, b in zip(multipliers, magnitudes)) < 2**62:
            return multipliers, shift
    raise ValueError("the requantization ratios of an addition are too far apart for int64")


def _common_grid(specs: Sequence[QSpec], where: str, fix: str) -> Tuple[List[int], float]:
    """Integer factors ``k_i`` with ``s_i = k_i * s`` for the finest scale ``s``."""
    finest = min(float(spec.scale) for spec in specs)
    factors = []
    for spec in specs:
        k = float(spec.scale) / finest
        if abs(k - round(k)) > 1e-9 * k:
            scales = ", ".join(f"{float(s.scale):g}" for s in specs)
            raise ValueError(
                f"{where} combines codes on grids of scales {scales}, which share no common "
                f"grid; {fix}"
            )
        factors.append(int(round(k)))
    return factors, finest


def build_combine(
    op: str,
    name: str,
    specs: Sequence[QSpec],
    quantizer: Optional[nn.Module],
    where: str,
    dim: int = 0,
) -> Tuple[IntegerCombine, QSpec]:
    """The integer ``add``/``mul``/``cat`` of inputs described by ``specs``, onto the grid
    of ``quantizer`` (an :class:`aquatic.nn.Add`'s output quantizer), or, without one,
    onto a common grid of the inputs (exact, unbounded by saturation)."""
    _per_tensor(specs, where)
    notes: List[str] = []
    magnitudes = [_magnitude(spec) for spec in specs]
    zero_points = [int(spec.zero_point) for spec in specs]
    pow2 = all(is_power_of_two(spec.scale) for spec in specs)
    fix = (
        f"quantize the result with aquatic.nn.{op.capitalize()}(qconfig=...) (aquatic.quantize "
        "inserts one where the model's QConfig has an activation quantizer)"
    )
    if op == "mul":
        product = math.prod(magnitudes)
        if not pow2 or product >= FLOAT32_EXACT:
            notes.append(f"{where}: the float model's product is rounded (scales or size)")
    elif op == "add":
        factors, finest = _common_grid(specs, where, fix) if pow2 else ([1] * len(specs), 0.0)
        if not pow2 or sum(m * k for m, k in zip(magnitudes, factors)) >= FLOAT32_EXACT:
            notes.append(f"{where}: the float model's sum is rounded (scales not powers of two)")
    if quantizer is None:
        if op == "mul":
            scale = math.prod(float(spec.scale) for spec in specs)
            module = IntegerCombine(op, zero_points, [1], [0], name=name, notes=notes, source=op)
            bound = math.prod(magnitudes)
            return module, QSpec(torch.tensor(scale), torch.tensor(0), None, -bound, bound)
        factors, finest = _common_grid(specs, where, fix)
        shifts = [0] * len(specs)
        module = IntegerCombine(
            op, zero_points, factors, shifts, dim=dim, name=name, notes=notes, source=op
        )
        terms = [m * k for m, k in zip(magnitudes, factors)]
        bound = sum(terms) if op == "add" else max(terms)
        return module, QSpec(torch.tensor(finest), torch.tensor(0), None, -bound, bound)
    grid = read_grid(quantizer, f"{where}, quantizer 'activation'", notes)
    if grid.scale.dim() != 0 or grid.zero_point.dim() != 0:
        raise ValueError(
            f"{where}: the output quantizer is per channel; use one scale (ch_axis=None)"
        )
    out_scale = float(grid.scale)
    if op == "mul":
        ratios = [math.prod(float(spec.scale) for spec in specs) / out_scale]
    else:
        ratios = [float(spec.scale) / out_scale for spec in specs]
    if not all(is_power_of_two(torch.tensor(r, dtype=torch.float64)) for r in ratios):
        notes.append(
            f"{where}: a scale ratio is not a power of two; requantized codes may be one step "
            "from the float model's"
        )
    if op == "add":
        multipliers, shift = _shared_shift(ratios, magnitudes)
        shifts = [shift] * len(specs)
    elif op == "mul":
        multipliers, shift = _shared_shift(ratios, [math.prod(magnitudes)])
        shifts = [shift] * len(specs)
        multipliers = multipliers + [1] * (len(specs) - 1)
    else:
        pairs = [_shared_shift([r], [m]) for r, m in zip(ratios, magnitudes)]
        multipliers, shifts = [m[0] for m, _ in pairs], [n for _, n in pairs]
    module = IntegerCombine(
        op,
        zero_points,
        multipliers,
        shifts,
        int(grid.zero_point),
        grid.quant_min,
        grid.quant_max,
        grid.rounding,
        dim=dim,
        name=name,
        notes=notes,
        source=op,
    )
    return module, QSpec(grid.scale, grid.zero_point, None, grid.quant_min, grid.quant_max)
