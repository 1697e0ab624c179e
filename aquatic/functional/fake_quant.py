"""Affine fake quantization with straight-through gradients.

An affine quantizer maps a real value :math:`x` to an integer code and back
(Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"):

.. math::

    q = \\mathrm{clamp}(\\mathrm{round}(x / s) + z,\\; q_{min},\\; q_{max}), \\qquad
    \\hat{x} = (q - z)\\, s

with scale :math:`s > 0` and integer zero point :math:`z`. Fake quantization returns
:math:`\\hat{x}` as a float tensor. Its gradient follows torch's rule: the identity
where :math:`\\mathrm{round}(x/s) + z` lies in :math:`[q_{min}, q_{max}]`, zero outside.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from aquatic.functional.qparam_checks import check_float_input, check_qparams
from aquatic.functional.rounding import check_rounding, round_ste, round_values, straight_through

__all__ = [
    "fake_quantize_affine",
    "fake_quantize_affine_kernel",
    "fake_quantize_learnable",
    "quantize_affine",
    "dequantize_affine",
    "grad_scale",
    "int_dtype",
    "check_range",
    "check_ch_axis",
    "broadcast_along",
    "check_axis",
]

Number = Union[int, float]


def check_range(quant_min: int, quant_max: int) -> None:
    """Raise a ``ValueError`` unless ``quant_min < quant_max`` are integers."""
    if not isinstance(quant_min, int) or not isinstance(quant_max, int):
        raise TypeError(
            f"quant_min and quant_max must be ints, got {quant_min!r} and {quant_max!r}"
        )
    if quant_min >= quant_max:
        raise ValueError(f"quant_min ({quant_min}) must be smaller than quant_max ({quant_max})")


def check_ch_axis(ch_axis) -> Optional[int]:
    """Return ``ch_axis`` if it is an int or ``None``, else raise a ``TypeError``."""
    if ch_axis is not None and (isinstance(ch_axis, bool) or not isinstance(ch_axis, int)):
        raise TypeError(
            f"ch_axis must be an int (the channel axis) or None (per tensor), got {ch_axis!r}"
        )
    return ch_axis


def int_dtype(quant_min: int, quant_max: int) -> torch.dtype:
    """The smallest integer dtype that holds every code in ``[quant_min, quant_max]``.

    Example:
        >>> int_dtype(-128, 127), int_dtype(0, 255), int_dtype(-1, 1000)
        (torch.int8, torch.uint8, torch.int16)
    """
    if quant_min >= 0 and quant_max <= 255:
        return torch.uint8
    for dtype in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= quant_min and quant_max <= info.max:
            return dtype
    return torch.int64


def check_axis(input: Tensor, ch_axis: Optional[int]) -> Optional[int]:
    """``ch_axis`` as a non-negative axis of ``input`` (``None`` stays ``None``).

    Raises:
        ValueError: if ``ch_axis`` is not an axis of ``input``.

    Example:
        >>> check_axis(torch.zeros(2, 3), -1), check_axis(torch.zeros(2, 3), None)
        (1, None)
    """
    if ch_axis is None:
        return None
    if input.dim() == 0:
        raise ValueError(
            f"ch_axis={ch_axis} asks for one scale per channel, but the tensor is a "
            "scalar (0 dimensions); quantize it per tensor (ch_axis=None)"
        )
    if not -input.dim() <= ch_axis < input.dim():
        raise ValueError(
            f"ch_axis={ch_axis} is out of range for a tensor with {input.dim()} "
            f"dimensions; use an axis in [{-input.dim()}, {input.dim() - 1}]"
        )
    return ch_axis % input.dim()


def broadcast_along(param: Tensor, ch_axis: Optional[int], ndim: Optional[int] = None) -> Tensor:
    """View a per-channel ``param`` (1-D) so that it broadcasts along ``ch_axis``.

    A 0-dim ``param`` or ``ch_axis=None`` (per tensor) returns ``param`` itself. With
    ``ndim``, the number of dimensions of the tensor that ``param`` meets, the view has
    ``ndim`` dimensions. Without it, ``ch_axis`` must count from the end (negative),
    which keeps it valid whatever leading batch and time dimensions that tensor has.

    Example:
        >>> broadcast_along(torch.tensor([1, 2]), 1, ndim=3).shape
        torch.Size([1, 2, 1])
        >>> broadcast_along(torch.tensor([1, 2]), -3).shape
        torch.Size([2, 1, 1])
    """
    if ch_axis is None or param.dim() == 0:
        return param
    if ndim is None:
        if ch_axis >= 0:
            raise ValueError(
                f"ch_axis={ch_axis} counts from the front, so broadcast_along needs ndim "
                "(the dimensions of the tensor it meets); or give a negative ch_axis"
            )
        return param.reshape([-1] + [1] * (-ch_axis - 1))
    shape = [1] * ndim
    shape[ch_axis] = -1
    return param.reshape(shape)


def quantize_affine(
    input: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: int,
    quant_max: int,
    ch_axis: Optional[int] = None,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Integer codes :math:`q` of ``input`` (no gradient).

    ``dequantize_affine(quantize_affine(x, ...), ...)`` equals
    ``fake_quantize_affine(x, ...)`` bit for bit.

    Args:
        input: floating-point tensor.
        scale: scale, a scalar tensor or one value per channel along ``ch_axis``.
        zero_point: integer zero point, shaped like ``scale``.
        quant_min, quant_max: the integer range.
        ch_axis: channel axis for per-channel parameters, ``None`` for per-tensor.
        rounding: ``"nearest"``, ``"floor"`` or ``"stochastic"``.
        generator: random number generator for stochastic rounding.
        dtype: integer dtype of the result; the smallest that fits when ``None``.

    Example:
        >>> quantize_affine(torch.tensor([-1.0, 0.26, 9.0]), torch.tensor(0.1),
        ...                 torch.tensor(0), -128, 127)
        tensor([-10,   3,  90], dtype=torch.int8)
    """
    check_float_input(input)
    check_range(quant_min, quant_max)
    check_rounding(rounding)
    ch_axis = check_axis(input, ch_axis)
    check_qparams(input, scale, zero_point, quant_min, quant_max, ch_axis)
    codes = _codes(
        input.detach(), scale, zero_point, quant_min, quant_max, ch_axis, rounding, generator
    )
    return codes.to(dtype or int_dtype(quant_min, quant_max))


def _divide(input: Tensor, scale: Tensor, ch_axis: Optional[int], rounding: str) -> Tensor:
    """``input / scale`` as the rounding mode needs it.

    Nearest rounding multiplies by ``1 / scale`` in float32, as torch's fake-quantize
    kernels do (bit-for-bit parity). Floor and stochastic rounding divide: a value
    already on the grid, ``k * s``, then gives exactly ``k`` again, so quantizing twice
    changes nothing (``x * (1/s)`` can land an ulp below ``k`` and floor to ``k - 1``).
    """
    if rounding == "nearest":
        return input * broadcast_along(1.0 / scale, ch_axis, input.dim())
    return input / broadcast_along(scale, ch_axis, input.dim())


def _codes(input, scale, zero_point, quant_min, quant_max, ch_axis, rounding, generator):
    zp = broadcast_along(zero_point, ch_axis, input.dim())
    scaled = _divide(input.float(), scale.float(), ch_axis, rounding)
    return torch.clamp(round_values(scaled, rounding, generator) + zp, quant_min, quant_max)


def dequantize_affine(
    codes: Tensor, scale: Tensor, zero_point: Tensor, ch_axis: Optional[int] = None
) -> Tensor:
    """Real values :math:`(q - z)\\, s` of integer ``codes`` (float32).

    Example:
        >>> dequantize_affine(torch.tensor([-10, 3, 90], dtype=torch.int8),
        ...                   torch.tensor(0.5), torch.tensor(0))
        tensor([-5.0000,  1.5000, 45.0000])
    """
    if not isinstance(codes, Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    ch_axis = check_axis(codes, ch_axis)
    check_qparams(codes, scale, zero_point, None, None, ch_axis)
    zp = broadcast_along(zero_point, ch_axis, codes.dim())
    return (codes.to(torch.int64) - zp).float() * broadcast_along(
        scale.float(), ch_axis, codes.dim()
    )


def fake_quantize_affine(
    input: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: int,
    quant_max: int,
    ch_axis: Optional[int] = None,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Fake-quantize ``input``: the dequantized value of its integer code.

    With ``rounding="nearest"`` this is :func:`torch.fake_quantize_per_tensor_affine`
    (``ch_axis=None``) or :func:`torch.fake_quantize_per_channel_affine`, bit for bit in
    values and gradients. Other rounding modes use the same arithmetic and gradient
    rule (identity inside the range, zero outside).

    Args:
        input: floating-point tensor.
        scale: scale :math:`s`, scalar tensor (per-tensor) or 1-D (per-channel).
        zero_point: integer zero point :math:`z`, shaped like ``scale``.
        quant_min, quant_max: the integer range, ``quant_min < quant_max``.
        ch_axis: the channel axis of per-channel ``scale``; ``None`` for per-tensor.
        rounding: ``"nearest"`` (half to even), ``"floor"`` or ``"stochastic"``.
        generator: random number generator for stochastic rounding.

    Shape:
        - input: any shape; ``scale.numel()`` equals ``input.shape[ch_axis]`` when
          per-channel.
        - output: same shape and dtype as ``input``.

    Example:
        >>> x = torch.tensor([-1.0, 0.26, 13.0], requires_grad=True)
        >>> y = fake_quantize_affine(x, torch.tensor(0.1), torch.tensor(0), -128, 127)
        >>> y.detach()
        tensor([-1.0000,  0.3000, 12.7000])
        >>> y.sum().backward(); x.grad
        tensor([1., 1., 0.])
    """
    check_float_input(input)
    check_range(quant_min, quant_max)
    ch_axis = check_axis(input, ch_axis)
    check_qparams(input, scale, zero_point, quant_min, quant_max, ch_axis)
    return fake_quantize_affine_kernel(
        input, scale, zero_point, quant_min, quant_max, ch_axis, rounding, generator
    )


def fake_quantize_affine_kernel(
    input: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: int,
    quant_max: int,
    ch_axis: Optional[int] = None,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """:func:`fake_quantize_affine` without its checks, for callers that made them.

    ``ch_axis`` must be ``None`` or a non-negative axis of ``input``, ``scale`` finite and
    positive and ``zero_point`` integers in the range, shaped as ``fake_quantize_affine``
    requires: nothing here checks them.
    """
    scale = scale.to(torch.float32)
    zero_point = zero_point.to(torch.int32)
    if rounding == "nearest":
        if ch_axis is None:
            return torch.fake_quantize_per_tensor_affine(
                input, scale, zero_point, quant_min, quant_max
            )
        return torch.fake_quantize_per_channel_affine(
            input, scale, zero_point, ch_axis, quant_min, quant_max
        )
    check_rounding(rounding)
    zp = broadcast_along(zero_point, ch_axis, input.dim())
    shifted = round_values(_divide(input, scale, ch_axis, rounding), rounding, generator) + zp
    inside = (shifted >= quant_min) & (shifted <= quant_max)
    value = (torch.clamp(shifted, quant_min, quant_max) - zp) * broadcast_along(
        scale, ch_axis, input.dim()
    )
    passthrough = torch.where(inside, input, torch.zeros_like(input))
    return straight_through(value.to(input.dtype), passthrough)


def grad_scale(input: Tensor, factor: float) -> Tensor:
    """Return ``input`` unchanged, with its gradient multiplied by ``factor``.

    Example:
        >>> s = torch.tensor(2.0, requires_grad=True)
        >>> (grad_scale(s, 0.5) * 3).backward(); s.grad
        tensor(1.5000)
    """
    # input + (t - t.detach()) is exactly ``input`` in value (t - t == 0), whereas
    # (input - t).detach() + t can be off by one ulp and move a scale off its grid.
    scaled = input * factor
    return input.detach() + (scaled - scaled.detach())


def fake_quantize_learnable(
    input: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: int,
    quant_max: int,
    ch_axis: Optional[int] = None,
    grad_factor: float = 1.0,
) -> Tensor:
    """Fake quantization with gradients for ``scale`` and ``zero_point`` (LSQ, LSQ+).

    Learned step size quantization (Esser et al. 2020, "Learned Step Size
    Quantization", eq. 1-3) with the learned offset of LSQ+ (Bhalgat et al. 2020),
    kept as an integer zero point (rounded with an STE) so the result deploys exactly:

    .. math::

        \\hat{x} = (\\mathrm{round}(\\mathrm{clamp}(x/s + z, q_{min}, q_{max})) - z)\\, s

    Gradients: :math:`\\partial\\hat{x}/\\partial x = 1` inside the range, 0 outside;
    :math:`\\partial\\hat{x}/\\partial s = \\mathrm{round}(x/s + z) - z - x/s` inside,
    :math:`q_{min} - z` or :math:`q_{max} - z` outside (times ``grad_factor``, the
    paper's :math:`g = 1/\\sqrt{N Q_P}`); :math:`\\partial\\hat{x}/\\partial z = 0`
    inside and :math:`-s` outside.

    Example:
        >>> x = torch.tensor([0.26, 5.0])
        >>> s = torch.tensor(0.1, requires_grad=True)
        >>> y = fake_quantize_learnable(x, s, torch.tensor(0.0), -8, 7)
        >>> y.detach()
        tensor([0.3000, 0.7000])
        >>> y.sum().backward(); round(s.grad.item(), 4)  # (3 - 2.6) + 7
        7.4
    """
    check_float_input(input)
    check_range(quant_min, quant_max)
    ch_axis = check_axis(input, ch_axis)
    check_qparams(input, scale, zero_point, quant_min, quant_max, ch_axis, True)
    s = broadcast_along(grad_scale(scale, grad_factor), ch_axis, input.dim())
    z = broadcast_along(round_ste(zero_point.to(s.dtype)), ch_axis, input.dim())
    codes = round_ste(torch.clamp(input * s.reciprocal() + z, quant_min, quant_max))
    return (codes - z) * s
