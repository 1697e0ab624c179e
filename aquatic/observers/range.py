"""Range observers: running minimum and maximum of the tensors that pass through.

An observer's ``forward`` returns its input unchanged and updates ``min_val`` and
``max_val`` (buffers, so they follow ``.to()`` and live in the ``state_dict``);
:meth:`~RangeObserver.calculate_qparams` turns the range into a scale and zero point.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from aquatic.factory import Factory
from aquatic.functional.fake_quant import check_axis, check_ch_axis, check_range
from aquatic.functional.qparams import calculate_qparams, calculate_qparams_float, to_float32
from aquatic.observers.edits import CountsEdits
from aquatic.observers.range_checks import (
    all_reduce_range,
    check_loaded_range,
    distributed,
    out_of_range,
    range_error,
    range_limit,
)
from aquatic.observers.range_rules import observer_rules

__all__ = ["RangeObserver", "MinMaxObserver", "MovingAverageMinMaxObserver"]


class RangeObserver(CountsEdits):
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
        # Before any compiled graph reads them.
        self._rules = observer_rules(type(self), RangeObserver)
        check_range(quant_min, quant_max)
        check_ch_axis(ch_axis)
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
        """Update the range with ``input`` and return ``input`` unchanged.

        In training mode under ``torch.distributed``, the batch extrema are first
        reduced across ranks (minimum of the minima, maximum of the maxima), so every
        rank applies the same update and all ranks keep identical ranges.
        """
        self.update(input)
        return input

    def update(self, input: Tensor) -> Tuple[Tensor, Tensor]:
        """Update the range with ``input``, as :meth:`forward`; return the batch extrema.

        Returns:
            ``(cur_min, cur_max)`` of this batch (float32, per channel where the observer
            is, reduced across ranks under ``torch.distributed``), before they are merged
            into the running range.
        """
        # A quantizer hands over a detached input already; self._buffers rather than
        # self.min_val below: nn.Module.__getattr__ costs about a microsecond each.
        cur_min, cur_max = self._extrema(input.detach() if input.requires_grad else input)
        compiling = torch.compiler.is_compiling()
        if self.training and distributed():
            cur_min, cur_max = all_reduce_range(cur_min, cur_max)
        elif not compiling:
            limit = range_limit(input.dtype, self.quant_min, self.quant_max)
            if out_of_range(cur_min, cur_max, limit):
                raise range_error(self, cur_min, cur_max, input.dtype)
        buffers = self._buffers
        if (
            self.initialized
            and self._rules[2]
            and not compiling
            and buffers["min_val"].shape == cur_min.shape
            and buffers["min_val"].dtype == cur_min.dtype
        ):
            # Eager: merged straight into the buffers, two ops fewer than merge and copy.
            self._combine_into_buffers(cur_min, cur_max)
            return cur_min, cur_max
        new_min, new_max = (
            self._combine(cur_min, cur_max) if self.initialized else (cur_min, cur_max)
        )
        if buffers["min_val"].shape == new_min.shape:
            buffers["min_val"].copy_(new_min)
            buffers["max_val"].copy_(new_max)
        else:  # the first per-channel batch fixes the number of channels
            self.min_val = new_min.clone()
            self.max_val = new_max.clone()
        if not self.initialized:  # nn.Module.__setattr__ is slow: set it once
            self.initialized = True
        return cur_min, cur_max

    def supports_scalars(self, input: Tensor) -> bool:
        """Whether :meth:`update_scalar` and :meth:`calculate_qparams_scalar` apply.

        They do for one float32 range (``ch_axis=None``), a CPU ``input``, eager mode,
        no ``power_of_two``, and a merge rule with a Python-float version (a subclass that
        overrides ``_combine`` alone, or ``update``, ``_extrema`` or
        ``calculate_qparams``, keeps the tensor methods).
        """
        # self._buffers rather than self.min_val: nn.Module.__getattr__ costs about a
        # microsecond, and this runs for every quantizer on every step.
        min_val = self._buffers["min_val"]
        if self.ch_axis is not None or min_val.dim() != 0 or min_val.dtype != torch.float32:
            return False
        if self.power_of_two or not input.is_cpu or torch.compiler.is_compiling():
            return False
        return self._rules[0]

    def covers_last_batch(self) -> bool:
        """Whether the range, after :meth:`update`, always holds the batch just observed.

        True for a merge rule that only widens the range (:class:`MinMaxObserver`):
        every value of that batch then lies in ``[min_val, max_val]``, which lets a
        symmetric signed quantizer skip the clamp (no code can leave its range). Decided
        by the class that defines ``_combine``, and only where ``update``, ``_extrema``
        and ``calculate_qparams`` are this class's own: a subclass that changes any of
        them is not taken at its parent's word.

        Example:
            >>> MinMaxObserver().covers_last_batch(), MovingAverageMinMaxObserver().covers_last_batch()
            (True, False)
        """
        return self._rules[1]

    def update_scalar(self, input: Tensor) -> Tuple[float, float]:
        """:meth:`update` with the batch extrema as Python floats (see :meth:`supports_scalars`).

        A dozen tiny tensor ops per step would cost more than quantizing a small tensor,
        so the merge is computed on Python floats with float32 arithmetic; the buffers
        end up as :meth:`update` leaves them, bit for bit.

        Args:
            input: the tensor to observe.

        Returns:
            ``(batch_min, batch_max)``: float32 values as Python floats.

        Example:
            >>> obs = MinMaxObserver()
            >>> obs.update_scalar(torch.tensor([-1.0, 0.5])), obs.calculate_qparams_scalar()
            ((-1.0, 0.5), (0.007874015718698502, 0))
        """
        if input.requires_grad:  # a quantizer hands over a detached input already
            input = input.detach()
        cur_min, cur_max = self._extrema(input)
        if self.training and distributed():
            cur_min, cur_max = all_reduce_range(cur_min, cur_max)
        lo, hi = cur_min.item(), cur_max.item()
        if not max(hi, -lo) <= range_limit(input.dtype, self.quant_min, self.quant_max):
            raise range_error(self, cur_min, cur_max, input.dtype)
        buffers = self._buffers
        if self.initialized:
            old_lo, old_hi = buffers["min_val"].item(), buffers["max_val"].item()
            new_lo, new_hi = self._combine_float(lo, hi, old_lo, old_hi)
            # An unchanged running extremum (the usual case for min/max) is not written.
            if new_lo != old_lo:
                buffers["min_val"].fill_(new_lo)
            if new_hi != old_hi:
                buffers["max_val"].fill_(new_hi)
        else:
            buffers["min_val"].fill_(lo)
            buffers["max_val"].fill_(hi)
            self.initialized = True
        return lo, hi

    def calculate_qparams_scalar(self) -> Tuple[float, int]:
        """:meth:`calculate_qparams` as Python numbers (see :meth:`supports_scalars`).

        Returns:
            ``(scale, zero_point)``: a float holding the float32 scale, and an int;
            equal to :meth:`calculate_qparams`'s tensors.

        Raises:
            RuntimeError: if nothing has been observed yet.
        """
        if not self.initialized:
            return self.calculate_qparams()  # raises, with the message
        buffers = self._buffers
        return calculate_qparams_float(
            buffers["min_val"].item(),
            buffers["max_val"].item(),
            self.quant_min,
            self.quant_max,
            self.symmetric,
        )

    def _extrema(self, input: Tensor) -> Tuple[Tensor, Tensor]:
        if input.numel() == 0:
            raise ValueError(f"{type(self).__name__} cannot observe an empty tensor")
        if input.dtype != torch.float32:
            input = input.float()
        if self.ch_axis is None:
            return torch.aminmax(input)
        axis = check_axis(input, self.ch_axis)
        dims = tuple(d for d in range(input.dim()) if d != axis)
        if not dims:
            return input, input
        return torch.amin(input, dim=dims), torch.amax(input, dim=dims)

    def _combine(self, cur_min: Tensor, cur_max: Tensor) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        """Scale (float32) and zero point (int32) for the observed range.

        No gradient: the range lives in buffers (no ``torch.no_grad()`` block, which
        would cost more than the arithmetic on every training step).

        Raises:
            RuntimeError: if nothing has been observed yet.
        """
        if not self.initialized:
            raise RuntimeError(
                f"{type(self).__name__} has observed no data yet, so it has no range: "
                "run a forward pass (in training mode) before asking for qparams"
            )
        buffers = self._buffers
        return calculate_qparams(
            buffers["min_val"],
            buffers["max_val"],
            self.quant_min,
            self.quant_max,
            self.symmetric,
            self.power_of_two,
        )

    def __setstate__(self, state) -> None:
        # An unpickled observer takes the rules of its class in this process.
        super().__setstate__(state)
        self._rules = observer_rules(type(self), RangeObserver)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_loaded_range(self, state_dict, prefix)  # before anything changes
        # Per-channel buffers start empty; take the saved length before copying. Any
        # other shape is left for torch to report as a size mismatch.
        for name in ("min_val", "max_val"):
            saved = state_dict.get(prefix + name)
            if saved is not None and self.ch_axis is not None and saved.dim() == 1:
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

    # The merge below only widens the range (see RangeObserver.covers_last_batch).
    _widens_only = True

    def _combine(self, cur_min: Tensor, cur_max: Tensor) -> Tuple[Tensor, Tensor]:
        buffers = self._buffers
        return torch.minimum(buffers["min_val"], cur_min), torch.maximum(
            buffers["max_val"], cur_max
        )

    def _combine_into_buffers(self, cur_min: Tensor, cur_max: Tensor) -> None:
        # _combine, written into the buffers (elementwise, so the same bits)
        buffers = self._buffers
        torch.minimum(buffers["min_val"], cur_min, out=buffers["min_val"])
        torch.maximum(buffers["max_val"], cur_max, out=buffers["max_val"])

    def _combine_float(self, cur_min: float, cur_max: float, old_min: float, old_max: float):
        return min(old_min, cur_min), max(old_max, cur_max)


class MovingAverageMinMaxObserver(RangeObserver):
    """Exponential moving average of the per-batch minimum and maximum.

    ``min_val <- min_val + c * (batch_min - min_val)`` (likewise ``max_val``), with
    ``c = averaging_constant``; the first batch sets the range directly. For
    ``c >= 0.5`` it is computed as ``batch_min - (1 - c) * (batch_min - min_val)``, so
    that ``c = 1`` keeps exactly the last batch's range.

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
        # m + c (x - m), or x - (1 - c) (x - m) for c >= 0.5 (so that c = 1 gives x
        # exactly, as torch.lerp does), as separate rounded float32 ops (torch.lerp may
        # fuse them), which the scalar path below reproduces exactly.
        c = self.averaging_constant
        if c < 0.5:
            return (
                self.min_val + (cur_min - self.min_val) * c,
                self.max_val + (cur_max - self.max_val) * c,
            )
        return (
            cur_min - (cur_min - self.min_val) * (1.0 - c),
            cur_max - (cur_max - self.max_val) * (1.0 - c),
        )

    def _combine_float(self, cur_min: float, cur_max: float, old_min: float, old_max: float):
        c = self.averaging_constant
        if c < 0.5:
            c32 = to_float32(c)
            return (
                to_float32(old_min + to_float32(to_float32(cur_min - old_min) * c32)),
                to_float32(old_max + to_float32(to_float32(cur_max - old_max) * c32)),
            )
        k32 = to_float32(1.0 - c)
        return (
            to_float32(cur_min - to_float32(to_float32(cur_min - old_min) * k32)),
            to_float32(cur_max - to_float32(to_float32(cur_max - old_max) * k32)),
        )

    def extra_repr(self) -> str:
        return f"averaging_constant={self.averaging_constant}, " + super().extra_repr()
