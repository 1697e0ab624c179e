"""``layer_to_int``: the integer codes of a layer's quantized parameters, as a function."""

from __future__ import annotations

from typing import Any, Dict

from torch import nn

from aquatic.nn.base import QuantizedModule

__all__ = ["layer_to_int"]


def layer_to_int(layer: nn.Module) -> Dict[str, Dict[str, Any]]:
    """``layer.to_int()``: integer codes and quantization parameters of every quantized
    parameter of an aquatic ``layer`` (see :meth:`aquatic.nn.QuantizedModule.to_int`).

    Raises:
        TypeError: ``layer`` is not an aquatic layer.
        ValueError: a quantizer has no range yet (never saw data).
    """
    if not isinstance(layer, QuantizedModule):
        raise TypeError(
            f"layer_to_int takes an aquatic layer (aquatic.nn), got {type(layer).__name__}; "
            "swap torch layers with aquatic.quantize(model, qconfig) first"
        )
    return layer.to_int()
