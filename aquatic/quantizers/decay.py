"""Quantizers for the decays of spiking neurons, given as ``alpha`` or as ``tau``.

A leaky neuron keeps the fraction :math:`\\alpha = e^{-1/\\tau}` of its state per time
step (the *retention* factor; :math:`\\tau` is the time constant in steps). Chips do not
multiply by :math:`\\alpha`: they subtract a *leak* :math:`1 - \\alpha` on a grid of their
own. Both quantizers here work on that leak,

- :class:`BitShiftDecay`: :math:`1 - \\alpha = 2^{-dash}`, i.e. ``v -= v >> dash``
  (SynSense Xylo);
- :class:`UniformDecay`: :math:`1 - \\alpha = d / 2^{bits}`, i.e.
  ``v = v * (2**bits - d) >> bits`` (Intel Loihi's 12-bit ``du``/``dv``),

and return the quantized value in the form they got it: :math:`\\alpha_q`, or
:math:`\\tau_q = -1 / \\ln \\alpha_q` when built with ``param="tau"``. The integer code
(``dash`` or ``d``) is rounded with a straight-through estimator, so ``alpha`` or
``tau`` keeps a gradient and stays trainable.

Each quantizer also knows how its chip applies the decay to an *integer* state, which
is not :math:`\\alpha_q v` rounded to the nearest integer:

- :meth:`~DecayQuantizer.integer_decay` applies it to integer codes
  (:func:`aquatic.functional.integer.bitshift_decay`, ``x - max(x >> dash, 1)`` toward
  zero, and :func:`~aquatic.functional.integer.multiplicative_decay`,
  ``(2**bits - d) * x >> bits`` rounded toward zero);
- :meth:`~DecayQuantizer.decay_state` applies it to a float state on a grid of step
  ``scale``, :math:`s \\cdot \\mathrm{rule}(v / s)`, with the gradient of
  :math:`\\alpha_q v` (straight through). The spiking layers use it for the decay of a
  quantized state (``QConfig.state``), so that they compute what the chip computes.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from aquatic.functional.grid import Grid
from aquatic.functional.integer import bitshift_decay, multiplicative_decay
from aquatic.functional.rounding import check_rounding, round_ste
from aquatic.quantizers.decay_base import DecayQuantizer

__all__ = ["BitShiftDecay", "UniformDecay"]


class BitShiftDecay(DecayQuantizer):
    """Bit-shift decay :math:`\\alpha_q = 1 - 2^{-dash}` (``v -= v >> dash``).

    .. math::

        dash = \\mathrm{clamp}(\\mathrm{round}(-\\log_2(1 - \\alpha)),\\; 0,\\; 2^{bits} - 1),
        \\qquad \\alpha_q = 1 - 2^{-dash}

    The rounding of ``dash`` is a straight-through estimator, so inside the range
    :math:`\\partial\\alpha_q / \\partial\\alpha = 2^{-dash} / (1 - \\alpha)`, and 0 where
    ``dash`` is clamped. :math:`1 - \\alpha` is clamped from below at the smallest normal
    float, so :math:`\\alpha = 1` (or more) gives the largest ``dash`` and no NaN.

    With ``param="tau"`` the input is :math:`\\tau` (in steps):
    :math:`\\alpha = e^{-1/\\tau}` is quantized as above and :math:`\\tau_q = -1 / \\ln
    \\alpha_q` is returned. ``dash`` 0 (:math:`\\alpha_q = 0`) gives :math:`\\tau_q = 0`
    with a zero gradient (the derivative is unbounded there); taus are clamped at
    0.001 steps, so :math:`\\tau \\le 0` acts as instant decay.

    :meth:`to_int` returns ``dash``; ``qparams()["dash"]`` holds the ``dash`` of the last
    tensor quantized (a buffer, saved in the ``state_dict``). On integer states the chip
    computes ``x - (x >> dash)`` with a decrement of at least 1 toward zero
    (:meth:`integer_decay`, :meth:`decay_state`; Xylo's leak, as xylosim computes it).

    Args:
        bits: bits of ``dash``, 1 to 16 (Xylo: 4, ``dash`` in 0..15).
        param: ``"alpha"`` (retention factor per step) or ``"tau"`` (time constant).

    Shape:
        - Input: any shape. Output: same shape and dtype.

    Example:
        >>> q = BitShiftDecay(bits=4)
        >>> alpha = torch.tensor([0.0, 0.6, 0.9, 0.99, 1.0])
        >>> q(alpha)
        tensor([0.0000, 0.5000, 0.8750, 0.9922, 1.0000])
        >>> q.to_int(alpha)
        tensor([ 0,  1,  3,  7, 15], dtype=torch.uint8)
        >>> BitShiftDecay(bits=4, param="tau")(torch.tensor([1.0, 10.0]))
        tensor([1.4427, 7.4889])
    """

    _code_name = "dash"

    def __init__(self, bits: int = 4, param: str = "alpha") -> None:
        super().__init__(bits, param)

    def _codes(self, leak: Tensor, export: bool = False) -> Tensor:
        floor = torch.finfo(leak.dtype).tiny
        dash = -torch.log2(torch.clamp(leak, min=floor))
        return torch.clamp(round_ste(dash), self.quant_min, self.quant_max)

    def _leak_of(self, codes: Tensor) -> Tensor:
        return torch.exp2(-codes)

    def _grid_code(self, leak: Tensor) -> Tensor:
        # alpha = 1 (no leak) has dash = inf: clamped to the largest dash.
        return torch.round(-torch.log2(torch.clamp(leak, min=0.0)))

    def _integer_rule(self, input: Tensor, codes: Tensor) -> Tensor:
        return bitshift_decay(input, codes)


class UniformDecay(DecayQuantizer):
    """Decay on a uniform grid: :math:`\\alpha_q = 1 - d / 2^{bits}` (Loihi's ``du``).

    .. math::

        d = \\mathrm{clamp}(\\mathrm{round}((1 - \\alpha)\\, 2^{bits}),\\; 0,\\;
        2^{bits} - 1), \\qquad \\alpha_q = 1 - d / 2^{bits}

    so the chip computes ``v = v * (2**bits - d) >> bits``. The rounding of ``d``
    (nearest, floor or stochastic, :func:`aquatic.functional.round_ste`) passes the
    gradient straight through: :math:`\\partial\\alpha_q / \\partial\\alpha = 1` inside
    the range, 0 where ``d`` is clamped. Floor rounding of ``d`` never decays faster
    than the float value; stochastic rounding is unbiased,
    :math:`E[\\alpha_q] = \\alpha` inside the range.

    With ``param="tau"`` the input is :math:`\\tau` (in steps):
    :math:`\\alpha = e^{-1/\\tau}` is quantized as above and :math:`\\tau_q = -1 / \\ln
    \\alpha_q` is returned (``d`` 0 means no decay: :math:`\\tau_q = \\infty`, without
    a gradient). Quantizing a quantized ``tau`` again is exact with nearest rounding;
    with floor or stochastic rounding the round trip :math:`e^{-1/\\tau_q}` may land an
    ulp below the grid point and move ``d`` by one.

    :meth:`to_int` returns ``d`` (stochastic rounding exports with nearest);
    ``qparams()["decrement"]`` holds the ``d`` of the last tensor quantized. On integer
    states the chip computes ``(2**bits - d) * x >> bits`` rounded toward zero
    (:meth:`integer_decay`, :meth:`decay_state`; Loihi's leak).

    Args:
        bits: bits of ``d``, 1 to 16 (Loihi: 12).
        param: ``"alpha"`` (retention factor per step) or ``"tau"`` (time constant).
        rounding: ``"nearest"``, ``"floor"`` or ``"stochastic"``.
        generator: random number generator for stochastic rounding.

    Shape:
        - Input: any shape. Output: same shape and dtype.

    Example:
        >>> q = UniformDecay(bits=4)
        >>> alpha = torch.tensor([0.0, 0.5, 0.9, 1.0])
        >>> q(alpha)
        tensor([0.0625, 0.5000, 0.8750, 1.0000])
        >>> q.to_int(alpha)
        tensor([15,  8,  2,  0], dtype=torch.uint8)
    """

    _code_name = "decrement"

    def __init__(
        self,
        bits: int = 12,
        param: str = "alpha",
        rounding: str = "nearest",
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__(bits, param)
        self.rounding = check_rounding(rounding)
        self.generator = generator

    def _codes(self, leak: Tensor, export: bool = False) -> Tensor:
        rounding = "nearest" if export and self.rounding == "stochastic" else self.rounding
        decrement = round_ste(leak * 2.0**self.bits, rounding, self.generator)
        return torch.clamp(decrement, self.quant_min, self.quant_max)

    def _leak_of(self, codes: Tensor) -> Tensor:
        return codes * 2.0**-self.bits

    def _grid_code(self, leak: Tensor) -> Tensor:
        return torch.round(leak * 2.0**self.bits)

    def _integer_rule(self, input: Tensor, codes: Tensor) -> Tensor:
        return multiplicative_decay(input, codes, self.bits)

    def grid(self) -> Grid:
        """With ``param="alpha"``: :math:`\\alpha_q = a\\, 2^{-bits}` for the codes
        :math:`a = 2^{bits} - d` in ``1..2**bits``, a uniform grid.

        Its codes count retention, not leak (:meth:`to_int` returns :math:`d`). Rounding
        ``d`` down rounds :math:`\\alpha` up, so ``rounding="floor"`` reads ``"ceil"``.
        ``param="tau"`` has no uniform grid: a ``ValueError``.
        """
        if self.param != "alpha":
            return super().grid()
        rounding = {"floor": "ceil"}.get(self.rounding, self.rounding)
        device = self.decrement.device
        scale = torch.tensor(2.0**-self.bits, device=device)
        zero_point = torch.zeros((), dtype=torch.int32, device=device)
        return Grid(scale, zero_point, 1, 2**self.bits, None, rounding)

    def qparams(self) -> Dict[str, Any]:
        """``decrement``, ``bits``, ``param``, range, and ``scale`` (``2**-bits``)."""
        return {**super().qparams(), "scale": 2.0**-self.bits}

    def extra_repr(self) -> str:
        rounding = f", rounding={self.rounding!r}" if self.rounding != "nearest" else ""
        return f"bits={self.bits}, param={self.param!r}{rounding}" + self._switch_repr()
