"""Choosing the ONNX opset: the lowest one that holds every operator a graph uses.

Both ONNX exports write opset 13 at the least (per-axis ``QuantizeLinear`` and
``Squeeze``/``ReduceSum`` with their axes as an input appear there). Above that, an
operator exists from the opset that introduced it (``onnx.defs``); the Q/DQ export asks
torch's exporter, which names the opset an operator it writes needs (scaled dot-product
attention: 14).
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Callable, Iterable, Optional

from torch.onnx.errors import UnsupportedOperatorError

__all__ = [
    "MIN_OPSET",
    "TORCHSCRIPT_MAX_OPSET",
    "check_opset",
    "required_opset",
    "needed_by_exporter",
    "write_lowest",
]

#: The lowest opset either export writes.
MIN_OPSET = 13

#: The newest opset torch's TorchScript-based exporter writes (torch 2.x documents 20).
TORCHSCRIPT_MAX_OPSET = 20


def check_opset(opset: Optional[int], what: str) -> Optional[int]:
    """``opset`` checked: ``None`` (choose automatically) or an int of 13 or more."""
    if opset is None:
        return None
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int or None (chosen automatically), got {opset!r}")
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is too old for {what}: per-axis QuantizeLinear/DequantizeLinear "
            f"and the integer operators it writes need opset {MIN_OPSET} or newer; use "
            f"opset={MIN_OPSET}, or opset=None to choose the lowest that holds the model"
        )
    return opset


def required_opset(onnx: ModuleType, op_types: Iterable[str]) -> int:
    """The lowest opset (13 or more) in which every operator of ``op_types`` exists.

    Example:
        >>> import pytest; onnx = pytest.importorskip("onnx")
        >>> required_opset(onnx, ["Add", "ConvInteger"]), required_opset(onnx, ["Gelu"])
        (13, 20)
    """
    newest = onnx.defs.onnx_opset_version()
    needed = MIN_OPSET
    for op in sorted(set(op_types)):
        first = next((v for v in range(MIN_OPSET, newest + 1) if _exists(onnx, op, v)), None)
        if first is None:
            raise ValueError(f"operator {op!r} is not in any ONNX opset up to {newest}")
        needed = max(needed, first)
    return needed


def _exists(onnx: ModuleType, op: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op, opset)
    except Exception:  # onnx.defs.SchemaError: no such operator up to that opset
        return False
    return True


_ADDED = re.compile(r"added in (?:opset )?version (\d+)", re.IGNORECASE)


def needed_by_exporter(error: Exception) -> Optional[int]:
    """The opset torch's exporter names in an "unsupported operator" ``error``, or ``None``."""
    match = _ADDED.search(str(error))
    return int(match.group(1)) if match else None


def write_lowest(write: Callable[[int], None], opset: Optional[int]) -> int:
    """Call ``write(version)`` (torch's exporter) at ``opset``, or, for ``None``, at the
    lowest opset from 13 on that holds every operator: when torch names a newer opset for
    an operator it cannot write, the export is tried again there. Returns the opset
    written.

    Raises:
        ValueError: an explicit ``opset`` older than an operator of the model needs; the
            message names the operator and the opset to use.
    """
    version = MIN_OPSET if opset is None else opset
    while True:
        try:
            write(version)
            return version
        except UnsupportedOperatorError as error:
            needed = needed_by_exporter(error)
            if needed is None or needed <= version or needed > TORCHSCRIPT_MAX_OPSET:
                raise
            if opset is not None:
                raise ValueError(
                    f"opset {opset} is too old for this model: {error}. Use opset={needed}, "
                    "or opset=None to choose the lowest opset that holds the model"
                ) from None
            version = needed
