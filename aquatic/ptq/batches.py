"""Calibration data: batches, the model input they hold, and an optional progress bar."""

from __future__ import annotations

import importlib
import itertools
from types import ModuleType
from typing import Any, Iterable, List, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "take_batches",
    "model_input",
    "target_of",
    "device_of",
    "progress_bar",
    "check_model",
    "optional_import",
    "reset_states",
]


def check_model(model: Any, who: str) -> nn.Module:
    """``model`` if it is an ``nn.Module``, else a TypeError naming ``who``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model must be an nn.Module, got {type(model).__name__}")
    return model


def take_batches(data: Iterable, num_batches: Optional[int], who: str) -> List[Any]:
    """The first ``num_batches`` batches of ``data`` (all when ``None``), as a list.

    Calibration sets are small, and several passes over the same batches (bias
    correction, sensitivity) must see the same data even when ``data`` is a generator.

    Raises:
        TypeError: ``data`` is a single tensor or not iterable.
        ValueError: ``num_batches`` is not a positive int, or ``data`` has no batches.
    """
    if num_batches is not None and (
        isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1
    ):
        raise ValueError(f"{who}: num_batches must be a positive int or None, got {num_batches!r}")
    if isinstance(data, Tensor):
        raise TypeError(
            f"{who}: data must be an iterable of batches (a DataLoader, a list of tensors or "
            "of (input, target) tuples), got a single tensor; pass [x] for one batch"
        )
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(
            f"{who}: data must be an iterable of batches (a DataLoader, a list of tensors or "
            f"of (input, target) tuples), got {type(data).__name__}"
        ) from None
    batches = list(itertools.islice(iterator, num_batches))
    if not batches:
        raise ValueError(
            f"{who}: data holds no batches; pass at least one batch of representative inputs"
        )
    return batches


def model_input(batch: Any, device: Optional[torch.device]) -> Tensor:
    """The model input in ``batch`` (a tensor, or the first item of a tuple or list)."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(
            "each batch must be a tensor or an (input, target, ...) tuple or list whose first "
            f"item is a tensor, got {type(batch).__name__}"
        )
    return batch if device is None else batch.to(device)


def target_of(batch: Any, device: Optional[torch.device]) -> Optional[Any]:
    """The second item of an ``(input, target, ...)`` batch, ``None`` for a bare tensor."""
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        target = batch[1]
        return target.to(device) if isinstance(target, Tensor) and device is not None else target
    return None


def device_of(model: nn.Module) -> Optional[torch.device]:
    """The device of the model's first parameter or buffer; ``None`` if it has neither."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return None


def optional_import(package: str, purpose: str) -> ModuleType:
    """Import the optional ``package``, or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the optional package {package!r}, which is not installed: "
            f"pip install {package}"
        ) from error


def progress_bar(iterable: Iterable, enabled: bool, desc: str, total: Optional[int] = None):
    """``iterable`` wrapped in a tqdm bar when ``enabled`` and tqdm is installed.

    tqdm is optional: without it the work runs the same, without a bar (a progress
    bar is a convenience, not worth an error).
    """
    if not enabled:
        return iterable
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        return iterable
    return tqdm.tqdm(iterable, desc=desc, total=total, leave=False)


def reset_states(model: nn.Module) -> None:
    """Forget the neuron states that spiking layers keep between calls."""
    for module in model.modules():
        reset = getattr(module, "reset_states", None)
        if callable(reset):
            reset()
