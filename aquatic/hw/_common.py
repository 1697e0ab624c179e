"""Helpers the hardware profiles share: spec checking and model inspection."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DoesNotFitError",
    "as_int_tensor",
    "check_range",
    "check_spikes",
    "grid_codes",
    "quantized_param",
]


class DoesNotFitError(ValueError):
    """A model or specification that the target chip cannot hold or represent.

    A subclass of ``ValueError``; the message names the layer, the value and the limit.
    """


def as_int_tensor(value: Any, name: str, shape: Optional[Sequence[Optional[int]]] = None) -> Tensor:
    """``value`` (tensor, NumPy array, list or int) as an ``int64`` tensor, or raise.

    Floating-point values are refused rather than rounded, so a specification is never
    silently changed. ``shape`` may hold ``None`` for any size along that axis.
    """
    if isinstance(value, Tensor):
        tensor = value.detach().cpu()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be an integer array or tensor, got {value!r}") from None
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integers, got dtype {tensor.dtype}; a specification holds "
            "integer codes (round and convert it, e.g. .round().to(torch.int16))"
        )
    tensor = tensor.to(torch.int64)
    if shape is not None:
        ok = tensor.dim() == len(shape) and all(
            want is None or got == want for got, want in zip(tensor.shape, shape)
        )
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(tensor.shape)}")
    return tensor


def check_range(tensor: Tensor, name: str, low: int, high: int, what: str = "") -> Tensor:
    """Raise a ``DoesNotFitError`` unless every value of ``tensor`` lies in ``[low, high]``."""
    if tensor.numel() == 0:
        return tensor
    smallest, largest = int(tensor.min()), int(tensor.max())
    if smallest < low or largest > high:
        bad = smallest if smallest < low else largest
        detail = f" ({what})" if what else ""
        raise DoesNotFitError(f"{name} holds {bad}, outside the range {low}..{high}{detail}")
    return tensor


def check_spikes(spikes: Any, num_inputs: int, name: str = "spikes") -> Tensor:
    """Input spike counts ``(N, T, num_inputs)`` as ``int64``; non-negative integers."""
    tensor = as_int_tensor(spikes, name)
    if tensor.dim() != 3 or tensor.shape[2] != num_inputs:
        raise ValueError(
            f"{name} must have shape (N, T, {num_inputs}) (batch, time, input channels), "
            f"got {tuple(tensor.shape)}"
        )
    if tensor.numel() and int(tensor.min()) < 0:
        raise ValueError(f"{name} holds spike counts, which cannot be negative")
    return tensor


def grid_codes(value: Tensor, scale: float, name: str, tolerance: float = 1e-3) -> Tensor:
    """Integer codes ``value / scale`` of values that must lie on the grid of ``scale``.

    Raises a ``DoesNotFitError`` naming the worst value when some value is further than
    ``tolerance`` (in steps) from the grid: the model was not trained (or not frozen)
    with the quantizer the target needs, and rounding it would silently change it.
    """
    steps = value.detach().double() / float(scale)
    codes = torch.round(steps)
    error = (steps - codes).abs()
    if error.numel() and float(error.max()) > tolerance:
        index = int(error.flatten().argmax())
        raise DoesNotFitError(
            f"{name} is not on the grid of the shared scale {float(scale):.6g}: "
            f"{float(value.flatten()[index]):.6g} is {float(steps.flatten()[index]):.4f} "
            "steps; quantize it with the target's qconfig() (and train or run a forward "
            "pass) before exporting"
        )
    return codes.to(torch.int64)


def quantized_param(module: nn.Module, name: str) -> Optional[Tensor]:
    """Parameter ``name`` of ``module`` as its forward uses it (through its quantizer).

    Works for aquatic layers (``quantize_params``) and plain ``torch.nn`` modules.
    """
    quantize_params = getattr(module, "quantize_params", None)
    if callable(quantize_params):
        values = quantize_params()
        if name in values:
            return values[name]
    value = getattr(module, name, None)
    return value.detach() if isinstance(value, Tensor) else value


def shape_of(module: nn.Module) -> Tuple[int, ...]:
    """Weight shape of a Linear/Conv module (for messages)."""
    return tuple(module.weight.shape)
