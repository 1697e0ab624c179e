"""Integer modules for the operations between layers of a traced graph.

- :class:`IntegerCombine`: where tensors meet. Each input's codes, less its zero point,
  are brought to one grid by an integer multiplier and shift (Jacob et al. 2018,
  section 2.2; for an addition the terms share one shift and are summed before the
  single rounding), then the output zero point is added and the result saturated.
- :class:`IntegerReduceSum`: the sum of ``code - zero point`` over dimensions, the
  integer part of ``mean`` and of global average pooling (the division is kept in the
  scale of the result).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from aquatic.integer.base import IntegerModule, output_dtype
from aquatic.integer.requant import multiply_shift

__all__ = ["IntegerCombine", "IntegerReduceSum"]

_OPS = ("add", "mul", "cat")


class IntegerCombine(IntegerModule):
    """``add``, ``mul`` or ``cat`` of integer codes on different grids.

    Args:
        op: ``"add"`` (sum of ``(q_i - z_i) m_i``, then one rounding shift), ``"mul"``
            (product of the ``q_i - z_i``, times ``m_0``, shifted) or ``"cat"`` (each
            ``(q_i - z_i) m_i`` shifted by its own ``shift_i``, then concatenated).
        input_zero_points, multipliers, shifts: one per input (``add`` and ``mul`` use
            ``shifts[0]``; a negative shift shifts left).
        output_zero_point: added after the rounding.
        low, high: saturation bounds of the output codes, or ``None``.
        rounding: ``"nearest"`` (half to even) or ``"floor"``, as the output quantizer.
        dim: the dimension of ``cat``.
        name, notes, source: see :class:`~aquatic.integer.base.IntegerModule`.

    Shape:
        - Inputs: integer codes that broadcast (``add``, ``mul``) or that are equal in
          shape but along ``dim`` (``cat``). Output: the result's shape.

    Example:
        >>> # a + b / 2 (scales 1 and 0.5 onto scale 1), rounded half to even, int8 range
        >>> add = IntegerCombine("add", [0, 0], [2, 1], [1, 1], low=-128, high=127)
        >>> add(torch.tensor([3, 4]), torch.tensor([5, -2]))
        tensor([6, 3], dtype=torch.int32)
    """

    kind = "combine"
    _config_keys = ("op", "output_zero_point", "low", "high", "rounding", "dim")
    _tensor_keys = ("input_zero_points", "multipliers", "shifts")

    def __init__(
        self,
        op: str,
        input_zero_points: Sequence[int],
        multipliers: Sequence[int],
        shifts: Sequence[int],
        output_zero_point: int = 0,
        low: Optional[int] = None,
        high: Optional[int] = None,
        rounding: str = "nearest",
        dim: int = 0,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        if op not in _OPS:
            raise ValueError(f"op must be one of {_OPS}, got {op!r}")
        self.op, self.rounding, self.dim = op, rounding, int(dim)
        self.output_zero_point = int(output_zero_point)
        self.low, self.high = low, high
        values = {
            "input_zero_points": torch.as_tensor(input_zero_points, dtype=torch.int64),
            "multipliers": torch.as_tensor(multipliers, dtype=torch.int64),
            "shifts": torch.as_tensor(shifts, dtype=torch.int64),
        }
        if len({v.numel() for v in values.values()}) != 1:
            raise ValueError("input_zero_points, multipliers and shifts need one entry per input")
        self._set_tensors(values)

    def forward(self, *inputs: Tensor) -> Tensor:
        if len(inputs) != self.multipliers.numel():
            raise ValueError(
                f"{self._where()} takes {self.multipliers.numel()} inputs, got {len(inputs)}"
            )
        centered = [self._input_codes(x) - self.input_zero_points[i] for i, x in enumerate(inputs)]
        if self.op == "add":
            acc = centered[0] * self.multipliers[0]
            for i, x in enumerate(centered[1:], start=1):
                acc = acc + x * self.multipliers[i]
            out = multiply_shift(acc, 1, self.shifts[0], self.rounding)
        elif self.op == "mul":
            acc = centered[0]
            for x in centered[1:]:
                acc = acc * x
            out = multiply_shift(acc, self.multipliers[0], self.shifts[0], self.rounding)
        else:
            parts = [
                multiply_shift(x, self.multipliers[i], self.shifts[i], self.rounding)
                for i, x in enumerate(centered)
            ]
            out = torch.cat(parts, dim=self.dim)
        out = out + self.output_zero_point
        if self.low is not None or self.high is not None:
            out = torch.clamp(out, self.low, self.high)
        return out.to(output_dtype(self.low, self.high))


class IntegerReduceSum(IntegerModule):
    """``(code - zero_point)`` summed over ``dims`` (the numerator of a mean).

    Args:
        dims: the dimensions summed over.
        keepdim: keep them with size 1.
        zero_point: the input's zero point (per tensor).

    Example:
        >>> IntegerReduceSum([1], zero_point=1)(torch.tensor([[1, 2, 3]]))
        tensor([3], dtype=torch.int32)
    """

    kind = "reduce_sum"
    _config_keys = ("dims", "keepdim", "zero_point")

    def __init__(
        self,
        dims: Sequence[int],
        keepdim: bool = False,
        zero_point: int = 0,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        self.dims, self.keepdim, self.zero_point = (
            [int(d) for d in dims],
            bool(keepdim),
            int(zero_point),
        )

    def forward(self, input: Tensor) -> Tensor:
        codes = self._input_codes(input) - self.zero_point
        return codes.sum(dim=self.dims, keepdim=self.keepdim).to(torch.int32)
