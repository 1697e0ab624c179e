"""Checks of observed ranges: a batch's extrema on every update, and a range loaded from
a ``state_dict``.

A range is either not observed yet (``min_val = +inf``, ``max_val = -inf``, as a new
observer starts) or finite with ``min_val <= max_val``, per tensor or per channel;
:meth:`~aquatic.observers.RangeObserver._load_from_state_dict` refuses anything else
(NaN, an infinite end, ``min_val > max_val``, shapes that differ) before it copies.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

__all__ = [
    "NONFINITE",
    "TOO_LARGE",
    "range_limit",
    "out_of_range",
    "range_error",
    "check_loaded_range",
]

NONFINITE = (
    "{} got a tensor containing NaN or inf; its range would be meaningless. Find where "
    "the non-finite values come from (e.g. torch.autograd.set_detect_anomaly) or clean "
    "the input"
)


TOO_LARGE = (
    "{} observed values up to {:g}, too close to the largest {} ({:g}): the quantized "
    "values at the ends of the range would overflow to inf. Scale or clip the input{}"
)


@functools.lru_cache(maxsize=None)  # runs on every step; torch.finfo is not free
def range_limit(dtype: torch.dtype, quant_min: int, quant_max: int) -> float:
    """The largest magnitude whose fake-quantized values stay finite in ``dtype``.

    A value moves by at most half a step when rounded, and a step is at most
    ``2 * amax / (quant_max - quant_min)`` (twice that rounded up to a power of two),
    so ``amax * (1 + 4 / levels)`` bounds every quantized value of the range.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # observers compute in float32
    return torch.finfo(dtype).max / (1 + 4 / (quant_max - quant_min))


def out_of_range(cur_min: Tensor, cur_max: Tensor, limit: float) -> bool:
    """Whether the extrema hold NaN, inf, or a magnitude above ``limit``."""
    # This runs on every training step, so it is kept to a few small ops.
    if cur_min.dim() == 0 and cur_min.device.type == "cpu":
        return not max(cur_max.item(), -cur_min.item()) <= limit  # NaN compares False
    # max(max, -min) >= 0 is the largest magnitude; floor(amax / limit) is 0 when it is
    # in range and NaN, inf or >= 1 otherwise: one sync for every channel.
    probe = torch.maximum(cur_max, torch.neg(cur_min)).div_(limit).floor_().sum()
    return not probe.item() == 0


def range_error(observer: nn.Module, cur_min: Tensor, cur_max: Tensor, dtype) -> ValueError:
    lo, hi = cur_min.min().item(), cur_max.max().item()
    name = type(observer).__name__
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ValueError(NONFINITE.format(name))
    big = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
    hint = "" if big == torch.float32 else ", or quantize it in float32 (input.float())"
    largest = torch.finfo(big).max
    return ValueError(TOO_LARGE.format(name, max(hi, -lo), big, largest, hint))


def check_loaded_range(observer: nn.Module, state_dict: dict, prefix: str) -> None:
    """Raise a ``ValueError`` naming the key if ``state_dict`` holds a ``min_val`` /
    ``max_val`` pair for ``observer`` that is neither unobserved nor a finite range."""
    low, high = state_dict.get(prefix + "min_val"), state_dict.get(prefix + "max_val")
    if not (isinstance(low, Tensor) and isinstance(high, Tensor)):
        return  # a missing key is torch's to report
    name = type(observer).__name__
    fix = (
        "; the checkpoint holds a range no observer produces: fix or drop those entries, "
        "or load a state_dict saved from a working model"
    )
    if low.shape != high.shape:
        raise ValueError(
            f"{name} cannot load state_dict[{prefix + 'min_val'!r}] of shape "
            f"{tuple(low.shape)} with state_dict[{prefix + 'max_val'!r}] of shape "
            f"{tuple(high.shape)}: one range needs both ends alike{fix}"
        )
    low, high = low.detach().float().flatten(), high.detach().float().flatten()
    unobserved = (low == math.inf) & (high == -math.inf)
    finite = torch.isfinite(low) & torch.isfinite(high)
    valid = unobserved | (finite & (low <= high))
    if bool(valid.all()):
        return
    index = int((~valid).nonzero()[0])
    lo, hi = float(low[index]), float(high[index])
    where = "" if low.numel() == 1 and state_dict[prefix + "min_val"].dim() == 0 else f"[{index}]"
    if math.isnan(lo) or math.isnan(hi):
        reason = "NaN"
    elif bool(finite[index]):
        reason = "min_val > max_val"
    else:
        reason = "an infinite end (only an unobserved range, min_val=inf and max_val=-inf, may)"
    raise ValueError(
        f"{name} cannot load state_dict[{prefix + 'min_val'!r}] = {lo:g} and "
        f"state_dict[{prefix + 'max_val'!r}] = {hi:g}{' at ' + where if where else ''}: "
        f"the range holds {reason}{fix}"
    )
