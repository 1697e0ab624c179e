"""Binary and ternary weight quantizers."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.fake_quant import check_axis, broadcast_along, check_ch_axis
from aquatic.functional.grid import Grid
from aquatic.functional.rounding import sign_ste, straight_through
from aquatic.quantizers.base import Quantizer

__all__ = ["BinaryQuantizer", "TernaryQuantizer"]


def _mean_abs(input: Tensor, ch_axis: Optional[int], mask: Optional[Tensor] = None) -> Tensor:
    """Mean of ``|input|`` per channel (or overall), over ``mask`` where given."""
    magnitude = input.abs() if mask is None else input.abs() * mask
    dims = tuple(d for d in range(input.dim()) if d != ch_axis) if ch_axis is not None else None
    if mask is None:
        return magnitude.mean(dim=dims) if dims else magnitude.mean()
    total = magnitude.sum(dim=dims) if dims else magnitude.sum()
    count = mask.sum(dim=dims) if dims else mask.sum()
    return total / torch.clamp(count, min=1)


class _ScaledCodes(Quantizer):
    """Shared parts of binary and ternary quantizers: a scale buffer and the grid."""

    #: How codes are chosen, for :class:`~aquatic.functional.grid.Grid`'s ``rounding``.
    _rounding = "sign"

    def __init__(self, ch_axis: Optional[int]) -> None:
        super().__init__()
        self.ch_axis = check_ch_axis(ch_axis)
        # The scale of the last tensor quantized, for qparams() and integer export.
        self.register_buffer("scale", torch.tensor(1.0))

    def _remember(self, scale: Tensor) -> None:
        if self.scale.shape == scale.shape:
            self.scale.copy_(scale.detach())
        else:
            self.scale = scale.detach().float().clone()

    def _prepare_load(self, state_dict, prefix):
        saved = state_dict.get(prefix + "scale")
        if saved is not None and saved.shape != self.scale.shape:
            self.scale = torch.empty_like(saved)

    def grid(self) -> Grid:
        """The scale of the last tensor quantized, zero point 0, codes ``-1..1``.

        Values are :math:`a\\,t` with codes :math:`t` in ``{-1, +1}`` (binary) or
        ``{-1, 0, +1}`` (ternary): a uniform grid, reached by thresholding rather than
        rounding (``rounding`` is ``"sign"`` or ``"threshold"``). Before any tensor is
        quantized the scale is 1.
        """
        ch_axis = self.ch_axis if self.scale.dim() == 1 else None
        zero_point = torch.zeros_like(self.scale, dtype=torch.int32)
        return Grid(self.scale, zero_point, -1, 1, ch_axis, self._rounding)

    def qparams(self) -> Dict[str, Any]:
        """``scale`` of the last tensor quantized, zero point 0, codes ``-1..1``."""
        return self.grid().qparams()


class BinaryQuantizer(_ScaledCodes):
    """Binarize to :math:`\\{-a, +a\\}`: :math:`\\hat{x} = a\\,\\mathrm{sign}(x)`.

    With ``scale="mean"``, :math:`a` is the mean of :math:`|x|` per channel along
    ``ch_axis`` (or over the whole tensor when ``ch_axis=None``), as in XNOR-Net
    (Rastegari et al. 2016); with ``scale=None``, :math:`a = 1` (BinaryConnect,
    Courbariaux et al. 2015). ``sign(0) = +1``. The gradient of the sign is the
    hard-tanh straight-through estimator (passes where :math:`|x| \\le` ``clip``), and
    the mean scale is differentiated by autograd.

    Args:
        scale: ``"mean"`` or ``None``.
        ch_axis: channel axis of the per-channel scale; ``None`` for one scale.
        clip: STE window; ``None`` passes the gradient everywhere.

    Example:
        >>> q = BinaryQuantizer(scale="mean", ch_axis=0)
        >>> w = torch.tensor([[0.5, -1.5], [0.1, 0.3]])
        >>> q(w)
        tensor([[ 1.0000, -1.0000],
                [ 0.2000,  0.2000]])
        >>> q.to_int(w)
        tensor([[ 1, -1],
                [ 1,  1]], dtype=torch.int8)
    """

    def __init__(
        self, scale: Optional[str] = "mean", ch_axis: Optional[int] = 0, clip: Optional[float] = 1.0
    ) -> None:
        super().__init__(ch_axis)
        if scale not in ("mean", None):
            raise ValueError(f"scale must be 'mean' or None, got {scale!r}")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be positive or None, got {clip!r}")
        self.scale_mode = scale
        self.clip = clip

    def _axis(self, input: Tensor) -> Optional[int]:
        return check_axis(input, self.ch_axis) if self.scale_mode == "mean" else None

    def _scale(self, input: Tensor) -> Tensor:
        if self.scale_mode is None:
            return torch.ones((), dtype=input.dtype, device=input.device)
        return _mean_abs(input, self._axis(input))

    def fake_quantize(self, input: Tensor) -> Tensor:
        scale = self._scale(input)
        self._remember(scale)
        return sign_ste(input, self.clip) * broadcast_along(scale, self._axis(input), input.dim())

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """Codes in ``{-1, +1}`` (int8); the scale is recorded for :meth:`qparams`."""
        self._remember(self._scale(input).float())
        return torch.where(input >= 0, 1, -1).to(torch.int8)

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale_mode!r}, ch_axis={self.ch_axis}, clip={self.clip}"
            + self._switch_repr()
        )


class TernaryQuantizer(_ScaledCodes):
    """Ternary weights :math:`\\{-a, 0, +a\\}` (TWN, Li, Zhang and Liu 2016).

    Threshold :math:`\\Delta = 0.7\\,\\mathrm{mean}|x|`; codes
    :math:`t = \\mathrm{sign}(x)\\,[|x| > \\Delta]`; scale :math:`a` the mean of
    :math:`|x|` over :math:`|x| > \\Delta`; :math:`\\hat{x} = a\\,t`. Per channel along
    ``ch_axis``, or per tensor. The gradient passes straight through to :math:`x`.

    Args:
        threshold_factor: the factor 0.7 of the paper.
        ch_axis: channel axis; ``None`` for one threshold and scale.

    Example:
        >>> q = TernaryQuantizer(ch_axis=None)
        >>> q(torch.tensor([1.0, -0.9, 0.1, 0.0]))
        tensor([ 0.9500, -0.9500,  0.0000,  0.0000])
    """

    _rounding = "threshold"

    def __init__(self, threshold_factor: float = 0.7, ch_axis: Optional[int] = 0) -> None:
        super().__init__(ch_axis)
        if not threshold_factor >= 0:
            raise ValueError(f"threshold_factor must be >= 0, got {threshold_factor!r}")
        self.threshold_factor = float(threshold_factor)

    def _codes_and_scale(self, input: Tensor) -> Tuple[Tensor, Tensor, Optional[int]]:
        axis = check_axis(input, self.ch_axis)
        delta = self.threshold_factor * _mean_abs(input, axis)
        mask = (input.abs() > broadcast_along(delta, axis, input.dim())).to(input.dtype)
        scale = _mean_abs(input, axis, mask)
        codes = torch.sign(input) * mask
        return codes, scale, axis

    def fake_quantize(self, input: Tensor) -> Tensor:
        codes, scale, axis = self._codes_and_scale(input.detach())
        self._remember(scale)
        value = codes * broadcast_along(scale, axis, input.dim())
        return straight_through(value, input)

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """Codes in ``{-1, 0, +1}`` (int8); the scale is recorded for :meth:`qparams`."""
        codes, scale, _ = self._codes_and_scale(input)
        self._remember(scale.float())
        return codes.to(torch.int8)

    def extra_repr(self) -> str:
        return (
            f"threshold_factor={self.threshold_factor}, ch_axis={self.ch_axis}"
            + self._switch_repr()
        )
