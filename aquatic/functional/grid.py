"""The grid of a uniform quantizer, as one typed value that every reader shares.

A uniform quantizer's outputs are points of a grid (Jacob et al. 2018, "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
eq. 1):

.. math::

    \\hat{x} = (q - z)\\, s, \\qquad q \\in \\{q_{min}, \\dots, q_{max}\\}

with scale :math:`s > 0` and integer zero point :math:`z`, one per tensor or one per
channel along ``ch_axis``. :class:`Grid` holds these numbers (what
``quantizer.grid()`` returns) and answers the questions that integer conversion,
hardware exports and interop ask of them: is it per channel, are its scales powers of
two, what are the integer codes of values that lie on it.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple, Type

import torch
from torch import Tensor

from aquatic.functional.fake_quant import check_axis, broadcast_along, dequantize_affine

__all__ = ["Grid", "NoRangeError", "TOLERANCE", "is_power_of_two"]

#: How far from the grid (in steps) a value may lie and still count as on it.
TOLERANCE = 1e-3
#: float32 values ``(q - z) * s`` carry a relative error of up to 2**-24; allow 16 times it.
_RELATIVE = 2.0**-20


class NoRangeError(ValueError, RuntimeError):
    """A quantizer has no range yet (it has seen no data), so it has no grid.

    A ``ValueError``; also a ``RuntimeError``, which ``qparams()`` has always raised in
    this case, so that code catching either keeps working.
    """


def is_power_of_two(input: Tensor) -> bool:
    """Whether every element of ``input`` is a positive power of two (``2**k``, any ``k``).

    Example:
        >>> is_power_of_two(torch.tensor([0.25, 4.0])), is_power_of_two(torch.tensor(0.3))
        (True, False)
    """
    values = torch.as_tensor(input, dtype=torch.float64)
    if values.numel() == 0:
        return True
    mantissa, _ = torch.frexp(values)
    return bool(((values > 0) & (mantissa == 0.5)).all())


class Grid(NamedTuple):
    """The grid of a uniform quantizer: values :math:`(q - z)\\, s` for integer codes
    :math:`q` in ``quant_min..quant_max``.

    Returned by every quantizer's ``grid()`` (see :class:`aquatic.quantizers.Quantizer`)
    and read by integer conversion, the hardware exports and the ONNX and NIR exports.

    The fields, in order:

    - ``scale``: float32, as the quantizer uses it: 0-dim per tensor, ``(C,)`` per channel.
    - ``zero_point``: integer dtype, shaped like ``scale``.
    - ``quant_min``, ``quant_max``: the range of the codes.
    - ``ch_axis``: the axis that a per-channel ``scale`` runs along; ``None`` per tensor.
    - ``rounding``: how the quantizer reaches the grid: ``"nearest"``, ``"floor"`` or
      ``"stochastic"``; quantizers that do not round name their own way (``"sign"``,
      ``"threshold"``, ``"ceil"``).

    Example:
        >>> grid = Grid(torch.tensor(0.25), torch.tensor(0), -128, 127)
        >>> grid.per_channel, grid.power_of_two
        (False, True)
        >>> grid.codes(torch.tensor([0.5, -1.25]))
        tensor([ 2, -5])
        >>> grid.dequantize(torch.tensor([2, -5]))
        tensor([ 0.5000, -1.2500])
    """

    scale: Tensor
    zero_point: Tensor
    quant_min: int
    quant_max: int
    ch_axis: Optional[int] = None
    rounding: str = "nearest"

    @property
    def per_channel(self) -> bool:
        """Whether there is one scale and zero point per channel along ``ch_axis``."""
        return self.ch_axis is not None and self.scale.dim() == 1

    @property
    def power_of_two(self) -> bool:
        """Whether every scale is an exact power of two (products with it are exact)."""
        return is_power_of_two(self.scale)

    def along(self, input: Tensor) -> Tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` viewed so that they broadcast against ``input``.

        Raises:
            ValueError: ``ch_axis`` is not an axis of ``input``.
        """
        if not self.per_channel or input.dim() == 0:
            return self.scale, self.zero_point
        axis = check_axis(input, self.ch_axis)
        ndim = input.dim()
        return broadcast_along(self.scale, axis, ndim), broadcast_along(self.zero_point, axis, ndim)

    def check_scale(self, where: str) -> "Grid":
        """Return the grid if every scale is positive and finite, else raise a ``ValueError``."""
        scale = self.scale
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise ValueError(
                f"{where} has the scale {scale.tolist()}; scales must be positive and finite "
                "(run data through the quantizer so that it has a range, and keep learned "
                "scales positive)"
            )
        return self

    def steps(
        self,
        value: Tensor,
        where: str = "value",
        error: Type[Exception] = ValueError,
        scale_name: str = "scale",
        hint: Optional[str] = None,
    ) -> Tensor:
        """``q - z`` (``int64``) of values ``value`` that lie on the grid: ``value / scale``.

        The range is not checked (values of other quantizers that share the scale, such
        as thresholds on a weight grid, may lie beyond it). A value counts as on the
        grid within :data:`TOLERANCE` steps, plus the relative error of a float32
        product :math:`(q - z)\\, s`.

        Args:
            value: floating-point tensor; per channel, ``ch_axis`` indexes its channels.
            where: how messages name ``value``.
            error: the exception class raised (a ``ValueError`` subclass, e.g. a
                hardware export's).
            scale_name: how messages name the scale.
            hint: the fix that messages suggest.

        Raises:
            error: a value lies off the grid (the message names the worst one).
        """
        scale, _ = self.along(value)
        steps = value.detach().to(torch.float64) / scale.to(torch.float64)
        codes = torch.round(steps)
        off = (steps - codes).abs() - codes.abs() * _RELATIVE
        off = torch.nan_to_num(off, nan=float("inf"))
        if off.numel() and float(off.max()) > TOLERANCE:
            index = int(off.flatten().argmax())
            step = float(scale.expand_as(steps).flatten()[index])
            raise error(
                f"{where} is not on the grid of the {scale_name} {step:.6g}: "
                f"{float(value.flatten()[index]):.6g} is {float(steps.flatten()[index]):.4f} "
                "steps" + (f"; {hint}" if hint else "")
            )
        return codes.to(torch.int64)

    def codes(
        self, value: Tensor, where: str = "value", error: Type[Exception] = ValueError
    ) -> Tensor:
        """The codes ``q`` (``int64``) of values that lie on the grid, within its range.

        ``dequantize(codes(x))`` is ``x`` for every ``x`` the quantizer produced.

        Raises:
            error: a value lies off the grid, or its code outside
                ``quant_min..quant_max``.
        """
        _, zero_point = self.along(value)
        codes = self.steps(value, where, error) + zero_point.to(torch.int64)
        if codes.numel():
            low, high = int(codes.min()), int(codes.max())
            if low < self.quant_min or high > self.quant_max:
                bad = low if low < self.quant_min else high
                raise error(
                    f"{where} has the code {bad}, outside the grid's range "
                    f"{self.quant_min}..{self.quant_max}"
                )
        return codes

    def dequantize(self, codes: Tensor) -> Tensor:
        """The values :math:`(q - z)\\, s` (float32) of integer ``codes``, as quantizers
        compute them."""
        axis = self.ch_axis if self.per_channel else None
        return dequantize_affine(codes, self.scale, self.zero_point, axis)

    def qparams(self) -> Dict[str, Any]:
        """``scale``, ``zero_point``, ``quant_min``, ``quant_max`` and ``ch_axis`` as a
        dict (the form of a quantizer's ``qparams()``)."""
        return {
            "scale": self.scale,
            "zero_point": self.zero_point,
            "quant_min": self.quant_min,
            "quant_max": self.quant_max,
            "ch_axis": self.ch_axis,
        }
