"""Integer clamp: ``ReLU6``, ``Hardtanh`` and ``torch.clamp`` on codes.

A clamp of the real value :math:`(q - z)\\, s` to :math:`[a, b]` is a clamp of the code
:math:`q` to :math:`[z + a/s,\\ z + b/s]` when both bounds lie on the grid. Clamping
commutes with every nondecreasing map (:math:`f(\\min(\\max(x, a), b)) =
\\min(\\max(f(x), f(a)), f(b))`), so a bound off the grid is applied exactly after the
next quantizer instead, to the code that quantizer gives the bound
(:func:`aquatic.integer.build_activation.settle_clamp`).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from aquatic.functional.fake_quant import broadcast_along
from aquatic.integer.base import IntegerModule

__all__ = ["IntegerClamp"]


class IntegerClamp(IntegerModule):
    """``clamp(q, low, high)`` on codes, with bounds per tensor or per channel.

    Args:
        low, high: the code bounds (an int, or one per channel along ``axis``).
        axis: channel axis counted from the end for per-channel bounds, else ``None``.
        deferred: the real bounds ``[a, b]`` when they are off the input grid (the code
            bounds are then the nearest codes, and the clamp is moved after the next
            requantizer where there is one); ``None`` when the bounds are exact.
        name, notes, source: see :class:`~aquatic.integer.base.IntegerModule`.

    Shape:
        - Input: any shape, integer codes. Output: the same shape and dtype.

    Example:
        >>> IntegerClamp(0, 12)(torch.tensor([-3, 5, 40], dtype=torch.int32))
        tensor([ 0,  5, 12], dtype=torch.int32)
    """

    kind = "clamp"
    _config_keys = ("axis", "deferred")
    _tensor_keys = ("low", "high")

    def __init__(
        self,
        low,
        high,
        axis: Optional[int] = None,
        deferred: Optional[Sequence[float]] = None,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        low = torch.as_tensor(low, dtype=torch.int64)
        high = torch.as_tensor(high, dtype=torch.int64)
        if bool((low > high).any()):
            raise ValueError(
                f"IntegerClamp needs low <= high, got {low.tolist()} > {high.tolist()}"
            )
        self._set_tensors({"low": low, "high": high})
        self.axis = axis
        self.deferred = (
            None if deferred is None else [None if v is None else float(v) for v in deferred]
        )

    def forward(self, input: Tensor) -> Tensor:
        x = self._input_codes(input)
        low = broadcast_along(self.low, self.axis)
        high = broadcast_along(self.high, self.axis)
        return torch.minimum(torch.maximum(x, low), high).to(input.dtype)
