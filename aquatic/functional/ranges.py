"""Clipping ranges that trade clipping error for rounding error (pure functions).

Each function takes the values one range covers as the rows of a 2-D tensor
(``(channels, elements)``; one row per tensor) and returns ``(low, high)``, one value
per row; the observers of :mod:`aquatic.observers` feed them and keep the result.

- :func:`percentile_range`: the ``q``-th and ``(100 - q)``-th percentiles (linear
  interpolation between order statistics, as ``numpy.percentile``).
- :func:`mse_range`: the clipping range, among ``[f \\cdot min, f \\cdot max]`` for
  ``f`` on a grid, whose fake-quantized values are closest to the inputs in squared
  error (the search of Banner et al. 2019, "Post training 4-bit quantization of
  convolutional networks for rapid-deployment", NeurIPS, done numerically).
- :func:`kl_threshold`: the clipping threshold that minimises the Kullback-Leibler
  divergence between a histogram and its quantized version (Migacz 2017, "8-bit
  Inference with TensorRT", GPU Technology Conference; also torch.ao's
  ``HistogramObserver`` lineage).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from aquatic.functional.fake_quant import fake_quantize_affine
from aquatic.functional.qparams import calculate_qparams

__all__ = ["percentile_range", "mse_range", "kl_threshold", "kl_levels"]


def percentile_range(rows: Tensor, percentile: float) -> Tuple[Tensor, Tensor]:
    """The ``(100 - percentile)``-th and ``percentile``-th percentiles of each row.

    Example:
        >>> rows = torch.arange(101.0).reshape(1, -1)
        >>> percentile_range(rows, 99.0)
        (tensor([1.]), tensor([99.]))
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}; e.g. 99.99")
    ordered = rows.double().sort(dim=1).values
    last = ordered.shape[1] - 1

    def at(fraction: float) -> Tensor:
        # numpy.percentile's default: linear interpolation between order statistics.
        position = fraction * last
        below = int(position)
        above = min(below + 1, last)
        weight = position - below
        return ordered[:, below] + (ordered[:, above] - ordered[:, below]) * weight

    return at(1.0 - percentile / 100.0).float(), at(percentile / 100.0).float()


def mse_range(
    rows: Tensor,
    quant_min: int,
    quant_max: int,
    symmetric: bool,
    power_of_two: bool = False,
    steps: int = 100,
) -> Tuple[Tensor, Tensor]:
    """Per row, the range ``[f min, f max]`` (``f = k / steps``, ``k = 1..steps``) whose
    fake-quantized row has the least squared error; the largest ``f`` on ties.

    Example:
        >>> rows = torch.cat([torch.linspace(-1, 1, 1001), torch.tensor([10.0])]).reshape(1, -1)
        >>> mse_range(rows, -8, 7, symmetric=True, steps=10)  # the outlier at 10 clips
        (tensor([-0.3000]), tensor([3.]))
    """
    rows = rows.float()
    channels, size = rows.shape
    low, high = rows.amin(dim=1), rows.amax(dim=1)
    # From the full range down, so that a tie keeps the wider range (clips least):
    # argmin returns the first minimum. The candidates are evaluated in chunks of
    # stacked copies of the rows (one fake-quantize call each, about 2**22 values).
    factors = torch.arange(steps, 0, -1, dtype=torch.float32, device=rows.device) / steps
    chunk = max(1, min(steps, 2**22 // max(rows.numel(), 1)))
    errors = []
    for start in range(0, steps, chunk):
        f = factors[start : start + chunk, None]  # (k, 1)
        cand_low, cand_high = (low * f).reshape(-1), (high * f).reshape(-1)
        scale, zero_point = calculate_qparams(
            cand_low, cand_high, quant_min, quant_max, symmetric, power_of_two
        )
        stacked = rows.repeat(len(f), 1)  # (k * channels, size)
        quantized = fake_quantize_affine(
            stacked, scale, zero_point, quant_min, quant_max, ch_axis=0
        )
        errors.append((quantized - stacked).pow(2).sum(dim=1).reshape(len(f), channels))
    best = torch.cat(errors).argmin(dim=0)  # (channels,)
    chosen = factors[best]
    return low * chosen, high * chosen


def kl_levels(quant_min: int, quant_max: int, signed_data: bool) -> int:
    """How many codes cover one side of the data: the ``128`` of TensorRT for int8.

    Signed data quantized symmetrically uses the codes above zero and zero itself
    (``quant_max + 1``); non-negative data uses every code.
    """
    if signed_data:
        return max(min(quant_max, -quant_min), 1) + 1
    return quant_max - quant_min + 1


def kl_threshold(histogram: Tensor, bin_width: float, levels: int, chunk: int = 128) -> float:
    """The threshold ``i * bin_width`` that minimises :math:`KL(P_i \\| Q_i)`.

    ``histogram`` counts magnitudes in ``bins`` equal bins from 0. For each candidate
    ``i`` from ``levels`` to ``bins`` (Migacz 2017): :math:`P_i` is the first ``i`` bins
    with the counts beyond them added to bin ``i - 1`` (they clip to it); :math:`Q_i`
    merges the first ``i`` bins into ``levels`` groups (bin ``b`` in group
    :math:`\\lfloor b \\cdot levels / i \\rfloor`) and spreads each group's count evenly
    over its non-empty bins. Both are normalised; a bin where :math:`P_i > 0` and
    :math:`Q_i = 0` gets :math:`Q_i = 10^{-10}` (the smoothing that keeps the divergence
    finite). The smallest ``i`` wins a tie.

    Example:
        >>> hist = torch.tensor([50.0, 30, 10, 5, 2, 1, 0, 0, 0, 1])
        >>> kl_threshold(hist, bin_width=0.1, levels=4)  # the far outlier is clipped
        0.4
    """
    hist = histogram.detach().double().cpu()  # a few thousand bins: the CPU is quickest
    bins = hist.numel()
    if levels >= bins:
        return bins * bin_width
    total = hist.sum()
    cumsum = hist.cumsum(0)
    b = torch.arange(bins, dtype=torch.float64)
    best_kl, best_i = float("inf"), bins
    for start in range(levels, bins + 1, chunk):
        i = torch.arange(start, min(start + chunk, bins + 1), dtype=torch.float64)[:, None]
        inside = b[None, :] < i
        raw = hist[None, :] * inside
        p = raw.clone()
        tail = total - cumsum[i.long().squeeze(1) - 1]
        p.scatter_add_(1, i.long() - 1, tail[:, None])
        group = torch.where(inside, torch.floor(b[None, :] * levels / i), float(levels)).long()
        group = group.clamp(max=levels)
        sums = torch.zeros(len(i), levels + 1, dtype=torch.float64).scatter_add_(1, group, raw)
        counts = torch.zeros_like(sums).scatter_add_(1, group, (raw > 0).double())
        q = torch.where(raw > 0, sums.gather(1, group) / counts.gather(1, group).clamp(min=1), 0.0)
        p = p / p.sum(dim=1, keepdim=True).clamp(min=1e-300)
        q = q / q.sum(dim=1, keepdim=True).clamp(min=1e-300)
        q = torch.where((p > 0) & (q == 0), 1e-10, q)
        terms = torch.where(p > 0, p * torch.log(p / q.clamp(min=1e-300)), 0.0)
        kl = terms.sum(dim=1)
        k = int(torch.argmin(kl))
        if float(kl[k]) < best_kl:
            best_kl, best_i = float(kl[k]), int(i[k])
    return best_i * bin_width
