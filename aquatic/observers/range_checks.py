"""Checks and collectives that every range observer's update runs.

- :func:`range_limit` and :func:`out_of_range`: an observed range must be finite and
  leave room for the quantized values at its ends (see :func:`range_error`);
- :func:`all_reduce_range`: the batch extrema of all ranks under ``torch.distributed``;
- :func:`check_loaded_range`: a range loaded from a ``state_dict`` is either not observed
  yet (``min_val = +inf``, ``max_val = -inf``) or finite with ``min_val <= max_val``, per
  tensor or per channel, with the shapes the observer has; anything else is refused
  before it is copied.
"""

from __future__ import annotations

import functools
import math
from typing import Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "NONFINITE",
    "range_limit",
    "out_of_range",
    "range_error",
    "distributed",
    "all_reduce_range",
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
    # The largest magnitude over all channels, NaN if any extremum is NaN (torch.max
    # propagates it): one sync for every channel.
    return not torch.maximum(cur_max, torch.neg(cur_min)).max().item() <= limit


def range_error(observer: nn.Module, cur_min: Tensor, cur_max: Tensor, dtype) -> ValueError:
    """The error for extrema that :func:`out_of_range` refused: non-finite, or too large
    for ``dtype`` (with the fix)."""
    lo, hi = cur_min.min().item(), cur_max.max().item()
    name = type(observer).__name__
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ValueError(NONFINITE.format(name))
    big = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
    hint = "" if big == torch.float32 else ", or quantize it in float32 (input.float())"
    largest = torch.finfo(big).max
    return ValueError(TOO_LARGE.format(name, max(hi, -lo), big, largest, hint))


_DISTRIBUTED_BUILT = torch.distributed.is_available()


def distributed() -> bool:
    """Whether ``torch.distributed`` runs (observers then reduce extrema across ranks)."""
    return _DISTRIBUTED_BUILT and torch.distributed.is_initialized()


def all_reduce_range(cur_min: Tensor, cur_max: Tensor) -> Tuple[Tensor, Tensor]:
    """Minimum of the minima and maximum of the maxima over all ranks, in one collective.

    Packs ``[-min, max, nonfinite]`` and reduces with MAX; the flag makes every rank
    raise together when any rank saw NaN or inf (rather than the others waiting).
    """
    flat_min, flat_max = cur_min.reshape(-1), cur_max.reshape(-1)
    flag = ((flat_min * 0 + flat_max * 0).sum() != 0).to(flat_min.dtype)
    packed = torch.cat([torch.neg(flat_min), flat_max, flag.reshape(1)])
    torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.MAX)
    if not torch.compiler.is_compiling() and packed[-1].item() != 0:
        raise ValueError(NONFINITE.format("an observer on some rank"))
    n = flat_min.numel()
    return torch.neg(packed[:n]).reshape(cur_min.shape), packed[n : 2 * n].reshape(cur_max.shape)


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
