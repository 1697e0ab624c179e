"""Uniform affine quantizers: observer-driven or fixed scale, power-of-two, Qm.n."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from aquatic.functional.fake_quant import check_ch_axis, check_range, quantize_affine
from aquatic.functional.fake_quant_uniform import fake_quantize_uniform
from aquatic.functional.grid import Grid
from aquatic.functional.rounding import check_rounding
from aquatic.observers import MinMaxObserver, RangeObserver
from aquatic.quantizers.base import Quantizer, check_bits, integer_range
from aquatic.quantizers.fused import fused_step
from aquatic.quantizers.state_checks import check_channels, check_codes, check_scale, describe

__all__ = ["UniformQuantizer", "FixedPointQuantizer"]

ScaleLike = Union[float, Sequence[float], Tensor]


def _as_tensor(value: ScaleLike, dtype: torch.dtype, name: str) -> Tensor:
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number, a sequence or a tensor, got {value!r}")
    if tensor.dim() > 1:
        raise ValueError(
            f"{name} must be a scalar or 1-D (one per channel), got shape {tuple(tensor.shape)}"
        )
    return tensor


class UniformQuantizer(Quantizer):
    """Uniform affine quantizer: :math:`\\hat{x} = (\\mathrm{clamp}(\\mathrm{round}(x/s) + z) - z)\\, s`.

    The scale and zero point come from an observer of the values seen in training, or
    are fixed (``scale=`` given). With nearest rounding the result equals
    :func:`torch.fake_quantize_per_tensor_affine` / ``_per_channel_affine`` for the same
    scale and zero point, values and gradients.

    Args:
        bits: bit width, 1 to 16 (ignored when ``quant_min``/``quant_max`` are given).
        signed: signed (``-2**(bits-1)..2**(bits-1)-1``) or unsigned (``0..2**bits-1``) codes.
        symmetric: zero point fixed at 0; otherwise chosen to cover the observed minimum.
        narrow_range: drop the most negative signed code (``-127..127`` for 8 bits).
        ch_axis: per-channel quantization along this axis; ``None`` for per-tensor.
        observer: factory of the range observer (e.g.
            ``MovingAverageMinMaxObserver.with_args(averaging_constant=0.1)`` or the class);
            called with the quantizer's range, symmetry, axis and ``power_of_two``.
        scale: fixed scale (scalar, or one per channel); disables the observer.
        zero_point: fixed zero point, used with ``scale`` (default 0).
        rounding: ``"nearest"`` (half to even), ``"floor"`` or ``"stochastic"``.
        power_of_two: restrict the scale to powers of two (observed scales are rounded
            up; a fixed scale must be one already).
        quant_min, quant_max: explicit integer range instead of ``bits``/``signed``.
        generator: random number generator for stochastic rounding.

    Shape:
        - Input: any shape (per-channel: ``input.shape[ch_axis]`` channels).
        - Output: same shape and dtype.

    Example:
        >>> q = UniformQuantizer(bits=8, signed=True, symmetric=True)
        >>> q(torch.tensor([-1.0, 0.3, 2.54]))
        tensor([-1.0000,  0.3000,  2.5400])
        >>> q.to_int(torch.tensor([-1.0, 0.3, 2.54]))
        tensor([-50,  15, 127], dtype=torch.int8)
        >>> fixed = UniformQuantizer(bits=4, scale=0.5)
        >>> fixed(torch.tensor([0.2, 0.3, 9.0]))
        tensor([0.0000, 0.5000, 3.5000])
    """

    def __init__(
        self,
        bits: int = 8,
        signed: bool = True,
        symmetric: bool = True,
        narrow_range: bool = False,
        ch_axis: Optional[int] = None,
        observer: Callable[..., RangeObserver] = MinMaxObserver,
        scale: Optional[ScaleLike] = None,
        zero_point: Optional[Union[int, Sequence[int], Tensor]] = None,
        rounding: str = "nearest",
        power_of_two: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__()
        if (quant_min is None) != (quant_max is None):
            raise ValueError(
                "give both quant_min and quant_max, or neither (then bits sets the range)"
            )
        if quant_min is None:
            quant_min, quant_max = integer_range(bits, signed, narrow_range)
        else:
            check_range(quant_min, quant_max)
            bits = check_bits(math.ceil(math.log2(quant_max - quant_min + 1)))
        check_ch_axis(ch_axis)
        self.bits = bits
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.symmetric = bool(symmetric)
        self.ch_axis = ch_axis
        self.rounding = check_rounding(rounding)
        self.power_of_two = bool(power_of_two)
        self.generator = generator
        if scale is None:
            if zero_point is not None:
                raise ValueError(
                    "zero_point was given without scale; give both, or neither to use an observer"
                )
            self.observer = observer(
                quant_min=quant_min,
                quant_max=quant_max,
                symmetric=symmetric,
                ch_axis=ch_axis,
                power_of_two=power_of_two,
            )
        else:
            self.observer = None
            self._set_fixed_qparams(scale, zero_point)

    def _set_fixed_qparams(self, scale: ScaleLike, zero_point: Any) -> None:
        scale_t = _as_tensor(scale, torch.float32, "scale")
        check_scale(scale_t, repr(scale), self.power_of_two)
        zp_t = _as_tensor(0 if zero_point is None else zero_point, torch.float32, "zero_point")
        check_codes(zp_t, repr(zero_point), self.quant_min, self.quant_max)
        per_channel = scale_t.dim() == 1 or zp_t.dim() == 1
        if per_channel and self.ch_axis is None:
            raise ValueError("a per-channel scale or zero_point needs ch_axis= (the channel axis)")
        if not per_channel and self.ch_axis is not None:
            raise ValueError(f"ch_axis={self.ch_axis} needs one scale per channel (a 1-D scale)")
        if per_channel:
            scale_t, zp_t = torch.broadcast_tensors(scale_t.reshape(-1), zp_t.reshape(-1))
        self.register_buffer("scale", scale_t.float().contiguous())
        self.register_buffer("zero_point", zp_t.to(torch.int32).contiguous())

    def _check_loaded(self, name: str, value: Tensor, own: Dict[str, Tensor]) -> None:
        # The fixed scale and zero point; an observer's range is its own to check.
        if name == "scale":
            check_scale(value, describe(value), self.power_of_two)
            check_channels(value, own.get("zero_point"), self.ch_axis)
            if self.ch_axis is not None and value.dim() == 0:
                raise ValueError(
                    f"ch_axis={self.ch_axis} needs one scale per channel (a 1-D scale)"
                )
        elif name == "zero_point":
            check_codes(value, describe(value), self.quant_min, self.quant_max)

    def _scalars(self, observer: Any, input: Tensor) -> bool:
        # One range on the CPU in eager mode: the observer works on Python floats (see
        # RangeObserver.supports_scalars), cheaper than a dozen tiny tensor ops a step.
        return (
            self.rounding == "nearest"
            and isinstance(observer, RangeObserver)
            and observer.supports_scalars(input)
        )

    @property
    def observed(self) -> bool:
        """Whether the observer has a range (always ``True`` for a fixed scale)."""
        observer = self._modules.get("observer")
        return observer is None or observer.initialized

    def observe(self, input: Tensor) -> Optional[Tuple[Any, Any]]:
        """Update the observer's range with ``input``.

        Returns:
            The batch extrema that the observer computed (Python floats for one range
            on the CPU), for :meth:`fake_quantize`; ``None`` for a fixed scale.
        """
        observer = self._modules.get("observer")
        if observer is None:
            return None
        if self._scalars(observer, input):
            return observer.update_scalar(input)
        update = getattr(observer, "update", None)
        if update is None:  # an observer module without update(): just call it
            observer(input)
            return None
        return update(input)

    def observe_and_fake_quantize(self, input: Tensor) -> Optional[Tensor]:
        """Per channel of axis 0 with a :class:`~aquatic.observers.MinMaxObserver` on a
        symmetric signed range, a contiguous float32 CPU ``input`` and Numba installed:
        :meth:`observe` and :meth:`fake_quantize` in one compiled call, the same bits
        (:mod:`aquatic.quantizers.fused`); else ``None``.
        """
        cls = type(self)
        if cls.observe is not UniformQuantizer.observe:
            return None  # a subclass that observes in its own way
        if cls.fake_quantize is not UniformQuantizer.fake_quantize:
            return None  # or quantizes in its own way
        return fused_step(self, input)

    def calculate_qparams(self):
        """``(scale, zero_point)`` in use now: fixed, or from the observer's range."""
        if self.observer is None:
            return self.scale, self.zero_point
        return self.observer.calculate_qparams()

    def fake_quantize(self, input: Tensor, extrema: Optional[Tuple[Any, Any]] = None) -> Tensor:
        """Fake-quantize with the current scale and zero point.

        Args:
            input: floating-point tensor.
            extrema: the batch extrema :meth:`observe` returned, which let
                :func:`~aquatic.functional.fake_quant_uniform.fake_quantize_uniform` skip
                the clamp when no code clips.
        """
        observer = self._modules.get("observer")
        if extrema is not None:
            # Python floats come from the observer's scalar update: no need to ask again.
            scalars = type(extrema[0]) is float
        else:
            scalars = observer is not None and self._scalars(observer, input)
        if observer is None:
            scale, zero_point = self._buffers["scale"], self._buffers["zero_point"]
        elif scalars:
            scale, zero_point = observer.calculate_qparams_scalar()
        else:
            scale, zero_point = observer.calculate_qparams()
            if getattr(observer, "symmetric", False):
                zero_point = None  # known to be 0: saves two passes over the tensor
        return fake_quantize_uniform(
            input,
            scale,
            zero_point,
            self.quant_min,
            self.quant_max,
            self.ch_axis,
            self.rounding,
            self.generator,
            extrema,
            extrema is not None and self._covers(observer),
        )

    def _covers(self, observer: Any) -> bool:
        r"""Whether no code of the input just observed can leave the range.

        Holds for nearest rounding when the observer's range holds that input
        (:meth:`~aquatic.observers.RangeObserver.covers_last_batch`) and its scale is
        symmetric for this signed range: codes are then at most
        :math:`|x| \cdot \mathrm{fl}(1/s) \le n (1 + 4u)` in magnitude, with
        :math:`n = \min(q_{max}, -q_{min})`, :math:`s \ge a / n` for the largest
        magnitude :math:`a`, and float32 rounding error :math:`u = 2^{-24}` (Higham 2002,
        "Accuracy and Stability of Numerical Algorithms", sec. 2.2); that rounds to at
        most :math:`n`, inside the range, for every range up to :math:`2^{21}` codes.
        """
        return (
            self.rounding == "nearest"
            and self.quant_min < 0
            and self.quant_max - self.quant_min < (1 << 21)
            and isinstance(observer, RangeObserver)
            and observer.symmetric
            and observer.quant_min == self.quant_min
            and observer.quant_max == self.quant_max
            and observer.covers_last_batch()
        )

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """Integer codes of ``input``; stochastic rounding exports with nearest."""
        scale, zero_point = self.calculate_qparams()
        rounding = "nearest" if self.rounding == "stochastic" else self.rounding
        return quantize_affine(
            input, scale, zero_point, self.quant_min, self.quant_max, self.ch_axis, rounding
        )

    def grid(self) -> Grid:
        """The grid in use now: fixed, or from the observer's range (see :class:`Grid`)."""
        try:
            scale, zero_point = self.calculate_qparams()
        except RuntimeError as error:
            raise self._no_range(str(error)) from None
        return Grid(scale, zero_point, self.quant_min, self.quant_max, self.ch_axis, self.rounding)

    def qparams(self) -> Dict[str, Any]:
        """``scale``, ``zero_point``, ``quant_min``, ``quant_max`` and ``ch_axis``."""
        return self.grid().qparams()

    def extra_repr(self) -> str:
        parts = [f"bits={self.bits}", f"quant_min={self.quant_min}", f"quant_max={self.quant_max}"]
        if self.observer is None:
            if self.scale.numel() == 1:
                parts.append(f"scale={self.scale.item():g}, zero_point={self.zero_point.item()}")
            else:
                parts.append("scale=fixed per channel")
        else:
            parts.append(f"symmetric={self.symmetric}")
        if self.ch_axis is not None:
            parts.append(f"ch_axis={self.ch_axis}")
        if self.rounding != "nearest":
            parts.append(f"rounding={self.rounding!r}")
        if self.power_of_two:
            parts.append("power_of_two=True")
        return ", ".join(parts) + self._switch_repr()


class FixedPointQuantizer(UniformQuantizer):
    """Fixed-point format Qm.n: scale :math:`2^{-n}`, zero point 0.

    ``int_bits`` (m) integer bits and ``frac_bits`` (n) fractional bits, plus a sign
    bit when ``signed`` (the Texas Instruments convention: Q3.4 is 8 bits signed and
    covers ``[-8, 8 - 2**-4]``).

    Args:
        int_bits: integer bits m (>= 0).
        frac_bits: fractional bits n (may be negative for steps coarser than 1).
        signed: add a sign bit.
        rounding, generator: as :class:`UniformQuantizer`.

    Example:
        >>> q = FixedPointQuantizer(int_bits=3, frac_bits=4)
        >>> q.bits, q.qparams()["scale"]
        (8, tensor(0.0625))
        >>> q(torch.tensor([0.1, 100.0]))
        tensor([0.1250, 7.9375])
    """

    def __init__(
        self,
        int_bits: int,
        frac_bits: int,
        signed: bool = True,
        rounding: str = "nearest",
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if not isinstance(int_bits, int) or int_bits < 0:
            raise ValueError(f"int_bits must be an int >= 0, got {int_bits!r}")
        if not isinstance(frac_bits, int):
            raise TypeError(f"frac_bits must be an int, got {frac_bits!r}")
        bits = int_bits + frac_bits + int(bool(signed))
        super().__init__(
            bits=bits,
            signed=signed,
            scale=2.0**-frac_bits,
            rounding=rounding,
            power_of_two=True,
            generator=generator,
        )
        self.int_bits = int_bits
        self.frac_bits = frac_bits

    def extra_repr(self) -> str:
        return f"Q{self.int_bits}.{self.frac_bits}, " + super().extra_repr()
