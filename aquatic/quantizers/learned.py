"""Quantizers with learned parameters: LSQ, LSQ+ and PACT.

- :class:`LSQQuantizer`: learned step size (Esser et al. 2020, "Learned Step Size
  Quantization", ICLR). The scale :math:`s` is a parameter trained with the quantizer's
  own gradient (their eq. 3), scaled by :math:`g = 1/\\sqrt{N Q_P}` (their section 2.2).
- :class:`LSQPlusQuantizer`: LSQ with a learned offset (Bhalgat et al. 2020, "LSQ+:
  Improving low-bit quantization through learnable offsets and better initialization",
  CVPR workshops), for asymmetric data such as Swish activations.
- :class:`PACTQuantizer`: a learned clipping level :math:`\\alpha` for unsigned
  activations (Choi et al. 2018, "PACT: Parameterized Clipping Activation for Quantized
  Neural Networks").
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from aquatic.functional.fake_quant import (
    check_axis,
    check_ch_axis,
    fake_quantize_affine,
    fake_quantize_learnable,
    grad_scale,
    int_dtype,
    quantize_affine,
)
from aquatic.functional.grid import Grid
from aquatic.functional.qparams import calculate_qparams
from aquatic.functional.rounding import straight_through
from aquatic.quantizers.base import Quantizer, integer_range
from aquatic.quantizers.state_checks import check_channels, check_scale, describe

__all__ = ["LSQQuantizer", "LSQPlusQuantizer", "PACTQuantizer"]

_EPS = torch.finfo(torch.float32).eps


def _rows(input: Tensor, ch_axis: Optional[int]) -> Tensor:
    """``input`` as a 2-D ``(channels, elements)`` tensor; a single row per tensor."""
    if ch_axis is None:
        return input.reshape(1, -1)
    axis = check_axis(input, ch_axis)
    return input.movedim(axis, 0).reshape(input.shape[axis], -1)


def _per_channel(stat: Tensor, ch_axis: Optional[int]) -> Tensor:
    """One value per row of :func:`_rows`, as a scalar when per-tensor."""
    return stat.reshape(()) if ch_axis is None else stat


class LSQQuantizer(Quantizer):
    """Learned step size quantization (LSQ, Esser et al. 2020).

    The scale :math:`s` is an ``nn.Parameter``. Forward (their eqs. 1-2), with
    :math:`Q_N = -q_{min}` and :math:`Q_P = q_{max}`:

    .. math::

        \\hat{x} = \\mathrm{round}(\\mathrm{clamp}(x / s, -Q_N, Q_P))\\, s

    The gradient with respect to :math:`x` is the straight-through estimator (1 inside
    the range, 0 outside), and with respect to :math:`s` it is their eq. 3,

    .. math::

        \\frac{\\partial \\hat{x}}{\\partial s} = g \\cdot \\begin{cases}
            \\mathrm{round}(x/s) - x/s & -Q_N < x/s < Q_P \\\\
            -Q_N & x/s \\le -Q_N \\\\
            Q_P & x/s \\ge Q_P
        \\end{cases}

    with the gradient scale :math:`g = 1/\\sqrt{N Q_P}` (their section 2.2), where
    :math:`N` is the number of elements that share one scale value in the tensor being
    quantized (for activations, the batch is part of it), unless ``grad_factor`` is given.

    The first ``forward`` (while ``observer_enabled``) initializes the scale from the data
    as :math:`s = 2\\,\\mathrm{mean}|x| / \\sqrt{Q_P}` (their section 2.1), per channel
    when ``ch_axis`` is set, and sets ``initialized``. From then on only training changes
    it. The parameter object stays the same (only its ``.data`` is replaced), so an
    optimizer built before the first forward trains it. Until initialized the scale is 1.
    Set ``initialized = False`` to initialize again from the next batch; loading a
    ``state_dict`` marks the quantizer initialized.

    Args:
        bits: bit width, 1 to 16 (2 to 16 when signed).
        signed: signed codes (weights) or unsigned (activations after a ReLU).
        narrow_range: drop the most negative signed code (``-127..127`` for 8 bits).
        ch_axis: one learned scale per channel along this axis; ``None`` for one scale.
        grad_factor: the gradient scale :math:`g`; ``None`` for :math:`1/\\sqrt{N Q_P}`.

    Shape:
        - Input: any shape (per-channel: ``input.shape[ch_axis]`` channels).
        - Output: same shape and dtype.
        - ``scale``: ``()`` per tensor, ``(C,)`` per channel once initialized.

    Example:
        >>> q = LSQQuantizer(bits=4)
        >>> x = torch.tensor([-1.0, -0.5, 0.25, 1.0])
        >>> y = q(x)
        >>> q.scale  # 2 * mean|x| / sqrt(7)
        Parameter containing:
        tensor(0.5197, requires_grad=True)
        >>> y
        tensor([-1.0394, -0.5197,  0.0000,  1.0394], grad_fn=<MulBackward0>)
        >>> q.to_int(x)
        tensor([-2, -1,  0,  2], dtype=torch.int8)
    """

    def __init__(
        self,
        bits: int = 8,
        signed: bool = True,
        narrow_range: bool = False,
        ch_axis: Optional[int] = None,
        grad_factor: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.quant_min, self.quant_max = integer_range(bits, signed, narrow_range)
        self.bits = bits
        self.ch_axis = check_ch_axis(ch_axis)
        if grad_factor is not None:
            if isinstance(grad_factor, bool) or not isinstance(grad_factor, (int, float)):
                raise TypeError(f"grad_factor must be a number or None, got {grad_factor!r}")
            if not (math.isfinite(grad_factor) and grad_factor > 0):
                raise ValueError(
                    f"grad_factor must be positive and finite, got {grad_factor!r}; "
                    "pass None for LSQ's 1/sqrt(N * Q_P)"
                )
            grad_factor = float(grad_factor)
        self.grad_factor = grad_factor
        # Shape () until the first batch: the number of channels is not known yet.
        self.scale = nn.Parameter(torch.ones(()))
        # A plain attribute, so checking it never syncs a GPU.
        self.initialized = False

    # Names of the learned tensors whose shape the first batch (or a state_dict) sets.
    _learned = ("scale",)

    def observe(self, input: Tensor) -> None:
        if not self.initialized:
            with torch.no_grad():
                self._initialize(input)
            self.initialized = True

    def _initialize(self, input: Tensor) -> None:
        mean_abs = _per_channel(_rows(input.float(), self.ch_axis).abs().mean(dim=1), self.ch_axis)
        scale = 2.0 * mean_abs / math.sqrt(self.quant_max)
        self._set("scale", torch.clamp(scale, min=_EPS))

    def _set(self, name: str, value: Tensor) -> None:
        if not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"{type(self).__name__} cannot initialize its {name} from a tensor that is "
                "empty or holds NaN or inf; clean the input first"
            )
        param = getattr(self, name)
        param.data = value.to(dtype=param.dtype, device=param.device)

    def _zero_point(self) -> Tensor:
        return torch.zeros((), dtype=self.scale.dtype, device=self.scale.device)

    def _grad_factor(self, input: Tensor) -> float:
        if self.grad_factor is not None:
            return self.grad_factor
        per_scale = max(input.numel() // max(self.scale.numel(), 1), 1)
        return 1.0 / math.sqrt(per_scale * self.quant_max)

    def _axis(self) -> Optional[int]:
        return self.ch_axis if self.scale.dim() == 1 else None

    def fake_quantize(self, input: Tensor) -> Tensor:
        grad_factor = self._grad_factor(input)
        return fake_quantize_learnable(
            input,
            self.scale,
            # The zero point's gradient (LSQ+) is a sum over the same N elements as the
            # scale's, so it gets the same factor; LSQ's constant 0 is unaffected.
            grad_scale(self._zero_point(), grad_factor),
            self.quant_min,
            self.quant_max,
            self._axis(),
            grad_factor,
        )

    def grid(self) -> Grid:
        """The grid of the learned scale (and zero point); raises until initialized."""
        if not self.initialized:
            raise self._no_range(
                "it initializes from the first forward pass, or from a loaded state_dict"
            )
        scale = self.scale.detach()
        zero_point = torch.round(self._zero_point().detach()).to(torch.int32)
        zero_point = zero_point.expand_as(scale).contiguous()
        return Grid(scale, zero_point, self.quant_min, self.quant_max, self._axis())

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """Integer codes ``q`` with ``(q - zero_point) * scale`` equal to ``forward(input)``."""
        scale, zero_point = self.grid().along(input)
        # Read the codes off the forward value, so both always agree bit for bit.
        codes = torch.round(self.fake_quantize(input) / scale) + zero_point
        return codes.to(int_dtype(self.quant_min, self.quant_max))

    def _check_loaded(self, name, value, own):
        if name == "scale":
            check_scale(value, describe(value))
            check_channels(value, own.get("zero_point"), self.ch_axis)
        elif name == "zero_point" and not bool(torch.isfinite(value).all()):
            raise ValueError(f"zero_point must be finite, got {describe(value)}")

    def _prepare_load(self, state_dict, prefix):
        # The saved tensors may be per channel while this instance is still shape ().
        for name in self._learned:
            saved = state_dict.get(prefix + name)
            if saved is None:
                continue
            self.initialized = True
            param = getattr(self, name)
            if saved.shape != param.shape:
                param.data = torch.empty(saved.shape, dtype=param.dtype, device=param.device)

    def extra_repr(self) -> str:
        parts = [f"bits={self.bits}", f"quant_min={self.quant_min}", f"quant_max={self.quant_max}"]
        if self.ch_axis is not None:
            parts.append(f"ch_axis={self.ch_axis}")
        if self.grad_factor is not None:
            parts.append(f"grad_factor={self.grad_factor:g}")
        if not self.initialized:
            parts.append("initialized=False")
        return ", ".join(parts) + self._switch_repr()


class LSQPlusQuantizer(LSQQuantizer):
    """LSQ with a learned offset (LSQ+, Bhalgat et al. 2020).

    LSQ+ quantizes :math:`\\hat{x} = \\mathrm{round}(\\mathrm{clamp}((x - \\beta)/s,
    q_{min}, q_{max}))\\, s + \\beta` with a learned step :math:`s` and offset
    :math:`\\beta`. aquatic keeps the offset as a zero point :math:`z = -\\beta / s`
    (a float ``nn.Parameter``) and rounds it with a straight-through estimator in the
    forward pass, so the zero point is an integer and the result deploys as an ordinary
    affine quantizer:

    .. math::

        \\hat{x} = (\\mathrm{round}(\\mathrm{clamp}(x/s + \\lfloor z \\rceil,
        q_{min}, q_{max})) - \\lfloor z \\rceil)\\, s

    Gradients (:func:`aquatic.functional.fake_quantize_learnable`): for :math:`s` as in
    LSQ, :math:`\\mathrm{round}(x/s + z) - z - x/s` inside the range and
    :math:`q_{min} - z` or :math:`q_{max} - z` outside; for :math:`z`, 0 inside and
    :math:`-s` outside. Both are multiplied by the gradient scale :math:`g` (the zero
    point's gradient is a sum over the same :math:`N` elements as the step size's).

    The first ``forward`` initializes both from the observed range extended to include
    0 (so that zero is exactly representable, as padding needs):
    :math:`s = (\\max - \\min) / (q_{max} - q_{min})`, :math:`z = q_{min} -
    \\mathrm{round}(\\min / s)` (:func:`aquatic.functional.calculate_qparams`).

    Args:
        bits: bit width, 1 to 16 (2 to 16 when signed).
        signed: signed codes; unsigned by default, as for activations.
        narrow_range: drop the most negative signed code.
        ch_axis: one scale and zero point per channel along this axis; ``None`` for one.
        grad_factor: the gradient scale :math:`g`; ``None`` for :math:`1/\\sqrt{N Q_P}`.

    Shape:
        - Input: any shape (per-channel: ``input.shape[ch_axis]`` channels).
        - Output: same shape and dtype.
        - ``scale``, ``zero_point``: ``()`` per tensor, ``(C,)`` per channel.

    Example:
        >>> q = LSQPlusQuantizer(bits=8)
        >>> x = torch.tensor([-0.25, 0.0, 0.5, 1.0])
        >>> y = q(x)
        >>> q.qparams()["zero_point"], q.to_int(x)
        (tensor(51, dtype=torch.int32), tensor([  0,  51, 153, 255], dtype=torch.uint8))
    """

    def __init__(
        self,
        bits: int = 8,
        signed: bool = False,
        narrow_range: bool = False,
        ch_axis: Optional[int] = None,
        grad_factor: Optional[float] = None,
    ) -> None:
        super().__init__(bits, signed, narrow_range, ch_axis, grad_factor)
        self.zero_point = nn.Parameter(torch.zeros(()))

    _learned = ("scale", "zero_point")

    def _initialize(self, input: Tensor) -> None:
        rows = _rows(input.float(), self.ch_axis)
        if rows.numel() == 0:
            raise ValueError(f"{type(self).__name__} cannot initialize from an empty tensor")
        min_val = _per_channel(rows.amin(dim=1), self.ch_axis)
        max_val = _per_channel(rows.amax(dim=1), self.ch_axis)
        scale, zero_point = calculate_qparams(
            min_val, max_val, self.quant_min, self.quant_max, symmetric=False
        )
        self._set("scale", scale)
        self._set("zero_point", zero_point.float())

    def _zero_point(self) -> Tensor:
        return self.zero_point


class PACTQuantizer(Quantizer):
    """Parameterized clipping activation (PACT, Choi et al. 2018).

    Clips to a learned level :math:`\\alpha` (their eq. 1) and quantizes the result to
    ``bits`` unsigned bits with step :math:`s = \\alpha / (2^{bits} - 1)` (their eq. 2):

    .. math::

        y = \\mathrm{clamp}(x, 0, \\alpha), \\qquad
        \\hat{x} = \\mathrm{round}(y / s)\\, s

    The gradient passes straight through the whole quantization step (the value of
    :math:`\\hat{x}`, the gradient of :math:`y`), so the gradients are exactly the
    paper's: :math:`\\partial\\hat{x}/\\partial x = 1` for
    :math:`0 \\le x < \\alpha` and 0 elsewhere, and
    :math:`\\partial\\hat{x}/\\partial\\alpha = 1` where :math:`x \\ge \\alpha` and 0
    elsewhere (their eq. 3). The paper regularizes :math:`\\alpha` with an L2 penalty;
    add it to the loss (``loss + lam * q.alpha ** 2``) or use the optimizer's weight decay.

    Args:
        bits: bit width of the unsigned codes, 1 to 16.
        alpha: initial clipping level (positive); the paper starts from 10.

    Shape:
        - Input: any shape. Output: same shape and dtype.

    Example:
        >>> q = PACTQuantizer(bits=2, alpha=3.0)
        >>> x = torch.tensor([-1.0, 0.4, 1.6, 5.0])
        >>> q(x)
        tensor([0., 0., 2., 3.], grad_fn=<AddBackward0>)
        >>> q.to_int(x)
        tensor([0, 0, 2, 3], dtype=torch.uint8)
    """

    def __init__(self, bits: int = 8, alpha: float = 10.0) -> None:
        super().__init__()
        self.quant_min, self.quant_max = integer_range(bits, signed=False)
        self.bits = bits
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha must be a number, got {alpha!r}")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be positive and finite, got {alpha!r}; PACT uses 10.0")
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def _scale(self) -> Tensor:
        return self.alpha.detach().float() / self.quant_max

    def _zero(self) -> Tensor:
        return torch.zeros((), dtype=torch.int32, device=self.alpha.device)

    def _check_loaded(self, name, value, own):
        if name == "alpha":
            check_scale(value, describe(value), fix="; PACT uses 10.0", name="alpha")

    def fake_quantize(self, input: Tensor) -> Tensor:
        alpha = self.alpha.to(input.dtype)
        # where(), not clamp(): at x == alpha the gradient goes to alpha (eq. 3), not x.
        clipped = torch.where(input >= alpha, alpha, torch.clamp(input, min=0))
        value = fake_quantize_affine(
            clipped.detach(), self._scale(), self._zero(), self.quant_min, self.quant_max
        )
        return straight_through(value, clipped)

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """Codes in ``0..2**bits - 1`` with ``code * scale`` equal to ``forward(input)``."""
        return quantize_affine(input, self._scale(), self._zero(), self.quant_min, self.quant_max)

    def grid(self) -> Grid:
        """Step ``alpha / (2**bits - 1)``, zero point 0, codes ``0..2**bits - 1``."""
        return Grid(self._scale(), self._zero(), self.quant_min, self.quant_max)

    def qparams(self) -> Dict[str, Any]:
        """``scale`` (``alpha / (2**bits - 1)``), ``zero_point`` 0, range, and ``alpha``."""
        return {**self.grid().qparams(), "alpha": self.alpha.detach()}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={self.alpha.item():g}" + self._switch_repr()
