"""Observers whose range clips outliers: a percentile, or the least quantization error."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.fake_quant import check_axis
from aquatic.functional.ranges import mse_range, percentile_range
from aquatic.observers.range import RangeObserver

__all__ = ["ClippingObserver", "PercentileObserver", "MSEObserver", "as_rows"]


def as_rows(input: Tensor, ch_axis: Optional[int]) -> Tensor:
    """``input`` as ``(channels, elements)`` float32; one row when ``ch_axis`` is ``None``."""
    input = input.float()
    if ch_axis is None:
        return input.reshape(1, -1)
    axis = check_axis(input, ch_axis)
    return input.movedim(axis, 0).reshape(input.shape[axis], -1)


def check_finite(low: Tensor, high: Tensor, owner: str) -> None:
    """Raise a ValueError when a batch's extrema are not finite (NaN or inf inside)."""
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(
            f"{owner} got a tensor containing NaN or inf; its range would be meaningless. "
            "Find where the non-finite values come from (e.g. "
            "torch.autograd.set_detect_anomaly) or clean the input"
        )


class ClippingObserver(RangeObserver):
    """Base class of observers that estimate a clipped range from each batch.

    Each batch gives a range (:meth:`estimate`, per channel where the observer is);
    ``min_val`` and ``max_val`` hold the mean of the ranges of all batches observed
    (equal weights, so the order of the batches does not matter), and
    ``num_batches`` how many there were. :meth:`update` returns the batch's true
    extrema, as every observer does, so that the quantizer knows whether any value
    clips. These observers use tensors only (no Python-float fast path), and under
    ``torch.distributed`` each rank keeps its own estimate.

    Args: as :class:`~aquatic.observers.RangeObserver`.
    """

    def __init__(
        self,
        quant_min: int = -128,
        quant_max: int = 127,
        symmetric: bool = True,
        ch_axis: Optional[int] = None,
        power_of_two: bool = False,
    ) -> None:
        super().__init__(quant_min, quant_max, symmetric, ch_axis, power_of_two)
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))

    def estimate(self, rows: Tensor) -> Tuple[Tensor, Tensor]:
        """The clipped ``(low, high)`` of each row of a ``(channels, elements)`` batch."""
        raise NotImplementedError

    def supports_scalars(self, input: Tensor) -> bool:
        """Always ``False``: the estimate needs the whole tensor."""
        return False

    @torch.no_grad()
    def update(self, input: Tensor) -> Tuple[Tensor, Tensor]:
        """Merge this batch's clipped range into the running mean; return its extrema."""
        input = input.detach()
        cur_min, cur_max = self._extrema(input)
        check_finite(cur_min, cur_max, type(self).__name__)
        low, high = self.estimate(as_rows(input, self.ch_axis))
        low, high = low.reshape(cur_min.shape), high.reshape(cur_max.shape)
        if not self.initialized or self.min_val.shape != low.shape:
            count = 0
            self.min_val = low.clone()
            self.max_val = high.clone()
        else:
            count = int(self.num_batches)
            # Running mean: m <- m + (x - m) / (n + 1).
            self.min_val.add_((low - self.min_val) / (count + 1))
            self.max_val.add_((high - self.max_val) / (count + 1))
        self.num_batches.fill_(count + 1)
        self.initialized = True
        return cur_min, cur_max


class PercentileObserver(ClippingObserver):
    """The ``(100 - percentile)``-th and ``percentile``-th percentiles of each batch.

    Percentiles interpolate linearly between order statistics (``numpy.percentile``'s
    default); the range is their mean over the batches observed.

    Args:
        percentile: in ``(0, 100]``; ``100`` is the batch's min/max.
        quant_min, quant_max, symmetric, ch_axis, power_of_two: as
            :class:`~aquatic.observers.RangeObserver`.

    Example:
        >>> obs = PercentileObserver(percentile=99.0)
        >>> _ = obs(torch.arange(101.0))
        >>> obs.min_val, obs.max_val
        (tensor(1.), tensor(99.))
    """

    def __init__(
        self,
        percentile: float = 99.99,
        quant_min: int = -128,
        quant_max: int = 127,
        symmetric: bool = True,
        ch_axis: Optional[int] = None,
        power_of_two: bool = False,
    ) -> None:
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)):
            raise TypeError(f"percentile must be a number, got {percentile!r}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}; e.g. 99.99")
        super().__init__(quant_min, quant_max, symmetric, ch_axis, power_of_two)
        self.percentile = float(percentile)

    def estimate(self, rows: Tensor) -> Tuple[Tensor, Tensor]:
        return percentile_range(rows, self.percentile)

    def extra_repr(self) -> str:
        return f"percentile={self.percentile:g}, " + super().extra_repr()


class MSEObserver(ClippingObserver):
    """The clipping range with the least squared quantization error on each batch.

    Searches ``[f \\cdot min, f \\cdot max]`` for ``f = k / steps``, ``k = 1..steps``
    (:func:`aquatic.functional.ranges.mse_range`), with this observer's integer range,
    symmetry and power-of-two scales, so the error is the one the quantizer makes; the
    range is the mean of the batches' best ranges. Weights (observed again on every
    training step) cost ``steps`` fake quantizations each time: use it for calibration,
    then freeze (:func:`aquatic.calibrate` does).

    Args:
        steps: number of candidate clips.
        quant_min, quant_max, symmetric, ch_axis, power_of_two: as
            :class:`~aquatic.observers.RangeObserver`.

    Example:
        >>> obs = MSEObserver(quant_min=-8, quant_max=7)
        >>> _ = obs(torch.cat([torch.linspace(-1, 1, 10000), torch.tensor([20.0])]))
        >>> float(obs.max_val) < 20.0
        True
    """

    def __init__(
        self,
        steps: int = 100,
        quant_min: int = -128,
        quant_max: int = 127,
        symmetric: bool = True,
        ch_axis: Optional[int] = None,
        power_of_two: bool = False,
    ) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}; e.g. 100")
        super().__init__(quant_min, quant_max, symmetric, ch_axis, power_of_two)
        self.steps = steps

    def estimate(self, rows: Tensor) -> Tuple[Tensor, Tensor]:
        return mse_range(
            rows, self.quant_min, self.quant_max, self.symmetric, self.power_of_two, self.steps
        )

    def extra_repr(self) -> str:
        return f"steps={self.steps}, " + super().extra_repr()
