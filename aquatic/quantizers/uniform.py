"""Uniform affine quantizers: observer-driven or fixed scale, power-of-two, Qm.n."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from aquatic.functional.fake_quant import (
    _check_axis,
    check_ch_axis,
    check_range,
    fake_quantize_affine,
    quantize_affine,
)
from aquatic.functional.fast import fake_quantize_nearest, fake_quantize_nearest_scalar
from aquatic.functional.grid import Grid
from aquatic.functional.qparams import calculate_qparams_float, to_float32
from aquatic.functional.rounding import check_rounding
from aquatic.observers import MinMaxObserver, RangeObserver
from aquatic.quantizers.base import Quantizer, check_bits, integer_range

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


def _codes_clip(
    extrema: Tuple[Tensor, Tensor],
    scale: Tensor,
    zero_point: Optional[Tensor],
    quant_min: int,
    quant_max: int,
) -> bool:
    """Whether any code of a tensor with these (float32) extrema leaves the range.

    Codes ``round(x * (1/s)) + z`` are monotonic in ``x``, so the extreme codes are
    those of the extrema, computed with the same float32 arithmetic.
    """
    ends = torch.stack(extrema).mul_(torch.reciprocal(scale)).round_()
    if zero_point is not None:
        ends.add_(zero_point)
    if ends.dim() > 1:
        ends = torch.stack(torch.aminmax(ends))
    low, high = ends.tolist()
    return not (quant_min <= low and high <= quant_max)


def _codes_clip_float(
    extrema: Tuple[float, float], scale: float, zero_point: int, quant_min: int, quant_max: int
) -> bool:
    """:func:`_codes_clip` with Python floats (float32 values), the same arithmetic."""
    inv_scale = to_float32(1.0 / scale)
    low, high = to_float32(extrema[0] * inv_scale), to_float32(extrema[1] * inv_scale)
    if not (math.isfinite(low) and math.isfinite(high)):
        return True
    return not (quant_min <= round(low) + zero_point and round(high) + zero_point <= quant_max)


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
        if not bool(torch.isfinite(scale_t).all()) or bool((scale_t <= 0).any()):
            raise ValueError(f"scale must be positive and finite, got {scale!r}")
        if self.power_of_two and not bool(
            (torch.exp2(torch.round(torch.log2(scale_t))) == scale_t).all()
        ):
            raise ValueError(
                f"scale {scale!r} is not a power of two; pass e.g. scale=2**-4, or power_of_two=False"
            )
        zp_t = _as_tensor(0 if zero_point is None else zero_point, torch.float32, "zero_point")
        if bool((zp_t != torch.round(zp_t)).any()):
            raise ValueError(f"zero_point must hold integers, got {zero_point!r}")
        if bool(((zp_t < self.quant_min) | (zp_t > self.quant_max)).any()):
            raise ValueError(
                f"zero_point {zero_point!r} lies outside the integer range "
                f"[{self.quant_min}, {self.quant_max}]; choose one inside it"
            )
        per_channel = scale_t.dim() == 1 or zp_t.dim() == 1
        if per_channel and self.ch_axis is None:
            raise ValueError("a per-channel scale or zero_point needs ch_axis= (the channel axis)")
        if not per_channel and self.ch_axis is not None:
            raise ValueError(f"ch_axis={self.ch_axis} needs one scale per channel (a 1-D scale)")
        if per_channel:
            scale_t, zp_t = torch.broadcast_tensors(scale_t.reshape(-1), zp_t.reshape(-1))
        self.register_buffer("scale", scale_t.float().contiguous())
        self.register_buffer("zero_point", zp_t.to(torch.int32).contiguous())

    def forward(self, input: Tensor) -> Tensor:
        # Quantizer.forward, keeping the batch extrema that the observer computes: they
        # tell whether any code clips, and if none does, the clamp and the gradient
        # mask (three passes over the tensor) can be skipped.
        if not isinstance(input, Tensor) or not input.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} quantizes floating-point tensors, got "
                f"{getattr(input, 'dtype', type(input).__name__)}; convert with .float()"
            )
        observer = self._modules.get("observer")
        if (
            observer is not None
            and self.rounding == "nearest"
            and not self.power_of_two
            and isinstance(observer, RangeObserver)
            and observer._scalar_path(input)
        ):
            return self._forward_scalar(input, observer)
        extrema = None
        if self.observer_enabled and observer is not None:
            if self.training or not observer.initialized:
                update = getattr(observer, "update", None)
                if update is None:
                    observer(input.detach())
                else:
                    extrema = update(input.detach())
        if not self.fake_quant_enabled:
            return input
        return self._fake_quantize(input, extrema)

    def _forward_scalar(self, input: Tensor, observer: RangeObserver) -> Tensor:
        # One range on the CPU in eager mode: the range, scale and zero point travel as
        # Python floats, computed with the tensor path's float32 arithmetic bit for bit
        # (aquatic.functional.qparams.calculate_qparams_float); a dozen tiny tensor ops
        # per call would cost more than the quantization of a small tensor.
        batch = None
        if self.observer_enabled and (self.training or not observer.initialized):
            low, high, min_val, max_val = observer._update_float(input.detach())
            batch = (low, high)
        elif not observer.initialized:
            observer.calculate_qparams()  # raises: nothing observed
        else:
            min_val, max_val = observer._range_float()
        if not self.fake_quant_enabled:
            return input
        scale, zero_point = calculate_qparams_float(
            min_val, max_val, observer.quant_min, observer.quant_max, observer.symmetric
        )
        clips = True
        if input.dtype != torch.float64:
            if batch is None and input.requires_grad and input.numel() >= 4096:
                # No fresh extrema (frozen range): one pass to find them is cheaper than
                # the clamp, mask and masked gradient it usually saves.
                low, high = torch.aminmax(input.detach())
                batch = (low.item(), high.item())
            if batch is not None:
                clips = _codes_clip_float(batch, scale, zero_point, self.quant_min, self.quant_max)
        return fake_quantize_nearest_scalar(
            input, scale, zero_point, self.quant_min, self.quant_max, clips
        )

    def observe(self, input: Tensor) -> None:
        if self.observer is not None and (self.training or not self.observer.initialized):
            self.observer(input)

    def calculate_qparams(self):
        """``(scale, zero_point)`` in use now: fixed, or from the observer's range."""
        if self.observer is None:
            return self.scale, self.zero_point
        return self.observer.calculate_qparams()

    def fake_quantize(self, input: Tensor) -> Tensor:
        return self._fake_quantize(input, None)

    def _fake_quantize(self, input: Tensor, extrema: Optional[Tuple[Tensor, Tensor]]) -> Tensor:
        scale, zero_point = self.calculate_qparams()
        if self.rounding != "nearest":
            return fake_quantize_affine(
                input,
                scale,
                zero_point,
                self.quant_min,
                self.quant_max,
                self.ch_axis,
                self.rounding,
                self.generator,
            )
        # The same bits as torch's fake-quantize kernels, several times faster in eager
        # mode (see aquatic.functional.fast); a symmetric observer's zero point is known
        # to be 0, which saves two passes over the tensor.
        if self.observer is not None and getattr(self.observer, "symmetric", False):
            zero_point = None
        if scale.dtype != torch.float32:
            scale = scale.float()
        clips = True
        if (
            extrema is not None
            and input.device.type == "cpu"
            and input.dtype != torch.float64
            and not torch.compiler.is_compiling()
        ):
            # One sync, cheap on the CPU (on a GPU or in a compiled graph the masked
            # path costs less than a sync).
            clips = _codes_clip(extrema, scale, zero_point, self.quant_min, self.quant_max)
        return fake_quantize_nearest(
            input,
            scale,
            zero_point,
            self.quant_min,
            self.quant_max,
            _check_axis(input, self.ch_axis),
            clips,
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
