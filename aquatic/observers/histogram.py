"""Entropy calibration: a histogram of magnitudes, clipped where KL divergence is least."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.ranges import kl_levels, kl_threshold
from aquatic.observers.clipping import as_rows, check_finite
from aquatic.observers.range import RangeObserver

__all__ = ["HistogramObserver"]


class HistogramObserver(RangeObserver):
    """TensorRT's entropy calibration (Migacz 2017), per tensor or per channel.

    Keeps a histogram of :math:`|x|` over every batch observed (``bins`` equal bins
    from 0, the first batch's largest magnitude half a bin below the top; when a batch exceeds the covered range, the bin width doubles, merging
    pairs of bins exactly, until it covers it). After each batch the threshold
    :math:`t` minimising :math:`KL(P \\| Q)` between the histogram and its quantized
    version (:func:`aquatic.functional.ranges.kl_threshold`) sets the range
    ``[max(min, -t), min(max, t)]`` of the data seen. The number of quantization levels
    is the codes on one side of zero for data with negative values quantized
    symmetrically (128 for int8, as TensorRT), every code for non-negative data.
    torch.ao's ``HistogramObserver`` shares the histogram idea but searches the
    clip by L2 error; :class:`~aquatic.observers.MSEObserver` is that criterion here.
    The search runs after every batch, once per channel: for large per-channel
    tensors, fewer ``bins`` keep it quick.

    Args:
        bins: number of histogram bins (TensorRT uses 2048).
        quant_min, quant_max, symmetric, ch_axis, power_of_two: as
            :class:`~aquatic.observers.RangeObserver`.

    Example:
        >>> obs = HistogramObserver()
        >>> x = torch.cat([torch.randn(10000, generator=torch.Generator().manual_seed(0)),
        ...                torch.tensor([40.0])])
        >>> _ = obs(x)
        >>> 2.0 < float(obs.max_val) < 10.0  # the outlier at 40 is clipped
        True
    """

    def __init__(
        self,
        bins: int = 2048,
        quant_min: int = -128,
        quant_max: int = 127,
        symmetric: bool = True,
        ch_axis: Optional[int] = None,
        power_of_two: bool = False,
    ) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even int >= 2, got {bins!r}; e.g. 2048")
        super().__init__(quant_min, quant_max, symmetric, ch_axis, power_of_two)
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(0, bins))
        self.register_buffer("bin_width", torch.zeros(0))
        self.register_buffer("data_min", torch.zeros(0))
        self.register_buffer("data_max", torch.zeros(0))

    def supports_scalars(self, input: Tensor) -> bool:
        """Always ``False``: the histogram needs the whole tensor."""
        return False

    @torch.no_grad()
    def update(self, input: Tensor) -> Tuple[Tensor, Tensor]:
        """Add ``input`` to the histogram and set the range; return the batch extrema."""
        input = input.detach()
        cur_min, cur_max = self._extrema(input)
        check_finite(cur_min, cur_max, type(self).__name__)
        rows = as_rows(input, self.ch_axis)
        if not self.initialized or self.histogram.shape[0] != rows.shape[0]:
            channels = rows.shape[0]
            self.histogram = torch.zeros(channels, self.bins, device=rows.device)
            self.bin_width = torch.zeros(channels, device=rows.device)
            self.data_min = rows.amin(dim=1)
            self.data_max = rows.amax(dim=1)
        else:
            self.data_min = torch.minimum(self.data_min, rows.amin(dim=1))
            self.data_max = torch.maximum(self.data_max, rows.amax(dim=1))
        low, high = [], []
        for c in range(rows.shape[0]):
            threshold = self._add(c, rows[c].abs())
            signed = bool(self.data_min[c] < 0)
            low.append(torch.clamp(self.data_min[c], min=-threshold))
            high.append(torch.clamp(self.data_max[c], max=threshold))
            if not signed:
                low[-1] = torch.clamp(low[-1], max=0.0)
        self.min_val = torch.stack(low).reshape(cur_min.shape)
        self.max_val = torch.stack(high).reshape(cur_max.shape)
        self.initialized = True
        return cur_min, cur_max

    def _add(self, c: int, magnitudes: Tensor) -> float:
        """Add one channel's magnitudes to its histogram; return its KL threshold."""
        top = float(magnitudes.max())
        width = float(self.bin_width[c])
        if width == 0.0:
            # The first data (or all zeros so far) fixes the bin width; the bins cover
            # [0, bins * width), with the largest value half a bin inside.
            width = max(top, torch.finfo(torch.float32).tiny) / (self.bins - 0.5)
        hist = self.histogram[c]
        while top >= width * self.bins:
            # Double the width: bins 2k and 2k+1 merge into bin k, exactly.
            merged = hist.reshape(-1, 2).sum(dim=1)
            hist = torch.cat([merged, torch.zeros_like(merged)])
            width *= 2.0
        index = torch.clamp((magnitudes / width).floor().long(), max=self.bins - 1)
        hist = hist + torch.bincount(index, minlength=self.bins).to(hist.dtype)
        self.histogram[c] = hist
        self.bin_width[c] = width
        signed = bool(self.data_min[c] < 0)
        if signed and self.quant_min >= 0:
            # Signed data on unsigned codes: half the codes on each side of zero.
            levels = max((self.quant_max - self.quant_min + 1) // 2, 1)
        else:
            levels = kl_levels(self.quant_min, self.quant_max, signed)
        return kl_threshold(hist, width, levels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("histogram", "bin_width", "data_min", "data_max"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                getattr(self, name).resize_(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, " + super().extra_repr()
