"""What the integer GRU and LSTM (:mod:`aquatic.integer.recurrent`) share: sums of
differently scaled integers requantized with fixed-point multipliers (:class:`FixedSum`),
and the weights, grids, initial states and time loop of one layer in one direction."""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from aquatic.functional.integer import check_integer
from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.requant import rounding_right_shift

__all__ = ["FixedSum", "IntegerRecurrentLayer", "ARGS", "constant_on", "weight_bound"]

#: Every multiplier-times-term product (and their sum) stays below this.
_PRODUCT_LIMIT = 2**61
#: The largest shift a FixedSum uses: more adds no precision that float32 had.
_MAX_SHIFT = 48


class FixedSum(nn.Module):
    """``round(sum_k t_k * s_k / s_out)`` in integer arithmetic, with integer multipliers.

    Args:
        scales: the real scale :math:`s_k` of each term (a scalar, or one per feature of
            the last dimension), float64.
        bounds: the largest :math:`|t_k|` of each term.
        out_scale: the scale of the result.

    The shift :math:`S` is the largest (up to 48) with every
    :math:`|m_k| \\cdot \\mathrm{bound}_k` below :math:`2^{61} / K`, so nothing overflows
    ``int64``.

    Example:
        >>> fs = FixedSum([torch.tensor(0.25), torch.tensor(-0.5)], [100, 100], 1.0)
        >>> fs([torch.tensor([6]), torch.tensor([3])])  # 6 * 0.25 - 3 * 0.5 = 0
        tensor([0])
    """

    def __init__(self, scales: Sequence[Tensor], bounds: Sequence[int], out_scale: float) -> None:
        super().__init__()
        ratios = [torch.as_tensor(s, dtype=torch.float64) / float(out_scale) for s in scales]
        limit = _PRODUCT_LIMIT // max(len(ratios), 1)
        shift = _MAX_SHIFT
        for ratio, bound in zip(ratios, bounds):
            largest = float(ratio.abs().max()) * max(int(bound), 1)
            if largest > 0:
                shift = min(shift, math.floor(math.log2(limit / largest)) - 1)
        if shift < 0:
            raise ValueError(
                f"FixedSum: the terms (bounds {list(bounds)}) are too large for int64 "
                "arithmetic; use fewer bits"
            )
        self.shift = shift
        for k, ratio in enumerate(ratios):
            self.register_buffer(f"m{k}", torch.round(ratio * 2.0**shift).to(torch.int64))
        self.count = len(ratios)

    def forward(self, terms: Sequence[Tensor], constant: Optional[Tensor] = None) -> Tensor:
        total = constant
        for k, term in enumerate(terms):
            product = term.to(torch.int64) * getattr(self, f"m{k}")
            total = product if total is None else total + product
        return rounding_right_shift(total, self.shift)


def weight_bound(weight: Tensor, magnitude: int) -> int:
    """The largest ``|accumulator|`` of ``(codes) @ weight.T`` with codes up to ``magnitude``."""
    return int(weight.abs().sum(1).max()) * magnitude


class IntegerRecurrentLayer(IntegerModule):
    """What the integer GRU and LSTM share: weights, tables, the accumulators' terms."""

    _gates = 1

    def _setup(self, weight_ih, weight_hh, bias_ih, bias_hh, scales, grids, tables, options):
        batch_first, reverse, state_scales, state_grids = options
        self.hidden_size = int(weight_hh.shape[0]) // self._gates
        self.output_size = int(weight_hh.shape[1])
        self.batch_first, self.reverse = bool(batch_first), bool(reverse)
        self.grids = {key: tuple(int(v) for v in grid) for key, grid in grids.items()}
        self._given_states(state_scales, state_grids, scales)
        self.register_buffer("weight_ih", torch.as_tensor(weight_ih).to(torch.int64))
        self.register_buffer("weight_hh", torch.as_tensor(weight_hh).to(torch.int64))
        for key, table in tables.items():
            self.register_buffer(key, torch.as_tensor(table).to(torch.int64))
        s = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in scales.items()}
        # Kept for saving: JSON numbers hold float64 exactly, so a loaded layer computes
        # the same multipliers as the converted one.
        self.scales = {k: v.tolist() for k, v in s.items()}
        self.biases = tuple(
            None if b is None else torch.as_tensor(b, dtype=torch.float64).tolist()
            for b in (bias_ih, bias_hh)
        )
        self.magnitude = {
            key: max(abs(low - zero), abs(high - zero)) for key, (zero, low, high) in grids.items()
        }
        rows = self._gates * self.hidden_size
        a_i = (s["input"] * s["weight_ih"]).expand(rows)
        a_h = (s["hidden"] * s["weight_hh"]).expand(rows)
        bounds = (
            weight_bound(self.weight_ih, self.magnitude["input"]),
            weight_bound(self.weight_hh, self.magnitude["hidden"]),
        )
        zero = torch.zeros(rows, dtype=torch.float64)
        b_i = zero if bias_ih is None else torch.as_tensor(bias_ih, dtype=torch.float64)
        b_h = zero if bias_hh is None else torch.as_tensor(bias_hh, dtype=torch.float64)
        return s, a_i, a_h, bounds, b_i, b_h

    def _given_states(self, state_scales, state_grids, scales) -> None:
        """The requantizers of given initial states: from the grid they come on
        (``state_scales``, ``state_grids``) onto the layer's own."""
        if (state_scales is None) != (state_grids is None):
            raise ValueError(f"{self._where()}: give both state_scales and state_grids, or neither")
        self.state_scales = None if state_scales is None else dict(state_scales)
        self.state_grids = None
        self.given = nn.ModuleDict()
        if state_scales is None:
            return
        self.state_grids = {k: tuple(int(v) for v in grid) for k, grid in state_grids.items()}
        expected = {"hidden", "cell"} & set(self.grids)
        if set(self.state_scales) != expected or set(self.state_grids) != expected:
            raise ValueError(
                f"{self._where()}: state_scales and state_grids need the keys {sorted(expected)}"
            )
        for key in sorted(expected):
            zero, low, high = self.state_grids[key]
            bound = max(abs(low - zero), abs(high - zero))
            scale = torch.as_tensor(self.state_scales[key], dtype=torch.float64)
            self.given[key] = FixedSum([scale], [bound], float(scales[key]))

    def config(self) -> dict:
        """The constructor's JSON arguments: scales and biases as float64 numbers, the
        grids as ``[zero_point, low, high]``."""
        result = super().config()
        result.update(
            scales=dict(self.scales),
            grids={key: list(grid) for key, grid in self.grids.items()},
            bias_ih=self.biases[0],
            bias_hh=self.biases[1],
            batch_first=self.batch_first,
            reverse=self.reverse,
            state_scales=self.state_scales,
            state_grids=(
                None
                if self.state_grids is None
                else {key: list(grid) for key, grid in self.state_grids.items()}
            ),
        )
        return result

    def state_specs(self) -> dict:
        """The :class:`~aquatic.integer.base.QSpec` of the ``hidden`` (and an LSTM's
        ``cell``) codes it returns."""
        return {
            key: QSpec(torch.tensor(self.scales[key]), zero, None, low, high)
            for key, (zero, low, high) in self.grids.items()
            if key in ("hidden", "cell")
        }

    def _onto(self, total: Tensor, grid: str) -> Tensor:
        zero, low, high = self.grids[grid]
        return (total + zero).clamp(low, high)

    def _lookup(self, table: Tensor, codes: Tensor, grid: str = "gates") -> Tensor:
        return table[codes - self.grids[grid][1]]

    def _steps(self, input: Tensor) -> Tensor:
        x = self._input_codes(input)
        if x.dim() != 3:
            raise ValueError(f"{self._where()} takes 3-D codes, got shape {tuple(x.shape)}")
        return x.transpose(0, 1) if self.batch_first else x

    def _start(self, steps: Tensor, grid: str, given: Optional[Tensor] = None) -> Tensor:
        """The codes of the initial state: zeros, or ``given`` (``(N, H)`` or
        ``(1, N, H)`` codes) on the layer's grid."""
        size = self.hidden_size if grid == "cell" else self.output_size
        shape = (steps.shape[1], size)
        if given is None:
            return torch.full(shape, self.grids[grid][0], dtype=torch.int64)
        codes = check_integer(given, f"the initial {grid} state of {self._where()}")
        codes = codes.to(torch.int64)
        codes = codes[0] if codes.dim() == 3 and codes.shape[0] == 1 else codes
        if tuple(codes.shape) != shape:
            raise ValueError(
                f"{self._where()}: the initial {grid} state has shape {tuple(given.shape)}, "
                f"expected {shape} (batch, features) or (1, {shape[0]}, {shape[1]})"
            )
        if grid not in self.given:  # given on the layer's own grid
            return codes
        zero = self.state_grids[grid][0]
        return self._onto(self.given[grid]([codes - zero]), grid)

    def _order(self, steps: Tensor) -> range:
        """The time steps in the order the layer reads them."""
        count = steps.shape[0]
        return range(count - 1, -1, -1) if self.reverse else range(count)

    def _states(self, hx: Any, count: int) -> Tuple[Optional[Tensor], ...]:
        """``hx`` as ``count`` states (``None``: zeros)."""
        if hx is None:
            return (None,) * count
        states = tuple(hx) if count > 1 else (hx,)
        if count > 1 and len(states) != count:
            raise TypeError(f"{self._where()} takes (h_0, c_0), got {len(states)} states")
        return states

    def _accumulate(self, step: Tensor, h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        centered = h - self.grids["hidden"][0]
        acc_i = (step - self.grids["input"][0]) @ self.weight_ih.T
        return acc_i, centered @ self.weight_hh.T, centered

    def _stack(self, outputs: List[Tensor]) -> Tensor:
        return torch.stack(outputs, 1 if self.batch_first else 0)

    def _check_features(self, steps: Tensor) -> None:
        if steps.shape[-1] != self.weight_ih.shape[1]:
            raise ValueError(
                f"{self._where()} takes {self.weight_ih.shape[1]} input features, got "
                f"{steps.shape[-1]}"
            )


ARGS = """
    Args:
        weight_ih, weight_hh: weight codes minus their zero points, ``(G H, in)`` and
            ``(G H, H)`` (:math:`G` gates).
        bias_ih, bias_hh: real biases (float64, a tensor or a list), or ``None``; folded
            into the sums' constants at construction.
        scales: float64 tensors (or numbers and lists): ``input``, ``weight_ih``, ``weight_hh`` (scalar or one
            per row), ``gates``, ``gate_outputs``, ``hidden`` (and an LSTM's ``cell``,
            and ``weight_hr`` with a projection).
        grids: ``(zero_point, low, high)`` of ``input``, ``gates``, ``gate_outputs``,
            ``hidden`` (and ``cell``).
        sigmoid, tanh: lookup tables, the ``gate_outputs`` code of each ``gates`` code
            from ``gates`` low to high.
        batch_first: as torch's layer.
        reverse: run from the last step to the first (the reverse direction).
        state_scales, state_grids: the scale and ``(zero_point, low, high)`` of the
            initial ``hidden`` (and ``cell``) codes given to ``forward``, which go onto
            the layer's grids by a :class:`FixedSum`; ``None``: given codes are on the
            layer's grids already.
"""


def constant_on(fixed: FixedSum, value: Tensor, out_scale) -> Tensor:
    """A real constant on ``fixed``'s fine grid (units of ``out_scale * 2**-shift``)."""
    scaled = torch.as_tensor(value, dtype=torch.float64) / float(out_scale) * 2.0**fixed.shift
    return torch.round(scaled).to(torch.int64)
