"""Integer modules of the conventional layers and of the modules between them.

- :class:`IntegerLinear` and :class:`IntegerConv`: integer accumulators
  :math:`\\sum_k (q_{x,k} - z_x)\\, q_{w,k}` (plus the bias on the accumulator grid),
  certified at conversion to stay within int32.
- :class:`IntegerRequantize`: a fixed-point multiplier and shift to the next scale, then
  the zero point and saturation to the quantizer's range (Jacob et al. 2018).
- :class:`IntegerReLU`: ReLU of the real value, ``max(q, z)`` in codes.

Pooling, reshaping and sums live in :mod:`aquatic.integer.pooling`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from aquatic.functional.fake_quant import broadcast_along
from aquatic.functional.time_steps import has_time_axis, per_step
from aquatic.integer.base import INT32_MAX, IntegerModule, IntegerOverflowError
from aquatic.integer.requant import multiply_shift

__all__ = ["IntegerConv", "IntegerLinear", "IntegerReLU", "IntegerRequantize"]

_DTYPES = {"int32": torch.int32, "int64": torch.int64}
INT32_MIN = -INT32_MAX - 1


class _Accumulator(IntegerModule):
    """Shared parts of :class:`IntegerLinear` and :class:`IntegerConv`."""

    _tensor_keys = ("weight", "bias", "input_zero_point", "pre_shift")

    def _setup(self, weight, bias, input_zero_point, pre_shift, input_axis, check_overflow):
        self._set_tensors(
            {
                "weight": torch.as_tensor(weight, dtype=torch.int64),
                "bias": None if bias is None else torch.as_tensor(bias, dtype=torch.int64),
                "input_zero_point": torch.as_tensor(input_zero_point, dtype=torch.int64),
                "pre_shift": torch.as_tensor(pre_shift, dtype=torch.int64),
            }
        )
        self.input_axis = input_axis
        self.check_overflow = bool(check_overflow)

    def _finish(self, acc: Tensor, channel_axis: int) -> Tensor:
        acc = torch.bitwise_left_shift(acc, broadcast_along(self.pre_shift, channel_axis))
        if self.bias is not None:
            acc = acc + broadcast_along(self.bias, channel_axis)
        if self.check_overflow and acc.numel():
            low, high = (int(v) for v in torch.aminmax(acc))
            if low < INT32_MIN or high > INT32_MAX:
                value = low if low < INT32_MIN else high
                raise IntegerOverflowError(
                    f"{self._where()}: the accumulator reached {value}, beyond int32 "
                    f"[{INT32_MIN}, {INT32_MAX}]; its input had no bound at conversion (e.g. a "
                    "sum over time). Quantize that input with an activation quantizer"
                )
        # Without check_overflow, a value beyond int32 wraps here (two's complement, as an
        # int32 accumulator does); aquatic.convert certified that inputs in range cannot.
        return acc.to(torch.int32)

    def _centered(self, input: Tensor) -> Tensor:
        codes = self._input_codes(input)
        if self.check_overflow:
            self._check_int64(codes)
        return codes - broadcast_along(self.input_zero_point, self.input_axis)

    def _check_int64(self, codes: Tensor) -> None:
        """Refuse, before the products, inputs for which the int64 accumulation itself
        could wrap: a bound from the largest sum of |weights| of one output and the
        largest |input - zero point| (float64, with a margin above its rounding error)."""
        if not codes.numel() or not self.weight.numel():
            return
        low, high = (int(v) for v in torch.aminmax(codes))
        zero_point = self.input_zero_point
        magnitude = max(high - int(zero_point.min()), int(zero_point.max()) - low, 0)
        out_axis = 1 if getattr(self, "transposed", False) else 0
        dims = tuple(d for d in range(self.weight.dim()) if d != out_axis)
        weight_sum = float(self.weight.double().abs().sum(dim=dims).max())
        shift = int(self.pre_shift.max()) if self.pre_shift.numel() else 0
        bias = 0.0 if self.bias is None else float(self.bias.double().abs().max())
        bound = (weight_sum * float(magnitude) * 2.0**shift + bias) * (1 + 1e-6)
        if bound >= 2.0**63:
            raise IntegerOverflowError(
                f"{self._where()}: input codes {magnitude} away from the zero point, times "
                f"|weight codes| summing to {weight_sum:.6g}, could reach {bound:.6g}, beyond "
                "int64, where the accumulation itself would wrap; quantize that input with "
                "an activation quantizer"
            )


class IntegerLinear(_Accumulator):
    """``(x - z_x) @ W.T``, shifted left by ``pre_shift``, plus ``bias``: an int32 accumulator.

    Args:
        weight: ``(out, in)`` integer weights, zero point already subtracted.
        bias: ``(out,)`` bias on the accumulator grid, or ``None``.
        input_zero_point: zero point of the input codes (per tensor, or per input
            feature with ``input_axis=-1``).
        pre_shift: left shift of the products (per output feature or one), so that a
            bias on a finer power-of-two grid adds exactly.
        input_axis: ``-1`` when the input zero point is per feature, else ``None``.
        check_overflow: check at run time (for an input that had no bound at conversion)
            that the accumulator stays within int32, in both directions, and that the
            int64 accumulation cannot wrap (a bound from the largest ``|input - zero
            point|`` and the largest sum of ``|weight|`` of one output, checked before the
            products); either failure raises
            :class:`~aquatic.integer.IntegerOverflowError`. Without it the accumulator is
            computed in int64 and cast to int32, so a value beyond int32 wraps (two's
            complement, as an int32 accumulator on a chip would): :func:`aquatic.convert`
            leaves it off only where it certified that inputs within the converted range
            cannot get there. Feeding codes outside that range is then outside the
            guarantee.
        name, notes: see :class:`~aquatic.integer.base.IntegerModule`.

    Shape:
        - Input: ``(*, in)`` integer codes. Output: ``(*, out)`` int32.

    Example:
        >>> layer = IntegerLinear(torch.tensor([[1, -2], [3, 0]]), bias=torch.tensor([10, 0]))
        >>> layer(torch.tensor([[4, 1]]))
        tensor([[12, 12]], dtype=torch.int32)
    """

    kind = "linear"
    _config_keys = ("input_axis", "check_overflow")

    def __init__(
        self,
        weight: Tensor,
        bias: Optional[Tensor] = None,
        input_zero_point=0,
        pre_shift=0,
        input_axis: Optional[int] = None,
        check_overflow: bool = False,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        self._setup(weight, bias, input_zero_point, pre_shift, input_axis, check_overflow)

    def forward(self, input: Tensor) -> Tensor:
        return self._finish(torch.matmul(self._centered(input), self.weight.T), -1)


class IntegerConv(_Accumulator):
    """Integer convolution (1-3 d, plain or transposed) into an int32 accumulator.

    Arguments (``check_overflow`` included) as :class:`IntegerLinear`, plus the
    convolution's own (``stride``, ``padding``, ``dilation``, ``groups``,
    ``output_padding`` for transposed ones) and ``dim`` (1, 2 or 3). Zero padding pads
    real zeros: it is applied after the input zero point is subtracted.

    Shape:
        - Input: ``(N, C_in, *)`` integer codes, or ``(N, T, C_in, *)`` with a time axis.
          Output: ``(N, C_out, *)`` (or ``(N, T, C_out, *)``) int32.

    Example:
        >>> conv = IntegerConv(torch.ones(1, 1, 3, dtype=torch.int64), dim=1, padding=[1])
        >>> conv(torch.tensor([[[1, 2, 3]]]))
        tensor([[[3, 6, 5]]], dtype=torch.int32)
    """

    kind = "conv"
    _config_keys = (
        "dim",
        "transposed",
        "stride",
        "padding",
        "dilation",
        "groups",
        "output_padding",
        "input_axis",
        "check_overflow",
    )

    def __init__(
        self,
        weight: Tensor,
        bias: Optional[Tensor] = None,
        input_zero_point=0,
        pre_shift=0,
        dim: int = 2,
        transposed: bool = False,
        stride: Sequence[int] = (1,),
        padding: Sequence[int] = (0,),
        dilation: Sequence[int] = (1,),
        groups: int = 1,
        output_padding: Sequence[int] = (0,),
        input_axis: Optional[int] = None,
        check_overflow: bool = False,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        if dim not in (1, 2, 3):
            raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
        self._setup(weight, bias, input_zero_point, pre_shift, input_axis, check_overflow)
        self.dim = dim
        self.transposed = bool(transposed)
        self.stride, self.padding = list(stride), list(padding)
        self.dilation, self.output_padding = list(dilation), list(output_padding)
        self.groups = int(groups)

    def forward(self, input: Tensor) -> Tensor:
        if has_time_axis(input, self.dim + 2):  # (N, T, C, *): each step on its own
            return per_step(self.forward, input)
        x = self._centered(input)
        if self.transposed:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.dim - 1]
            acc = fn(
                x,
                self.weight,
                None,
                self.stride,
                self.padding,
                self.output_padding,
                self.groups,
                self.dilation,
            )
        else:
            fn = (F.conv1d, F.conv2d, F.conv3d)[self.dim - 1]
            acc = fn(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return self._finish(acc, -self.dim - 1)


class IntegerRequantize(IntegerModule):
    """``clamp(round((x - z_in) * m * 2**-n) + z_out, low, high)``: to a new scale.

    Args:
        multiplier, shift: the fixed-point ratio of the scales (one, or per channel along
            ``axis``), from :func:`~aquatic.integer.requant.quantize_multiplier`.
        input_zero_point, output_zero_point: zero points (scalars or per channel).
        low, high: the output quantizer's code range (saturation).
        rounding: ``"nearest"`` (half to even) or ``"floor"``, as the quantizer rounds.
        axis: channel axis counted from the end for per-channel values, else ``None``.

    Shape:
        - Input: any shape, integer codes. Output: same shape, int32.

    Example:
        >>> requant = IntegerRequantize(1, 2, output_zero_point=3, low=0, high=255)
        >>> requant(torch.tensor([-20, 2, 6, 10, 2000]))  # x / 4 + 3, ties to even
        tensor([  0,   3,   5,   5, 255], dtype=torch.int32)
    """

    kind = "requantize"
    _config_keys = ("low", "high", "rounding", "axis")
    _tensor_keys = ("multiplier", "shift", "input_zero_point", "output_zero_point")

    def __init__(
        self,
        multiplier,
        shift,
        input_zero_point=0,
        output_zero_point=0,
        low: int = -(2**31),
        high: int = INT32_MAX,
        rounding: str = "nearest",
        axis: Optional[int] = None,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        values = {
            "multiplier": multiplier,
            "shift": shift,
            "input_zero_point": input_zero_point,
            "output_zero_point": output_zero_point,
        }
        self._set_tensors({k: torch.as_tensor(v, dtype=torch.int64) for k, v in values.items()})
        self.low, self.high = int(low), int(high)
        self.rounding = rounding
        self.axis = axis

    def forward(self, input: Tensor) -> Tensor:
        x = self._input_codes(input) - broadcast_along(self.input_zero_point, self.axis)
        multiplier, shift = broadcast_along(self.multiplier, self.axis), broadcast_along(
            self.shift, self.axis
        )
        y = multiply_shift(x, multiplier, shift, self.rounding) + broadcast_along(
            self.output_zero_point, self.axis
        )
        return torch.clamp(y, self.low, self.high).to(torch.int32)


class IntegerReLU(IntegerModule):
    """``max(x, z)``: ReLU of the real value :math:`(x - z) s` in codes.

    Example:
        >>> IntegerReLU(zero_point=3)(torch.tensor([1, 3, 7]))
        tensor([3, 3, 7])
    """

    kind = "relu"
    _config_keys = ("axis",)
    _tensor_keys = ("zero_point",)

    def __init__(
        self,
        zero_point=0,
        axis: Optional[int] = None,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        self._set_tensors({"zero_point": torch.as_tensor(zero_point, dtype=torch.int64)})
        self.axis = axis

    def forward(self, input: Tensor) -> Tensor:
        x = self._input_codes(input)
        return torch.maximum(x, broadcast_along(self.zero_point, self.axis)).to(input.dtype)
