"""Checks of quantizer values, shared by the constructors and by ``load_state_dict``.

A constructor checks what the user gives; a ``state_dict`` can carry any tensor, so
:meth:`aquatic.quantizers.Quantizer._load_from_state_dict` checks the loaded values
again with the same functions (and so the same messages), naming the key.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["check_scale", "check_codes", "check_channels", "describe", "loaded_error"]


def describe(value: Tensor) -> str:
    """A number, or the shape of a tensor of several, for messages."""
    value = value.detach()
    return f"{value.item():g}" if value.numel() == 1 else f"a tensor of shape {tuple(value.shape)}"


def check_scale(
    scale: Tensor, shown: Any, power_of_two: bool = False, fix: str = "", name: str = "scale"
) -> None:
    """Raise a ``ValueError`` unless every value of ``scale`` is finite and > 0 (and a
    power of two when ``power_of_two``); ``shown`` is what the message prints."""
    scale = scale.detach()
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise ValueError(f"{name} must be positive and finite, got {shown}{fix}")
    if power_of_two and not bool((torch.exp2(torch.round(torch.log2(scale))) == scale).all()):
        raise ValueError(
            f"scale {shown} is not a power of two; pass e.g. scale=2**-4, or power_of_two=False"
        )


def check_codes(
    codes: Tensor, shown: Any, quant_min: int, quant_max: int, name: str = "zero_point"
) -> None:
    """Raise a ``ValueError`` unless ``codes`` are integers in ``[quant_min, quant_max]``."""
    codes = codes.detach()
    if codes.is_floating_point() and bool((codes != torch.round(codes)).any()):
        raise ValueError(f"{name} must hold integers, got {shown}")
    if codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got {shown}")
    if bool(((codes < quant_min) | (codes > quant_max)).any()):
        raise ValueError(
            f"{name} {shown} lies outside the integer range "
            f"[{quant_min}, {quant_max}]; choose one inside it"
        )


def check_channels(scale: Tensor, zero_point: Optional[Tensor], ch_axis: Optional[int]) -> None:
    """Raise a ``ValueError`` unless ``scale`` (and ``zero_point``) is one value, or one
    per channel with ``ch_axis`` set, the two with as many channels."""
    for name, value in (("scale", scale), ("zero_point", zero_point)):
        if value is not None and value.dim() > 1:
            raise ValueError(
                f"{name} must be a scalar or 1-D (one per channel), got shape {tuple(value.shape)}"
            )
    per_channel = scale.dim() == 1 or (zero_point is not None and zero_point.dim() == 1)
    if per_channel and ch_axis is None:
        raise ValueError("a per-channel scale or zero_point needs ch_axis= (the channel axis)")
    if zero_point is not None and scale.shape != zero_point.shape:
        raise ValueError(
            f"scale has shape {tuple(scale.shape)} but zero_point {tuple(zero_point.shape)}; "
            "give one zero point per scale"
        )


def loaded_error(module: Any, key: str, error: ValueError) -> ValueError:
    """The error for a value ``module`` refuses to load from ``state_dict[key]``."""
    return ValueError(
        f"{type(module).__name__} cannot load state_dict[{key!r}]: {error}. The checkpoint "
        "holds a value its constructor refuses: fix or drop that entry, or load a "
        "state_dict saved from a working model"
    )
