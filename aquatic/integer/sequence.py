"""Integer counterparts of :class:`aquatic.nn.SelectOutput` and :class:`aquatic.nn.LastStep`,
which place recurrent layers in a sequential integer model."""

from __future__ import annotations

from typing import Any, List, Optional

from torch import Tensor

from aquatic.integer.base import IntegerModule

__all__ = ["IntegerSelectOutput", "IntegerLastStep"]


class IntegerSelectOutput(IntegerModule):
    """Element ``index`` of a tuple (``(output, h_n)`` of an integer recurrent layer).

    Example:
        >>> IntegerSelectOutput(1)((1, 2))
        2
    """

    kind = "select_output"
    _config_keys = ("index",)

    def __init__(
        self, index: int, name: str = "", notes: Optional[List[str]] = None, source: str = ""
    ) -> None:
        super().__init__(name, notes, source)
        self.index = int(index)

    def forward(self, input: Any) -> Any:
        if not isinstance(input, (tuple, list)):
            raise TypeError(f"{self._where()} takes a tuple, got {type(input).__name__}")
        return input[self.index]


class IntegerLastStep(IntegerModule):
    """The last step of integer codes along ``dim``.

    Example:
        >>> import torch
        >>> IntegerLastStep(1)(torch.arange(6).view(1, 3, 2))
        tensor([[4, 5]])
    """

    kind = "last_step"
    _config_keys = ("dim",)

    def __init__(
        self, dim: int, name: str = "", notes: Optional[List[str]] = None, source: str = ""
    ) -> None:
        super().__init__(name, notes, source)
        self.dim = int(dim)

    def forward(self, input: Tensor) -> Tensor:
        return self._input_codes(input).select(self.dim, -1)
