"""Integer average pooling whose window sizes follow the input's shape: adaptive average
pooling (global pooling included) and means over dimensions.

The window sums :math:`S = \\sum (q - z_{in})` are exact integers; each output is then
requantized by the fixed-point multiplier and shift of :math:`r / D` (Jacob et al.
2018, section 2.2), where :math:`r = s_{in} / s_{out}` is the ratio of the scales and
:math:`D` the window's size:

.. math::  q_{out} = \\mathrm{clamp}(\\mathrm{round}(S\\, m\\, 2^{-n}) + z_{out},\\ low,\\ high),
    \\qquad m\\, 2^{-n} \\approx r / D.

The window sizes are known once the input's shape is, so the multipliers are derived
(exactly, from ``r`` as stored) when the shape is seen; with a power-of-two ``r / D``
the result is exact.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from aquatic.functional.fake_quant import broadcast_along
from aquatic.integer.base import IntegerModule
from aquatic.integer.requant import multiply_shift, quantize_multiplier

__all__ = ["IntegerAverage", "adaptive_windows"]


def adaptive_windows(size: int, output: int) -> List[range]:
    """The windows of ``torch.nn.AdaptiveAvgPool*`` along one axis: window ``i`` covers
    ``floor(i * size / output)`` up to ``ceil((i + 1) * size / output)``.

    Example:
        >>> [(w.start, w.stop) for w in adaptive_windows(5, 3)]
        [(0, 2), (1, 4), (3, 5)]
    """
    return [range((i * size) // output, -((-(i + 1) * size) // output)) for i in range(output)]


def _window_sums(x: Tensor, size: int, output: int, axis: int):
    """Sums of ``x`` over the adaptive windows along ``axis``, and the window lengths."""
    windows = adaptive_windows(size, output)
    starts = torch.tensor([w.start for w in windows])
    stops = torch.tensor([w.stop for w in windows])
    cumulative = F.pad(x.cumsum(axis).movedim(axis, -1), (1, 0)).movedim(-1, axis)
    sums = cumulative.index_select(axis, stops) - cumulative.index_select(axis, starts)
    return sums, stops - starts


class IntegerAverage(IntegerModule):
    """Adaptive average pooling or a mean over dimensions, on codes.

    Args:
        mode: ``"adaptive"`` (``output_size`` over the last ``len(output_size)`` axes) or
            ``"mean"`` (over ``dims``, with ``keepdim``).
        ratio: :math:`s_{in} / s_{out}` (a float, or a list with one per channel along
            ``axis``).
        input_zero_point, output_zero_point: zero points.
        low, high: the output code range (saturation).
        rounding: ``"nearest"`` (half to even) or ``"floor"``.
        axis: channel axis (from the end) of a per-channel ``ratio``, else ``None``.
        output_size, dims, keepdim: the pooling's (``-1`` in ``output_size``: the input's
            size along that axis, as ``None`` in torch's ``output_size``).

    Shape:
        - Input: ``(*, C, *spatial)`` codes. Output: the pooled shape, int32.

    Example:
        >>> pool = IntegerAverage("adaptive", ratio=1.0, output_size=[1])
        >>> pool(torch.tensor([[[1, 2, 3, 6]]]))  # mean 3
        tensor([[[3]]], dtype=torch.int32)
    """

    kind = "average"
    _config_keys = (
        "mode",
        "ratio",
        "low",
        "high",
        "rounding",
        "axis",
        "output_size",
        "dims",
        "keepdim",
    )
    _tensor_keys = ("input_zero_point", "output_zero_point")

    def __init__(
        self,
        mode: str,
        ratio,
        input_zero_point=0,
        output_zero_point=0,
        low: int = -(2**31),
        high: int = 2**31 - 1,
        rounding: str = "nearest",
        axis: Optional[int] = None,
        output_size: Sequence[int] = (),
        dims: Sequence[int] = (),
        keepdim: bool = False,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        if mode not in ("adaptive", "mean"):
            raise ValueError(f"mode must be 'adaptive' or 'mean', got {mode!r}")
        # A float (or one per channel), kept in the JSON configuration: exact there.
        self.ratio = torch.as_tensor(ratio, dtype=torch.float64).tolist()
        self._set_tensors(
            {
                "input_zero_point": torch.as_tensor(input_zero_point, dtype=torch.int64),
                "output_zero_point": torch.as_tensor(output_zero_point, dtype=torch.int64),
            }
        )
        self.mode, self.rounding, self.axis = mode, rounding, axis
        self.low, self.high = int(low), int(high)
        self.output_size = [int(v) for v in output_size]
        self.dims, self.keepdim = [int(v) for v in dims], bool(keepdim)

    def _sums(self, x: Tensor):
        if self.mode == "mean":
            sums = x.sum(dim=self.dims, keepdim=self.keepdim)
            count = math.prod(x.shape[d] for d in self.dims)
            return sums, torch.tensor(count)
        count = torch.ones((), dtype=torch.int64)
        for offset, output in enumerate(self.output_size):
            axis = offset - len(self.output_size)
            size = x.shape[axis]
            x, lengths = _window_sums(x, size, size if output == -1 else output, axis)
            count = count.unsqueeze(-1) * lengths  # (out_1, ..., out_k) window sizes
        return x, count

    def forward(self, input: Tensor) -> Tensor:
        x = self._input_codes(input) - broadcast_along(self.input_zero_point, self.axis)
        sums, count = self._sums(x)
        if sums.numel() == 0:
            return sums.to(torch.int32)
        ratio = broadcast_along(torch.tensor(self.ratio, dtype=torch.float64), self.axis)
        bound = int(sums.abs().max())
        bits = math.ceil(math.log2(bound + 1)) if bound else 0
        multiplier, shift = quantize_multiplier(ratio / count, int(min(31, max(1, 62 - bits))))
        y = multiply_shift(sums, multiplier, shift, self.rounding)
        y = y + broadcast_along(self.output_zero_point, self.axis)
        return torch.clamp(y, self.low, self.high).to(torch.int32)
