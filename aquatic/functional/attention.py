"""Scaled dot-product attention with a quantizer at each of its inputs.

:math:`\\mathrm{softmax}(\\hat{Q} \\hat{K}^T / \\sqrt{d} + M)`, quantized to
:math:`\\hat{A}`, then :math:`\\hat{A} \\hat{V}` (Vaswani et al. 2017, eq. 1), where hats
mark values passed through their quantizers: both matrix products read values on
grids, as an integer kernel would. :class:`aquatic.nn.MultiheadAttention` calls it.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["additive_mask", "quantized_attention"]

Quantize = Optional[Callable[[Tensor], Tensor]]


def additive_mask(mask: Optional[Tensor], dtype: torch.dtype, name: str) -> Optional[Tensor]:
    """A boolean mask (``True``: not attended) as ``-inf`` where set, zeros elsewhere; a
    floating-point mask as it is (added to the scores), converted to ``dtype``.

    Raises:
        TypeError: a mask of another dtype.

    Example:
        >>> additive_mask(torch.tensor([False, True]), torch.float32, "mask")
        tensor([0., -inf])
    """
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating-point tensor, got {mask.dtype}")
    return mask.to(dtype)


def _apply(quantizer: Quantize, x: Tensor) -> Tensor:
    return x if quantizer is None else quantizer(x)


def quantized_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Optional[Tensor] = None,
    dropout: float = 0.0,
    training: bool = False,
    quantize_q: Quantize = None,
    quantize_k: Quantize = None,
    quantize_v: Quantize = None,
    quantize_weights: Quantize = None,
) -> Tuple[Tensor, Tensor]:
    """Attention of heads ``q`` over ``k``, ``v``, with quantizers at the products' inputs.

    Args:
        q: :math:`(B, L, d)` queries (``B`` = batch times heads).
        k, v: :math:`(B, S, d)` keys and values.
        mask: additive mask broadcasting to :math:`(B, L, S)` (:func:`additive_mask`).
        dropout: dropout probability on the attention weights (in ``training`` only).
        quantize_q, quantize_k, quantize_v: applied to ``q``, ``k``, ``v`` first.
        quantize_weights: applied to the attention weights (after softmax, before
            dropout).

    Returns:
        ``(output, weights)``: :math:`(B, L, d)`, and the weights as they multiply
        ``v`` (:math:`(B, L, S)`, after dropout, as :class:`torch.nn.MultiheadAttention`
        returns them).

    Example:
        >>> q = k = v = torch.randn(2, 3, 4)
        >>> out, w = quantized_attention(q, k, v, quantize_weights=lambda a: a.round())
        >>> out.shape, sorted(w.unique().tolist()) in ([0.0, 1.0], [0.0], [1.0])
        (torch.Size([2, 3, 4]), True)
    """
    q, k, v = _apply(quantize_q, q), _apply(quantize_k, k), _apply(quantize_v, v)
    scores = torch.bmm(q, k.transpose(1, 2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores + mask
    weights = _apply(quantize_weights, torch.softmax(scores, dim=-1))
    if training and dropout > 0.0:
        weights = F.dropout(weights, p=dropout)
    return torch.bmm(weights, v), weights
