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

:class:`IntegerRNN` is the Elman RNN: its pre-activation goes onto the ``gates`` grid
as in step 2, and tanh or ReLU with the ``hidden`` quantizer is a table as in step 3.

Each module is one layer in one direction (``reverse=True``: it reads the sequence
from its last step, as the second direction of a bidirectional torch layer); an LSTM
may project its hidden state (``proj_size``). They start from zero states, or from
given codes (``forward(input, hx)``), requantized onto their own grids when the
layer was built with ``state_scales``. Stacked and bidirectional layers are
:class:`~aquatic.integer.recurrent_stack.IntegerRecurrentStack` of them.
:func:`aquatic.integer.build_gru`, :func:`~aquatic.integer.build_lstm` and
:func:`~aquatic.integer.build_rnn` build these modules from a trained layer.
:func:`aquatic.convert` places them in ``nn.Sequential`` models, where
:class:`aquatic.nn.SelectOutput` picks an element of the tuple a recurrent layer
returns and :class:`aquatic.nn.LastStep` a time step, and in traced graphs, where the
``forward`` indexes that tuple itself (``out, h = self.gru(x)``).
:func:`aquatic.integer.save` and
:meth:`aquatic.integer.IntegerGraph.save` save them: the integer weights and tables as
tensors, the scales and real biases as JSON numbers (float64, exact), from which loading
recomputes the same multipliers.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from aquatic.integer.recurrent_layer import (
    ARGS,
    FixedSum,
    IntegerRecurrentLayer,
    constant_on,
    weight_bound,
)
from aquatic.integer.requant import rounding_right_shift

__all__ = ["FixedSum", "IntegerRNN", "IntegerGRU", "IntegerLSTM", "TANH_BITS"]


class IntegerGRU(IntegerRecurrentLayer):
    __doc__ = (
        """One GRU layer (one direction) on integer codes; see the module docstring.
"""
        + ARGS
        + """
    Shape:
        - Input: :math:`(L, N, H_{in})` codes (:math:`(N, L, H_{in})` with ``batch_first``).
        - Initial state ``hx`` (optional): :math:`(1, N, H)` or :math:`(N, H)` codes.
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
        reverse: bool = False,
        state_scales: Optional[dict] = None,
        state_grids: Optional[dict] = None,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        tables = {"sigmoid": sigmoid, "tanh": tanh}
        options = (batch_first, reverse, state_scales, state_grids)
        s, a_i, a_h, (acc_i, acc_h), b_i, b_h = self._setup(
            weight_ih, weight_hh, bias_ih, bias_hh, scales, grids, tables, options
        )
        size, mag = self.hidden_size, self.magnitude
        o_mag, h_mag = mag["gate_outputs"], mag["hidden"]
        rz, n = slice(0, 2 * size), slice(2 * size, 3 * size)
        # r, z: both accumulators and both biases onto the gates grid.
        self.rz = FixedSum([a_i[rz], a_h[rz]], [acc_i, acc_h], float(s["gates"]))
        self.register_buffer("rz_bias", constant_on(self.rz, b_i[rz] + b_h[rz], s["gates"]))
        # n: the hidden contribution on a grid 2**-12 finer than the gates grid, then
        # multiplied by the reset gate's code.
        fine = float(s["gates"]) * 2.0**-12
        gh_bound = math.ceil((acc_h * float(a_h[n].abs().max()) + float(b_h[n].abs().max())) / fine)
        self.hn = FixedSum([a_h[n]], [acc_h], fine)
        self.register_buffer("hn_bias", constant_on(self.hn, b_h[n], fine))
        self.n = FixedSum(
            [a_i[n], s["gate_outputs"] * fine * torch.ones(size, dtype=torch.float64)],
            [acc_i, o_mag * (gh_bound + 1)],
            float(s["gates"]),
        )
        self.register_buffer("n_bias", constant_on(self.n, b_i[n], s["gates"]))
        # h' = n + z (h - n) = N s_o - Z N s_o**2 + Z H s_o s_h.
        so, sh = s["gate_outputs"], s["hidden"]
        self.h = FixedSum([so, -so * so, so * sh], [o_mag, o_mag * o_mag, o_mag * h_mag], float(sh))

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        steps = self._steps(input)
        self._check_features(steps)
        zo, size = self.grids["gate_outputs"][0], self.hidden_size
        (h0,) = self._states(hx, 1)
        h = self._start(steps, "hidden", h0)
        outputs: List[Tensor] = [h] * steps.shape[0]
        for t in self._order(steps):
            acc_i, acc_h, centered = self._accumulate(steps[t], h)
            rz = self._onto(
                self.rz([acc_i[:, : 2 * size], acc_h[:, : 2 * size]], self.rz_bias), "gates"
            )
            gates_rz = self._lookup(self.sigmoid, rz) - zo
            r, z = gates_rz[:, :size], gates_rz[:, size:]
            hn = self.hn([acc_h[:, 2 * size :]], self.hn_bias)
            n_pre = self._onto(self.n([acc_i[:, 2 * size :], r * hn], self.n_bias), "gates")
            n = self._lookup(self.tanh, n_pre) - zo
            h = self._onto(self.h([n, z * n, z * centered]), "hidden")
            outputs[t] = h
        return self._stack(outputs), h.unsqueeze(0)


class IntegerRNN(IntegerRecurrentLayer):
    __doc__ = (
        """One Elman RNN layer (one direction) on integer codes.

    The pre-activation :math:`W_{ih} x + b_{ih} + W_{hh} h + b_{hh}` goes onto the
    ``gates`` grid (:class:`FixedSum`), and the nonlinearity (tanh or ReLU) with the
    ``hidden`` quantizer is a table from each ``gates`` code to a ``hidden`` code,
    computed at conversion by the quantization-aware layer's own function and
    quantizer, as the GRU's tables are.
"""
        + ARGS.replace(
            """        sigmoid, tanh: lookup tables, the ``gate_outputs`` code of each ``gates`` code
            from ``gates`` low to high.
""",
            """        activation: lookup table, the ``hidden`` code of each ``gates`` code from
            ``gates`` low to high.
""",
        )
        + """
    Shape:
        As :class:`IntegerGRU`.
    """
    )

    kind = "rnn"
    _tensor_keys = ("weight_ih", "weight_hh", "activation")
    _gates = 1

    def __init__(
        self,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Optional[Tensor],
        bias_hh: Optional[Tensor],
        scales: dict,
        grids: dict,
        activation: Tensor,
        batch_first: bool = False,
        reverse: bool = False,
        state_scales: Optional[dict] = None,
        state_grids: Optional[dict] = None,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        options = (batch_first, reverse, state_scales, state_grids)
        s, a_i, a_h, bounds, b_i, b_h = self._setup(
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
            scales,
            grids,
            {"activation": activation},
            options,
        )
        self.gates = FixedSum([a_i, a_h], list(bounds), float(s["gates"]))
        self.register_buffer("gates_bias", constant_on(self.gates, b_i + b_h, s["gates"]))

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        steps = self._steps(input)
        self._check_features(steps)
        (h0,) = self._states(hx, 1)
        h = self._start(steps, "hidden", h0)
        outputs: List[Tensor] = [h] * steps.shape[0]
        for t in self._order(steps):
            acc_i, acc_h, _ = self._accumulate(steps[t], h)
            pre = self._onto(self.gates([acc_i, acc_h], self.gates_bias), "gates")
            h = self._lookup(self.activation, pre)
            outputs[t] = h
        return self._stack(outputs), h.unsqueeze(0)


#: Fractional bits of tanh(c) in the integer LSTM: float32's precision, so that h' follows
#: the quantization-aware layer (TensorFlow Lite's int16 kernels keep 15).
TANH_BITS = 24


class IntegerLSTM(IntegerRecurrentLayer):
    __doc__ = (
        """One LSTM layer (one direction) on integer codes.

    As :class:`IntegerGRU`: the gate pre-activations go onto the ``gates`` grid, sigmoid
    and tanh are tables onto the ``gate_outputs`` grid; then :math:`c' = f c + i g` goes
    onto the ``cell`` grid (:class:`FixedSum` of two integer products), :math:`\\tanh(c')`
    is a table from each ``cell`` code to a fixed-point value with ``TANH_BITS`` (24)
    fractional bits (the quantization-aware layer does not quantize it; 24 bits are
    float32's own precision), and :math:`h' = o \\tanh(c')` goes onto the ``hidden`` grid.
    With a projection (``proj_size`` of torch's LSTM), :math:`h' = W_{hr} (o \\tanh(c'))`:
    the integer products :math:`o \\tanh(c')` times the projection's weight codes, an
    integer matmul, go onto the ``hidden`` grid by one :class:`FixedSum`.
"""
        + ARGS
        + """        cell_tanh: the fixed-point value (``TANH_BITS`` fractional bits) of
            :math:`\\tanh` of each ``cell`` code.
        weight_hr: the projection's weight codes minus their zero points,
            :math:`(H_{out}, H)`, or ``None`` (no projection).

    Shape:
        - Input: as :class:`IntegerGRU`.
        - Initial state ``hx`` (optional): ``(h_0, c_0)``, :math:`(1, N, H_{out})` and
          :math:`(1, N, H)` codes (or without the first dimension).
        - Output: ``(output, (h_n, c_n))``, codes, ``int64``; :math:`H_{out}` features
          (``H`` without a projection).
    """
    )

    kind = "lstm"
    _tensor_keys = ("weight_ih", "weight_hh", "sigmoid", "tanh", "cell_tanh", "weight_hr")
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
        reverse: bool = False,
        state_scales: Optional[dict] = None,
        state_grids: Optional[dict] = None,
        weight_hr: Optional[Tensor] = None,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        tables = {"sigmoid": sigmoid, "tanh": tanh, "cell_tanh": cell_tanh}
        options = (batch_first, reverse, state_scales, state_grids)
        s, a_i, a_h, bounds, b_i, b_h = self._setup(
            weight_ih, weight_hh, bias_ih, bias_hh, scales, grids, tables, options
        )
        o_mag, c_mag = self.magnitude["gate_outputs"], self.magnitude["cell"]
        self.gates = FixedSum([a_i, a_h], list(bounds), float(s["gates"]))
        self.register_buffer("gates_bias", constant_on(self.gates, b_i + b_h, s["gates"]))
        so, sc = s["gate_outputs"], s["cell"]
        # c' = F C s_o s_c + I G s_o**2 (codes minus zero points).
        self.c = FixedSum([so * sc, so * so], [o_mag * c_mag, o_mag * o_mag], float(sc))
        # h' = O T s_o 2**-TANH_BITS, with T the fixed-point tanh(c').
        unit, bound = so * 2.0**-TANH_BITS, o_mag * 2**TANH_BITS
        self.proj_shift = 0
        if weight_hr is None:
            self.register_buffer("weight_hr", None)
        else:
            self.register_buffer("weight_hr", torch.as_tensor(weight_hr).to(torch.int64))
            expected = (self.output_size, self.hidden_size)
            if tuple(self.weight_hr.shape) != expected:
                raise ValueError(
                    f"{self._where()}: weight_hr has shape {tuple(self.weight_hr.shape)}, "
                    f"expected {expected} (H_out, H)"
                )
            # h' = W_hr (O T): an integer matmul of the products, on a coarser fixed point
            # (proj_shift bits dropped) where the sums would otherwise leave int64.
            sums = weight_bound(self.weight_hr, bound)
            self.proj_shift = max(0, math.ceil(math.log2(max(sums, 1))) - 60)
            unit = unit * 2.0**self.proj_shift * s["weight_hr"].expand(self.output_size)
            bound = weight_bound(self.weight_hr, -(-bound // 2**self.proj_shift))
        self.h = FixedSum([unit], [bound], float(s["hidden"]))

    def forward(
        self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        steps = self._steps(input)
        self._check_features(steps)
        zo, zc, size = self.grids["gate_outputs"][0], self.grids["cell"][0], self.hidden_size
        h0, c0 = self._states(hx, 2)
        h, c = self._start(steps, "hidden", h0), self._start(steps, "cell", c0)
        outputs: List[Tensor] = [h] * steps.shape[0]
        for t in self._order(steps):
            acc_i, acc_h, _ = self._accumulate(steps[t], h)
            pre = self._onto(self.gates([acc_i, acc_h], self.gates_bias), "gates")
            sig = self._lookup(self.sigmoid, pre) - zo
            i, f, o = sig[:, :size], sig[:, size : 2 * size], sig[:, 3 * size :]
            g = self._lookup(self.tanh, pre[:, 2 * size : 3 * size]) - zo
            c = self._onto(self.c([f * (c - zc), i * g]), "cell")
            product = o * self._lookup(self.cell_tanh, c, "cell")
            if self.weight_hr is not None:
                product = rounding_right_shift(product, self.proj_shift) @ self.weight_hr.T
            h = self._onto(self.h([product]), "hidden")
            outputs[t] = h
        return self._stack(outputs), (h.unsqueeze(0), c.unsqueeze(0))
