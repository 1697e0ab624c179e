"""The integer multi-head attention: integer matmuls, fixed-point requantization, and
softmax through a table-based integer exponential.

The computation of :class:`aquatic.nn.MultiheadAttention` (Vaswani et al. 2017), on
codes; every step is integer arithmetic at inference:

1. the projections :math:`(q_x - z_x) W^T` are integer matmuls, put onto the ``q``,
   ``k``, ``v`` grids with their biases by a :class:`~aquatic.integer.recurrent.FixedSum`
   (a fixed-point multiplier and rounding shift, Jacob et al. 2018, section 2.2);
2. the scores :math:`S = (q - z_q)(k - z_k)^T` are integers whose real value is
   :math:`c S` with :math:`c = s_q s_k / \\sqrt{d}`. Softmax is invariant to a shift,
   so it takes the integer steps :math:`d = \\max S - S \\ge 0` below the row's
   maximum and :math:`e^{-c d}` from two lookup tables in 24-bit fixed point
   (:func:`aquatic.functional.integer_math.table_exp`): a lookup over the
   max-subtracted input, as TensorFlow Lite Micro's int8 softmax does, split in two so
   that it covers any score grid. (I-BERT, Kim et al. 2021, approximates the same
   exponential with a second-order polynomial instead; the tables are exact to 24 bits.)
   Masked keys get :math:`e = 0`;
3. the attention code is :math:`\\mathrm{round}(e_j / (s_a \\sum_k e_k)) + z_a`, one
   integer division with :math:`1 / s_a` as a 24-bit multiplier; a row whose keys are
   all masked gives zeros (torch gives NaN there);
4. :math:`(a - z_a)(v - z_v)` is an integer matmul on the grid :math:`s_a s_v`, exact as
   the float model's product of grid values; the output projection multiplies it with
   the integer ``out_proj`` weights and a :class:`FixedSum` puts it, with the bias, onto
   the output grid.

Each fixed-point step has a relative error of about :math:`2^{-24}`, float32's own, so
the output codes equal the quantization-aware layer's except where one of its float32
intermediate values lies that close to a rounding boundary: then a ``q``, ``k``, ``v`` or
attention code one step apart moves the output, usually by one step, at most by a few.
Where int64 arithmetic cannot keep that precision (signals wider than about 12 bits), the
constructor raises a ``ValueError`` rather than round coarsely.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from torch import Tensor

from aquatic.functional.integer_math import exp_tables, rounding_divide, table_exp
from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.recurrent_layer import FixedSum, constant_on
from aquatic.integer.requant import quantize_multiplier

__all__ = ["IntegerMultiheadAttention", "MAX_KEYS"]

#: The most keys one query attends to (the accumulators' bound rests on it).
MAX_KEYS = 4096
#: Bits of the multiplier that divides by the attention scale.
_DIVIDE_BITS = 24
_SIGNALS = ("q", "k", "v")


def _as_mask(mask: Optional[Tensor], name: str) -> Optional[Tensor]:
    """A boolean mask (``True``: not attended) from a boolean or a 0 / -inf float mask."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        blocked = torch.isneginf(mask)
        if bool(((mask != 0) & ~blocked).any()):
            raise ValueError(
                f"the integer attention takes a {name} of True/False or of 0 and -inf only; "
                "an additive mask with other values has no integer form"
            )
        return blocked
    raise TypeError(f"{name} must be a bool or floating-point tensor, got {mask.dtype}")


class IntegerMultiheadAttention(IntegerModule):
    """Multi-head attention on integer codes; see the module docstring.

    Args:
        weight_q, weight_k, weight_v: ``(E, E_q)``, ``(E, E_k)``, ``(E, E_v)`` weight
            codes minus their zero points.
        weight_out: ``(E, E)`` codes of ``out_proj``'s weight.
        num_heads: as torch's layer.
        scales: float64 numbers (or one per row for the weights): ``query``, ``key``,
            ``value`` (the inputs), ``weight_q``, ``weight_k``, ``weight_v``,
            ``weight_out``, ``q``, ``k``, ``v``, ``attention``, ``output``.
        grids: ``[zero_point, low, high]`` of ``query``, ``key``, ``value``, ``q``, ``k``,
            ``v``, ``attention``, ``output``.
        biases: real biases (lists of float64) under ``q``, ``k``, ``v``, ``out``, or
            ``None`` each.
        batch_first: as torch's layer.
        name, notes, source: see :class:`~aquatic.integer.base.IntegerModule`.

    Shape:
        - Inputs: ``query`` :math:`(L, N, E_q)` codes (:math:`(N, L, E_q)` with
          ``batch_first``, :math:`(L, E_q)` unbatched), ``key``, ``value`` likewise with
          :math:`S` keys (both default to ``query``: self-attention);
          ``key_padding_mask`` :math:`(N, S)` and ``attn_mask`` :math:`(L, S)` or
          :math:`(N H, L, S)`, boolean (``True``: not attended) or float with 0 and
          ``-inf`` only.
        - Output: the output codes, shaped as ``query`` with :math:`E` features, int32.
    """

    kind = "attention"
    _config_keys = ("num_heads", "scales", "grids", "biases", "batch_first")
    _tensor_keys = ("weight_q", "weight_k", "weight_v", "weight_out")

    def __init__(
        self,
        weight_q: Tensor,
        weight_k: Tensor,
        weight_v: Tensor,
        weight_out: Tensor,
        num_heads: int,
        scales: Dict[str, object],
        grids: Dict[str, List[int]],
        biases: Dict[str, Optional[List[float]]],
        batch_first: bool = False,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        weights = dict(weight_q=weight_q, weight_k=weight_k, weight_v=weight_v)
        weights["weight_out"] = weight_out
        self._set_tensors({k: torch.as_tensor(v, dtype=torch.int64) for k, v in weights.items()})
        embed = self.weight_out.shape[0]
        if embed % num_heads:
            raise ValueError(
                f"{self._where()}: {embed} features do not split into {num_heads} heads"
            )
        self.num_heads, self.batch_first = int(num_heads), bool(batch_first)
        s = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in scales.items()}
        # Kept for saving: JSON numbers hold float64 exactly, so a loaded layer computes
        # the same multipliers and tables as the converted one.
        self.scales = {k: v.tolist() for k, v in s.items()}
        self.grids = {k: [int(x) for x in v] for k, v in grids.items()}
        self.biases = {
            k: None if biases.get(k) is None else list(biases[k]) for k in _SIGNALS + ("out",)
        }
        mag = {
            k: max(abs(low - zero), abs(high - zero)) for k, (zero, low, high) in self.grids.items()
        }
        inputs = {"q": "query", "k": "key", "v": "value"}
        for signal in _SIGNALS:
            weight = getattr(self, f"weight_{signal}")
            bound = int(weight.abs().sum(1).max()) * mag[inputs[signal]]
            rate = s[inputs[signal]] * s[f"weight_{signal}"]
            fixed = FixedSum([rate.expand(embed)], [bound], float(s[signal]))
            setattr(self, f"project_{signal}", fixed)
            self.register_buffer(f"bias_{signal}", self._constant(fixed, signal, s[signal], embed))
        head_dim = embed // self.num_heads
        try:
            low, high, self.split = exp_tables(float(s["q"] * s["k"]) / math.sqrt(head_dim))
        except ValueError as error:
            raise ValueError(f"{self._where()}: {error}") from None
        self.register_buffer("exp_low", low)
        self.register_buffer("exp_high", high)
        multiplier, shift = quantize_multiplier(1.0 / s["attention"], _DIVIDE_BITS)
        self.divide = (int(multiplier) << max(0, -int(shift)), max(0, int(shift)))
        # Softmax codes are at least the zero point and sum to about 1 / s_a (each one
        # rounded up by at most half a step), which bounds the sum over the keys.
        total = math.ceil(1.0 / float(s["attention"])) + MAX_KEYS
        bound = total * mag["v"] * int(self.weight_out.abs().sum(1).max())
        rate = s["attention"] * s["v"] * s["weight_out"]
        self.project_out = FixedSum([rate.expand(embed)], [bound], float(s["output"]))
        self.register_buffer(
            "bias_out", self._constant(self.project_out, "out", s["output"], embed)
        )
        for signal in _SIGNALS + ("out",):
            magnitude = mag["output" if signal == "out" else signal]
            self._check_precision(getattr(self, f"project_{signal}"), magnitude, signal)

    def _check_precision(self, fixed: FixedSum, magnitude: int, signal: str) -> None:
        """Refuse multipliers too coarse for outputs up to ``magnitude`` codes: their
        relative error must stay below 2**-8 of one output step."""
        multiplier = fixed.m0.abs()
        positive = multiplier[multiplier > 0]
        smallest = int(positive.min()) if positive.numel() else 2**62
        if smallest * 2.0**-8 < max(magnitude, 1):
            raise ValueError(
                f"{self._where()}: the {signal!r} requantization keeps only "
                f"{smallest.bit_length()} bits, too few for {magnitude.bit_length()}-bit codes "
                "in int64 arithmetic; quantize the attention's signals with fewer bits "
                "(e.g. 8)"
            )

    def _constant(self, fixed: FixedSum, key: str, out_scale: Tensor, size: int) -> Tensor:
        bias = self.biases[key]
        value = torch.zeros(size, dtype=torch.float64) if bias is None else torch.tensor(bias)
        return constant_on(fixed, value, out_scale)

    def config(self) -> dict:
        """The constructor's JSON arguments: scales and biases as float64 numbers."""
        result = super().config()
        result.update(scales=dict(self.scales), grids=dict(self.grids), biases=dict(self.biases))
        return result

    def output_spec(self) -> QSpec:
        """The meaning of the output codes."""
        zero, low, high = self.grids["output"]
        return QSpec(torch.tensor(self.scales["output"]), zero, None, low, high)

    def _onto(self, total: Tensor, grid: str) -> Tensor:
        zero, low, high = self.grids[grid]
        return (total + zero).clamp(low, high)

    def _project(self, codes: Tensor, signal: str, source: str) -> Tensor:
        """Centred ``q``/``k``/``v`` codes of inputs ``codes`` ``(T, N, E_in)``."""
        centered = codes - self.grids[source][0]
        acc = centered @ getattr(self, f"weight_{signal}").T
        fixed = getattr(self, f"project_{signal}")
        return (
            self._onto(fixed([acc], getattr(self, f"bias_{signal}")), signal)
            - self.grids[signal][0]
        )

    def _heads(self, x: Tensor) -> Tensor:
        steps, batch, embed = x.shape
        head_dim = embed // self.num_heads
        return x.reshape(steps, batch * self.num_heads, head_dim).transpose(0, 1)

    def _masks(self, key_padding_mask, attn_mask, batch: int, keys: int) -> Optional[Tensor]:
        mask = _as_mask(attn_mask, "attn_mask")
        if mask is not None and mask.dim() == 2:
            mask = mask.unsqueeze(0)
        padding = _as_mask(key_padding_mask, "key_padding_mask")
        if padding is not None:
            padding = padding.reshape(batch, 1, 1, keys).expand(-1, self.num_heads, -1, -1)
            padding = padding.reshape(batch * self.num_heads, 1, keys)
            mask = padding if mask is None else mask | padding
        return mask

    def softmax(self, scores: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Attention codes (zero point subtracted) of integer ``scores`` ``(B, L, S)``."""
        lowest = torch.iinfo(torch.int64).min
        masked = scores if mask is None else scores.masked_fill(mask, lowest)
        top = masked.amax(-1, keepdim=True)
        e = table_exp((top - scores).clamp(min=0), self.exp_low, self.exp_high, self.split)
        if mask is not None:
            e = e.masked_fill(mask, 0)
        total = e.sum(-1, keepdim=True).clamp(min=1)
        multiplier, shift = self.divide
        steps = rounding_divide(e * multiplier, torch.bitwise_left_shift(total, shift))
        return self._onto(steps, "attention") - self.grids["attention"][0]

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        value: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        key = query if key is None else key
        value = key if value is None else value
        x = [self._input_codes(t) for t in (query, key, value)]
        if len({t.dim() for t in x}) != 1 or x[0].dim() not in (2, 3):
            raise ValueError(
                f"{self._where()}: query, key and value must all be 3-D (batched) or all "
                f"2-D, got shapes {[tuple(t.shape) for t in x]}"
            )
        batched = x[0].dim() == 3
        if not batched:
            x = [t.unsqueeze(1) for t in x]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            x = [t.transpose(0, 1) for t in x]
        length, batch, _ = x[0].shape
        keys = x[1].shape[0]
        if keys > MAX_KEYS:
            raise ValueError(f"{self._where()} attends to at most {MAX_KEYS} keys, got {keys}")
        q, k, v = (
            self._heads(self._project(t, s, src))
            for t, s, src in zip(x, _SIGNALS, ("query", "key", "value"))
        )
        mask = self._masks(key_padding_mask, attn_mask, batch, keys)
        weights = self.softmax(torch.bmm(q, k.transpose(1, 2)), mask)
        heads = torch.bmm(weights, v).transpose(0, 1).reshape(length, batch, -1)
        out = self.project_out([heads @ self.weight_out.T], self.bias_out)
        out = self._onto(out, "output").to(torch.int32)
        if not batched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_heads={self.num_heads}, batch_first={self.batch_first}"
