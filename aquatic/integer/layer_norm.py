"""The integer layer norm: integer mean and variance, an integer square root, and one
rounded division per output.

Layer normalisation is invariant to the input's scale and zero point, so it runs on
the codes :math:`q` of the :math:`n` features themselves (I-BERT, Kim et al. 2021,
section 3.5, computes it on integers the same way). With
:math:`D_i = n q_i - \\sum_j q_j` (:math:`n` times the centred code, an integer),

.. math::

    \\frac{x_i - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}}
    = \\frac{\\sqrt{n}\\, D_i}{\\sqrt{\\sum_j D_j^2 + \\epsilon n^3 / s^2}}

for input scale :math:`s`. The denominator is :math:`r / 2^k` with
:math:`r = \\lfloor\\sqrt{T}\\rfloor`, :math:`T = 2^{2k} \\sum_j D_j^2 + E`,
:math:`E = \\mathrm{round}(2^{2k} \\epsilon n^3 / s^2)` (Newton's integer square root,
:func:`aquatic.functional.integer_math.integer_sqrt`), and the output code is

.. math::

    q^{out}_i = \\mathrm{round}\\left(\\frac{G_i D_i 2^k + B_i r}{r\\, 2^P}\\right) + z_{out},
    \\quad G_i = \\mathrm{round}(2^P \\gamma_i \\sqrt{n} / s_{out}),
    \\quad B_i = \\mathrm{round}(2^P \\beta_i / s_{out}),

saturated to the output quantizer's range. :math:`k` and :math:`P` are the largest that
keep every product below :math:`2^{62}`, so the relative error of the real value before
the final rounding is about :math:`2^{-P} + 2^{-k}/\\sqrt{\\sum D^2}`: the codes equal the
quantization-aware layer's except where its float32 result lies within that of a
rounding boundary, where they are one step apart.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from aquatic.functional.integer_math import integer_sqrt, rounding_divide
from aquatic.integer.base import IntegerModule

__all__ = ["IntegerLayerNorm"]


class IntegerLayerNorm(IntegerModule):
    """Layer norm over the last dimension of integer codes, onto an output grid.

    Args:
        gain: ``(n,)`` integers :math:`G_i` (see the module docstring).
        offset: ``(n,)`` integers :math:`B_i`.
        shift: :math:`k`, the fraction bits of the square root.
        precision: :math:`P`, the fraction bits of ``gain`` and ``offset``.
        eps_term: :math:`E`, the integer epsilon term of :math:`T`.
        output_zero_point, low, high: the output grid's zero point and code range.
        name, notes, source: see :class:`~aquatic.integer.base.IntegerModule`.

    Shape:
        - Input: ``(*, n)`` integer codes. Output: ``(*, n)`` int32.

    Example:
        >>> # gamma = 1, beta = 0, n = 2, output scale 1/4: the codes of (-1, 1) are -4, 4
        >>> norm = IntegerLayerNorm(torch.tensor([5793, 5793]), torch.zeros(2, dtype=torch.long),
        ...                         shift=8, precision=10, eps_term=0, low=-128, high=127)
        >>> norm(torch.tensor([[3, 10], [7, 7]]))
        tensor([[-4,  4],
                [ 0,  0]], dtype=torch.int32)
    """

    kind = "layer_norm"
    _config_keys = ("shift", "precision", "eps_term", "output_zero_point", "low", "high")
    _tensor_keys = ("gain", "offset")

    def __init__(
        self,
        gain: Tensor,
        offset: Tensor,
        shift: int,
        precision: int,
        eps_term: int = 0,
        output_zero_point: int = 0,
        low: int = -128,
        high: int = 127,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        self._set_tensors(
            {
                "gain": torch.as_tensor(gain, dtype=torch.int64),
                "offset": torch.as_tensor(offset, dtype=torch.int64),
            }
        )
        self.shift, self.precision, self.eps_term = int(shift), int(precision), int(eps_term)
        self.output_zero_point, self.low, self.high = int(output_zero_point), int(low), int(high)

    def forward(self, input: Tensor) -> Tensor:
        q = self._input_codes(input)
        n = q.shape[-1]
        if n != self.gain.numel():
            raise ValueError(f"{self._where()} normalizes {self.gain.numel()} features, got {n}")
        d = n * q - q.sum(-1, keepdim=True)
        total = torch.bitwise_left_shift((d * d).sum(-1, keepdim=True), 2 * self.shift)
        root = integer_sqrt(total + self.eps_term).clamp(min=1)
        numerator = torch.bitwise_left_shift(self.gain * d, self.shift) + self.offset * root
        steps = rounding_divide(numerator, torch.bitwise_left_shift(root, self.precision))
        return (steps + self.output_zero_point).clamp(self.low, self.high).to(torch.int32)
