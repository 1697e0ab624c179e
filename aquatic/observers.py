"""Range observers: running minimum and maximum of the tensors that pass through.

An observer's ``forward`` returns its input unchanged and updates ``min_val`` and
``max_val`` (buffers, so they follow ``.to()`` and live in the ``state_dict``);
:meth:`~RangeObserver.calculate_qparams` turns the range into a scale and zero point.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.factory import Factory
from aquatic.functional.fake_quant import _check_axis, check_range
from aquatic.functional.qparams import calculate_qparams

__all__ = ["RangeObserver", "MinMaxObserver", "MovingAverageMinMaxObserver"]


class RangeObserver(nn.Module):
    """Base class of observers that track a ``[min_val, max_val]`` range.

    Args:
        quant_min, quant_max: the integer range the scale is computed for.
        symmetric: zero point fixed at 0 (see :func:`aquatic.functional.calculate_qparams`).
        ch_axis: track one range per channel along this axis; ``None`` for one range.
        power_of_two: restrict scales to powers of two.

    Subclasses implement :meth:`_combine`, how a new range merges with the old one.
    """

    def __init__(
        self,
        quant_min: int = -128,
        quant_max: int = 127,
        symmetric: bool = True,
        ch_axis: Optional[int] = None,
        power_of_two: bool = False,
    ) -> None:
        super().__init__()
        check_range(quant_min, quant_max)
        if ch_axis is not None and not isinstance(ch_axis, int):
            raise TypeError(f"ch_axis must be an int or None, got {ch_axis!r}")
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.symmetric = bool(symmetric)
        self.ch_axis = ch_axis
        self.power_of_two = bool(power_of_two)
        # Per-channel ranges get their length from the first tensor observed.
        empty = torch.empty(0) if ch_axis is not None else torch.empty(())
        self.register_buffer("min_val", empty.clone().fill_(float("inf")))
        self.register_buffer("max_val", empty.clone().fill_(float("-inf")))
        # A plain attribute rather than a buffer so that checking it never syncs a GPU.
        self.initialized = False

    @classmethod
    def with_args(cls, **kwargs) -> Factory:
        """A factory that builds this observer with ``kwargs`` bound."""
        return Factory(cls, kwargs)

    def forward(self, input: Tensor) -> Tensor:
        """Update the range with ``input`` and return ``input`` unchanged."""
        cur_min, cur_max = self._extrema(input.detach())
        if not torch.compiler.is_compiling() and not bool(
            torch.isfinite(cur_min).all() & torch.isfinite(cur_max).all()
        ):
            raise ValueError(
                f"{type(self).__name__} got a tensor containing NaN or inf; "
                "its range would be meaningless. Find where the non-finite values "
                "come from (e.g. torch.autograd.set_detect_anomaly) or clean the input"
            )
        if self.initialized:
            cur_min, cur_max = self._combine(cur_min, cur_max)
        if self.min_val.shape == cur_min.shape:
            self.min_val.copy_(cur_min)
            self.max_val.copy_(cur_max)
        else:  # the first per-channel batch fixes the number of channels
            self.min_val = cur_min.clone()
            self.max_val = cur_max.clone()
        self.initialized = True
        return input

    def _extrema(self, input: Tensor) -> Tuple[Tensor, Tensor]:
        if input.numel() == 0:
            raise ValueError(f"{type(self).__name__} cannot observe an empty tensor")
        input = input.float()
        if self.ch_axis is None:
            return torch.aminmax(input)
        axis = _check_axis(input, self.ch_axis)
        dims = tuple(d for d in range(input.dim()) if d != axis)
        if not dims:
            return input, input
        return torch.amin(input, dim=dims), torch.amax(input, dim=dims)

    def _combine(self, cur_min: Tensor, cur_max: Tensor) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        """Scale (float32) and zero point (int32) for the observed range.

        Raises:
            RuntimeError: if nothing has been observed yet.
        """
        if not self.initialized:
            raise RuntimeError(
                f"{type(self).__name__} has observed no data yet, so it has no range: "
                "run a forward pass (in training mode) before asking for qparams"
            )
        return calculate_qparams(
            self.min_val,
            self.max_val,
            self.quant_min,
            self.quant_max,
            self.symmetric,
            self.power_of_two,
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Per-channel buffers start empty; take the saved length before copying.
        for name in ("min_val", "max_val"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                getattr(self, name).resize_(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.initialized = bool(self.min_val.numel() > 0 and torch.isfinite(self.min_val).all())

    def extra_repr(self) -> str:
        parts = [
            f"quant_min={self.quant_min}, quant_max={self.quant_max}",
            f"symmetric={self.symmetric}",
        ]
        if self.ch_axis is not None:
            parts.append(f"ch_axis={self.ch_axis}")
        if self.power_of_two:
            parts.append("power_of_two=True")
        return ", ".join(parts)


class MinMaxObserver(RangeObserver):
    """Running minimum and maximum over everything observed.

    Args: as :class:`RangeObserver`.

    Example:
        >>> obs = MinMaxObserver(quant_min=-128, quant_max=127)
        >>> _ = obs(torch.tensor([-1.0, 0.5])); _ = obs(torch.tensor([2.54]))
        >>> obs.min_val, obs.max_val
        (tensor(-1.), tensor(2.5400))
        >>> obs.calculate_qparams()
        (tensor(0.0200), tensor(0, dtype=torch.int32))
    """

    def _combine(self, cur_min: Tensor, cur_max: Tensor) -> Tuple[Tensor, Tensor]:
        return torch.minimum(self.min_val, cur_min), torch.maximum(self.max_val, cur_max)


class MovingAverageMinMaxObserver(RangeObserver):
    """Exponential moving average of the per-batch minimum and maximum.

    ``min_val <- min_val + c * (batch_min - min_val)`` (likewise ``max_val``), with
    ``c = averaging_constant``; the first batch sets the range directly.

    Args:
        averaging_constant: weight ``c`` of the new batch, in ``(0, 1]``.
        quant_min, quant_max, symmetric, ch_axis, power_of_two: as :class:`RangeObserver`.

    Example:
        >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
        >>> _ = obs(torch.tensor([0.0, 2.0])); _ = obs(torch.tensor([0.0, 4.0]))
        >>> obs.max_val
        tensor(3.)
    """

    def __init__(
        self,
        averaging_constant: float = 0.01,
        quant_min: int = -128,
        quant_max: int = 127,
        symmetric: bool = True,
        ch_axis: Optional[int] = None,
        power_of_two: bool = False,
    ) -> None:
        super().__init__(quant_min, quant_max, symmetric, ch_axis, power_of_two)
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = float(averaging_constant)

    def _combine(self, cur_min: Tensor, cur_max: Tensor) -> Tuple[Tensor, Tensor]:
        c = self.averaging_constant
        return (
            torch.lerp(self.min_val, cur_min, c),
            torch.lerp(self.max_val, cur_max, c),
        )

    def extra_repr(self) -> str:
        return f"averaging_constant={self.averaging_constant}, " + super().extra_repr()
