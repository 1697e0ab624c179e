"""The integer GRU: integer matmuls, sums of differently scaled integers requantized
with fixed-point multipliers, and sigmoid / tanh as lookup tables.

One step of :func:`aquatic.functional.recurrent.gru_cell`, on codes:

1. :math:`A_i = (q_x - z_x) W_{ih}^T` and :math:`A_h = (q_h - z_h) W_{hh}^T`, integer
   matmuls of codes (zero points subtracted);
2. each gate pre-activation, a sum of terms with different real scales (the two
   accumulators, the biases, and for the candidate gate the product of the reset gate's
   code and the hidden contribution), goes onto the ``gates`` grid as
   :math:`\\mathrm{round}(2^{-S} \\sum_k m_k t_k)` with integer multipliers
   :math:`m_k \\approx 2^S s_k / s_{out}` (:class:`FixedSum`; Jacob et al. 2018,
   section 2.2, for one term);
3. sigmoid and tanh are lookup tables from every code of the ``gates`` grid to a code
   of the ``gate_outputs`` grid, computed at conversion by the quantization-aware
   model's own float functions and quantizer, as TensorFlow Lite Micro's int8 logistic
   and tanh kernels and torch.ao's quantized activations tabulate them;
4. :math:`h' = (1 - z) n + z h`, expanded into three integer products, goes onto the
   ``hidden`` grid by a :class:`FixedSum` as well.

The codes equal the quantization-aware model's except where its float32 sums land next
to a rounding boundary; a step of difference there carries on through later time steps
(tested: 99% of the hidden codes equal, and argmax agreement of at least 99%, on a
keyword-spotting GRU).

:func:`aquatic.integer.build_gru` and :func:`~aquatic.integer.build_lstm` build these
modules from a trained layer. They start from zero states. :func:`aquatic.convert`
places them in ``nn.Sequential`` models, where :class:`aquatic.nn.SelectOutput` picks
an element of the tuple a recurrent layer returns and :class:`aquatic.nn.LastStep` a
time step, and in traced graphs, where the ``forward`` indexes that tuple itself
(``out, h = self.gru(x)``). :func:`aquatic.integer.save` and
:meth:`aquatic.integer.IntegerGraph.save` save them: the integer weights and tables as
tensors, the scales and real biases as JSON numbers (float64, exact), from which loading
recomputes the same multipliers.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.requant import rounding_right_shift

__all__ = ["FixedSum", "IntegerGRU", "IntegerLSTM", "TANH_BITS", "fixed_constant"]

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


def _bound(weight: Tensor, magnitude: int) -> int:
    """The largest ``|accumulator|`` of ``(codes) @ weight.T`` with codes up to ``magnitude``."""
    return int(weight.abs().sum(1).max()) * magnitude


class _IntegerRecurrent(IntegerModule):
    """What the integer GRU and LSTM share: weights, tables, the accumulators' terms."""

    _gates = 1

    def _setup(self, weight_ih, weight_hh, bias_ih, bias_hh, scales, grids, tables, batch_first):
        size = weight_hh.shape[1]
        self.hidden_size, self.batch_first = size, bool(batch_first)
        self.grids = {key: tuple(int(v) for v in grid) for key, grid in grids.items()}
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
        rows = self._gates * size
        a_i = (s["input"] * s["weight_ih"]).expand(rows)
        a_h = (s["hidden"] * s["weight_hh"]).expand(rows)
        bounds = (
            _bound(self.weight_ih, self.magnitude["input"]),
            _bound(self.weight_hh, self.magnitude["hidden"]),
        )
        zero = torch.zeros(rows, dtype=torch.float64)
        b_i = zero if bias_ih is None else torch.as_tensor(bias_ih, dtype=torch.float64)
        b_h = zero if bias_hh is None else torch.as_tensor(bias_hh, dtype=torch.float64)
        return s, a_i, a_h, bounds, b_i, b_h

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

    def _start(self, steps: Tensor, grid: str) -> Tensor:
        """The codes of a zero state."""
        return torch.full(
            (steps.shape[1], self.hidden_size), self.grids[grid][0], dtype=torch.int64
        )

    def _accumulate(self, step: Tensor, h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        centered = h - self.grids["hidden"][0]
        acc_i = (step - self.grids["input"][0]) @ self.weight_ih.T
        return acc_i, centered @ self.weight_hh.T, centered

    def _stack(self, outputs: List[Tensor]) -> Tensor:
        return torch.stack(outputs, 1 if self.batch_first else 0)


_ARGS = """
    Args:
        weight_ih, weight_hh: weight codes minus their zero points, ``(G H, in)`` and
            ``(G H, H)`` (:math:`G` gates).
        bias_ih, bias_hh: real biases (float64, a tensor or a list), or ``None``; folded
            into the sums' constants at construction.
        scales: float64 tensors (or numbers and lists): ``input``, ``weight_ih``, ``weight_hh`` (scalar or one
            per row), ``gates``, ``gate_outputs``, ``hidden`` (and an LSTM's ``cell``).
        grids: ``(zero_point, low, high)`` of ``input``, ``gates``, ``gate_outputs``,
            ``hidden`` (and ``cell``).
        sigmoid, tanh: lookup tables, the ``gate_outputs`` code of each ``gates`` code
            from ``gates`` low to high.
        batch_first: as torch's layer.
"""


class IntegerGRU(_IntegerRecurrent):
    __doc__ = (
        """One GRU layer (one direction) on integer codes; see the module docstring.
"""
        + _ARGS
        + """
    Shape:
        - Input: :math:`(L, N, H_{in})` codes (:math:`(N, L, H_{in})` with ``batch_first``).
        - Output: ``(output, h_n)``: the hidden codes of every step, shaped as the input
          with :math:`H` features, and the last ones, :math:`(1, N, H)`; ``int64``.
    """
    )

    kind = "gru"
    _tensor_keys = ("weight_ih", "weight_hh", "sigmoid", "tanh")
    _gates = 3

    def __init__(
        self,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Optional[Tensor],
        bias_hh: Optional[Tensor],
        scales: dict,
        grids: dict,
        sigmoid: Tensor,
        tanh: Tensor,
        batch_first: bool = False,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        tables = {"sigmoid": sigmoid, "tanh": tanh}
        s, a_i, a_h, (acc_i, acc_h), b_i, b_h = self._setup(
            weight_ih, weight_hh, bias_ih, bias_hh, scales, grids, tables, batch_first
        )
        size, mag = self.hidden_size, self.magnitude
        o_mag, h_mag = mag["gate_outputs"], mag["hidden"]
        rz, n = slice(0, 2 * size), slice(2 * size, 3 * size)
        # r, z: both accumulators and both biases onto the gates grid.
        self.rz = FixedSum([a_i[rz], a_h[rz]], [acc_i, acc_h], float(s["gates"]))
        self.register_buffer("rz_bias", fixed_constant(self.rz, b_i[rz] + b_h[rz], s["gates"]))
        # n: the hidden contribution on a grid 2**-12 finer than the gates grid, then
        # multiplied by the reset gate's code.
        fine = float(s["gates"]) * 2.0**-12
        gh_bound = math.ceil((acc_h * float(a_h[n].abs().max()) + float(b_h[n].abs().max())) / fine)
        self.hn = FixedSum([a_h[n]], [acc_h], fine)
        self.register_buffer("hn_bias", fixed_constant(self.hn, b_h[n], fine))
        self.n = FixedSum(
            [a_i[n], s["gate_outputs"] * fine * torch.ones(size, dtype=torch.float64)],
            [acc_i, o_mag * (gh_bound + 1)],
            float(s["gates"]),
        )
        self.register_buffer("n_bias", fixed_constant(self.n, b_i[n], s["gates"]))
        # h' = n + z (h - n) = N s_o - Z N s_o**2 + Z H s_o s_h.
        so, sh = s["gate_outputs"], s["hidden"]
        self.h = FixedSum([so, -so * so, so * sh], [o_mag, o_mag * o_mag, o_mag * h_mag], float(sh))

    def forward(self, input: Tensor) -> Tuple[Tensor, Tensor]:
        steps = self._steps(input)
        zo, size = self.grids["gate_outputs"][0], self.hidden_size
        h = self._start(steps, "hidden")
        outputs = []
        for step in steps:
            acc_i, acc_h, centered = self._accumulate(step, h)
            rz = self._onto(
                self.rz([acc_i[:, : 2 * size], acc_h[:, : 2 * size]], self.rz_bias), "gates"
            )
            gates_rz = self._lookup(self.sigmoid, rz) - zo
            r, z = gates_rz[:, :size], gates_rz[:, size:]
            hn = self.hn([acc_h[:, 2 * size :]], self.hn_bias)
            n_pre = self._onto(self.n([acc_i[:, 2 * size :], r * hn], self.n_bias), "gates")
            n = self._lookup(self.tanh, n_pre) - zo
            h = self._onto(self.h([n, z * n, z * centered]), "hidden")
            outputs.append(h)
        return self._stack(outputs), h.unsqueeze(0)


#: Fractional bits of tanh(c) in the integer LSTM: float32's precision, so that h' follows
#: the quantization-aware layer (TensorFlow Lite's int16 kernels keep 15).
TANH_BITS = 24


class IntegerLSTM(_IntegerRecurrent):
    __doc__ = (
        """One LSTM layer (one direction, no projection) on integer codes.

    As :class:`IntegerGRU`: the gate pre-activations go onto the ``gates`` grid, sigmoid
    and tanh are tables onto the ``gate_outputs`` grid; then :math:`c' = f c + i g` goes
    onto the ``cell`` grid (:class:`FixedSum` of two integer products), :math:`\\tanh(c')`
    is a table from each ``cell`` code to a fixed-point value with ``TANH_BITS`` (24)
    fractional bits (the quantization-aware layer does not quantize it; 24 bits are
    float32's own precision), and :math:`h' = o \\tanh(c')` goes onto the ``hidden`` grid.
"""
        + _ARGS
        + """        cell_tanh: the fixed-point value (``TANH_BITS`` fractional bits) of
            :math:`\\tanh` of each ``cell`` code.

    Shape:
        - Input: as :class:`IntegerGRU`.
        - Output: ``(output, (h_n, c_n))``, codes, ``int64``.
    """
    )

    kind = "lstm"
    _tensor_keys = ("weight_ih", "weight_hh", "sigmoid", "tanh", "cell_tanh")
    _gates = 4

    def __init__(
        self,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Optional[Tensor],
        bias_hh: Optional[Tensor],
        scales: dict,
        grids: dict,
        sigmoid: Tensor,
        tanh: Tensor,
        cell_tanh: Tensor,
        batch_first: bool = False,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        tables = {"sigmoid": sigmoid, "tanh": tanh, "cell_tanh": cell_tanh}
        s, a_i, a_h, bounds, b_i, b_h = self._setup(
            weight_ih, weight_hh, bias_ih, bias_hh, scales, grids, tables, batch_first
        )
        o_mag, c_mag = self.magnitude["gate_outputs"], self.magnitude["cell"]
        self.gates = FixedSum([a_i, a_h], list(bounds), float(s["gates"]))
        self.register_buffer("gates_bias", fixed_constant(self.gates, b_i + b_h, s["gates"]))
        so, sc = s["gate_outputs"], s["cell"]
        # c' = F C s_o s_c + I G s_o**2 (codes minus zero points).
        self.c = FixedSum([so * sc, so * so], [o_mag * c_mag, o_mag * o_mag], float(sc))
        # h' = O T s_o 2**-TANH_BITS, with T the fixed-point tanh(c').
        self.h = FixedSum([so * 2.0**-TANH_BITS], [o_mag * 2**TANH_BITS], float(s["hidden"]))

    def forward(self, input: Tensor) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        steps = self._steps(input)
        zo, zc, size = self.grids["gate_outputs"][0], self.grids["cell"][0], self.hidden_size
        h, c = self._start(steps, "hidden"), self._start(steps, "cell")
        outputs = []
        for step in steps:
            acc_i, acc_h, _ = self._accumulate(step, h)
            pre = self._onto(self.gates([acc_i, acc_h], self.gates_bias), "gates")
            sig = self._lookup(self.sigmoid, pre) - zo
            i, f, o = sig[:, :size], sig[:, size : 2 * size], sig[:, 3 * size :]
            g = self._lookup(self.tanh, pre[:, 2 * size : 3 * size]) - zo
            c = self._onto(self.c([f * (c - zc), i * g]), "cell")
            h = self._onto(self.h([o * self._lookup(self.cell_tanh, c, "cell")]), "hidden")
            outputs.append(h)
        return self._stack(outputs), (h.unsqueeze(0), c.unsqueeze(0))


def fixed_constant(fixed: FixedSum, value: Tensor, out_scale) -> Tensor:
    """A real constant on ``fixed``'s fine grid (units of ``out_scale * 2**-shift``)."""
    scaled = torch.as_tensor(value, dtype=torch.float64) / float(out_scale) * 2.0**fixed.shift
    return torch.round(scaled).to(torch.int64)
