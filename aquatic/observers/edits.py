"""Modules that count the changes of their attributes, so that what was decided from
them can tell whether it still holds."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["CountsEdits"]


class CountsEdits(nn.Module):
    """An ``nn.Module`` that counts how many times an attribute of it was set or deleted
    (:attr:`edits`): its mode, a flag, a buffer or submodule replaced, a setting. A
    quantizer's :class:`~aquatic.quantizers.fused.Plan` holds only while its observer's
    count stays the same. Not counted: changes inside a tensor (``fill_``) and entries
    replaced in ``_buffers`` directly (``.to()``), which the plan checks itself.

    Example:
        >>> from aquatic.observers import MinMaxObserver
        >>> obs = MinMaxObserver()
        >>> before = obs.edits
        >>> obs.quant_max = 100
        >>> obs.edits == before + 1
        True
    """

    @property
    def edits(self) -> int:
        """How many times an attribute was set or deleted."""
        return self.__dict__.get("_edits", 0)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        self.__dict__["_edits"] = self.edits + 1

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        self.__dict__["_edits"] = self.edits + 1
