"""Integer embeddings: table lookups of codes, and bags reduced in integer arithmetic.

:class:`IntegerEmbedding` holds, for every row of the table, the output codes the
quantization-aware :class:`aquatic.nn.Embedding` gives for it (the row's weight codes,
requantized at conversion onto the output grid when ``QConfig.activation`` is set), so
a lookup is bit-exact. :class:`IntegerEmbeddingBag` reduces rows per bag:

- ``"max"``: the largest code per feature of a table like the embedding's (quantizing
  is monotone, so the code of the largest value is the largest code);
- ``"sum"``, ``"mean"``: the table holds each weight step times an integer multiplier
  :math:`m_r = \\mathrm{round}(2^S s_r / s_{out})` (one per row with per-row scales);
  a bag's sum of those goes onto the output grid by a rounding right shift by
  :math:`S`, and for ``"mean"`` by a rounded division by :math:`2^S` times the number
  of rows in the bag (Jacob et al. 2018, section 2.2, for the multiplier).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from aquatic.integer.base import IntegerModule
from aquatic.integer.requant import rounding_right_shift

__all__ = ["IntegerEmbedding", "IntegerEmbeddingBag"]


class IntegerEmbedding(IntegerModule):
    """Row lookup in a table of output codes.

    Args:
        table: ``(num_embeddings, embedding_dim)`` integer codes.

    Shape:
        - Input: :math:`(*)` indices. Output: :math:`(*, H)` codes (``int64``).

    Example:
        >>> emb = IntegerEmbedding(torch.tensor([[0, 1], [5, -3]]))
        >>> emb(torch.tensor([1, 1, 0]))
        tensor([[ 5, -3],
                [ 5, -3],
                [ 0,  1]])
    """

    kind = "embedding"
    _tensor_keys = ("table",)

    def __init__(
        self, table: Tensor, name: str = "", notes: Optional[List[str]] = None, source: str = ""
    ) -> None:
        super().__init__(name, notes, source)
        if table.dim() != 2:
            raise ValueError(f"IntegerEmbedding: table must be 2-D, got shape {tuple(table.shape)}")
        self._set_tensors({"table": table.to(torch.int64)})

    def _indices(self, input: Tensor) -> Tensor:
        index = self._input_codes(input)
        rows = self.table.shape[0]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= rows):
            raise ValueError(
                f"{self._where()}: indices range over [{int(index.min())}, "
                f"{int(index.max())}], outside the table's rows [0, {rows - 1}]"
            )
        return index

    def forward(self, input: Tensor) -> Tensor:
        return self.table[self._indices(input)]


class IntegerEmbeddingBag(IntegerEmbedding):
    """Bags of rows reduced in integer arithmetic (see the module docstring).

    Args:
        table: ``(num_embeddings, embedding_dim)`` ``int64``: output codes for
            ``"max"``; weight steps times the row's multiplier for ``"sum"``/``"mean"``.
        mode: ``"sum"``, ``"mean"`` or ``"max"``.
        shift: :math:`S`, the right shift after the sum (``0`` for ``"max"``).
        zero_point, low, high: the output grid.
        include_last_offset, padding_idx: as :class:`torch.nn.EmbeddingBag`.

    Shape:
        - Input: :math:`(B, N)` indices, or 1-D indices with ``offsets`` (:math:`(B)`).
        - Output: :math:`(B, H)` codes (``int64``); an empty bag gives the code of 0.

    Example:
        >>> bag = IntegerEmbeddingBag(torch.tensor([[4], [8]]), "sum", 2, 0, -128, 127)
        >>> bag(torch.tensor([[0, 1], [1, 1]]))  # (4 + 8) / 4, (8 + 8) / 4
        tensor([[3],
                [4]])
    """

    kind = "embedding_bag"
    _config_keys = (
        "mode",
        "shift",
        "zero_point",
        "low",
        "high",
        "include_last_offset",
        "padding_idx",
    )

    def __init__(
        self,
        table: Tensor,
        mode: str,
        shift: int,
        zero_point: int,
        low: int,
        high: int,
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(table, name, notes, source)
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"IntegerEmbeddingBag: mode must be sum, mean or max, got {mode!r}")
        self.mode, self.shift = mode, int(shift)
        self.zero_point, self.low, self.high = int(zero_point), int(low), int(high)
        self.include_last_offset = bool(include_last_offset)
        self.padding_idx = padding_idx

    def _bags(self, index: Tensor, offsets: Optional[Tensor]) -> Tuple[Tensor, Tensor, int]:
        """``(flat indices, bag of each, number of bags)``."""
        if index.dim() == 2:
            if offsets is not None:
                raise ValueError(f"{self._where()}: offsets go with 1-D input only, got 2-D")
            bags = torch.arange(index.shape[0]).repeat_interleave(index.shape[1])
            return index.reshape(-1), bags, index.shape[0]
        if index.dim() != 1 or offsets is None:
            raise ValueError(
                f"{self._where()} takes 2-D bags, or 1-D indices with offsets; got a "
                f"{index.dim()}-D input" + ("" if offsets is None else " with offsets")
            )
        starts = self._input_codes(offsets).reshape(-1)
        if self.include_last_offset:
            starts = starts[:-1]
        count = starts.numel()
        position = torch.arange(index.numel())
        return index, torch.searchsorted(starts, position, right=True) - 1, count

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None) -> Tensor:
        index, bags, count = self._bags(self._indices(input), offsets)
        rows = self.table[index]
        keep = torch.ones_like(index, dtype=torch.bool)
        if self.padding_idx is not None:
            keep = index != self.padding_idx
        rows, bags = rows[keep], bags[keep]
        width = self.table.shape[1]
        if self.mode == "max":
            out = torch.full((count, width), self.zero_point, dtype=torch.int64)
            out.scatter_reduce_(
                0, bags[:, None].expand(-1, width), rows, "amax", include_self=False
            )
            return out
        total = torch.zeros(count, width, dtype=torch.int64).index_add_(0, bags, rows)
        if self.mode == "sum":
            steps = rounding_right_shift(total, self.shift)
        else:
            sizes = torch.zeros(count, dtype=torch.int64).index_add_(0, bags, torch.ones_like(bags))
            divisor = (sizes.clamp(min=1) << self.shift)[:, None]
            # round(total / divisor), halves up: floor((2 total + divisor) / (2 divisor)).
            steps = torch.div(2 * total + divisor, 2 * divisor, rounding_mode="floor")
        return (steps + self.zero_point).clamp(self.low, self.high)
