"""What the decay quantizers of :mod:`aquatic.quantizers.decay` share.

:class:`DecayQuantizer` holds the ``alpha``/``tau`` conversions through the leak
:math:`1 - \\alpha`, the integer codes and their export, and the chip's decay of an
integer state (:meth:`~DecayQuantizer.integer_decay`) and of a float state on a grid
(:meth:`~DecayQuantizer.decay_state`). Subclasses say how a leak becomes a code and
back, and which integer rule the chip applies.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from aquatic.functional.fake_quant import int_dtype
from aquatic.functional.grid import Grid
from aquatic.functional.integer import check_integer
from aquatic.functional.neuron_types import TAU_MIN
from aquatic.functional.rounding import straight_through
from aquatic.quantizers.base import Quantizer, check_bits
from aquatic.quantizers.state_checks import check_codes, describe

__all__ = ["DecayQuantizer"]

#: Leaks below this give tau ~ 1/leak > 1e18 steps; d tau / d leak ~ 1/leak**2 would
#: overflow float32, so there tau is 1/leak without a gradient.
_LEAK_MIN = 2.0**-60


def _check_alpha_type(alpha: Any) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, Tensor)):
        raise TypeError(f"alpha must be a number or a tensor, got {alpha!r}")


def _as_alpha(alpha: Union[float, Tensor]) -> Tensor:
    _check_alpha_type(alpha)
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    if not alpha.is_floating_point():
        alpha = alpha.double()
    # Reads the values: eager only (a compiled graph has no data-dependent branches).
    if not torch.compiler.is_compiling() and bool(torch.isnan(alpha).any()):
        raise ValueError("alpha holds NaN; a decay per step lies in [0, 1]")
    return alpha


def _as_bound(bound: Optional[Union[int, Tensor]]) -> Optional[Tensor]:
    return None if bound is None else torch.as_tensor(bound).to(torch.int64)


_INT32 = torch.iinfo(torch.int32)


def _code_dtype(quant_min: Any, quant_max: Any) -> torch.dtype:
    """int32 for codes known to fit it (faster), int64 otherwise."""
    if quant_min is None or quant_max is None:
        return torch.int64
    if torch.compiler.is_compiling() and any(isinstance(b, Tensor) for b in (quant_min, quant_max)):
        return torch.int64  # bounds held in tensors are not read in a compiled graph
    low, high = int(torch.as_tensor(quant_min).min()), int(torch.as_tensor(quant_max).max())
    return torch.int32 if _INT32.min <= low and high <= _INT32.max else torch.int64


class DecayQuantizer(Quantizer):
    """Shared parts: the ``alpha``/``tau`` conversions, codes, export and state.

    Subclasses set ``_code_name`` and implement :meth:`_codes` (leak -> integer-valued
    float codes, with a straight-through gradient) and :meth:`_leak_of` (codes -> leak).
    """

    _code_name = "codes"

    def __init__(self, bits: int, param: str) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        if param not in ("alpha", "tau"):
            raise ValueError(
                f"param must be 'alpha' (retention factor per step) or 'tau' (time "
                f"constant in steps), got {param!r}"
            )
        self.param = param
        self.quant_min, self.quant_max = 0, 2**bits - 1
        # The codes of the last tensor quantized, for qparams() and integer export.
        empty = torch.zeros(0, dtype=int_dtype(self.quant_min, self.quant_max))
        self.register_buffer(self._code_name, empty)

    def _codes(self, leak: Tensor, export: bool = False) -> Tensor:
        raise NotImplementedError

    def _leak_of(self, codes: Tensor) -> Tensor:
        raise NotImplementedError

    def _grid_code(self, leak: Tensor) -> Tensor:
        """The code of a leak on this quantizer's grid (rounded to the nearest code)."""
        raise NotImplementedError

    def _integer_rule(self, input: Tensor, codes: Tensor) -> Tensor:
        """The chip's decay of the integer states ``input`` with the integer ``codes``."""
        raise NotImplementedError

    def _leak(self, input: Tensor) -> Tensor:
        """The leak :math:`1 - \\alpha` of ``input`` (an ``alpha`` or a ``tau``)."""
        if self.param == "alpha":
            # Leaks outside [-1, 2] saturate the codes either way (with zero gradient);
            # clamping them keeps an infinite alpha from turning into NaN when rounded.
            return torch.clamp(1.0 - input, -1.0, 2.0)
        # 1 - exp(-1/tau) as -expm1(-1/tau): exact to the last bits even for long taus.
        return -torch.expm1(-1.0 / torch.clamp(input, min=TAU_MIN))

    def _value(self, leak: Tensor) -> Tensor:
        """``alpha_q = 1 - leak`` or ``tau_q = -1 / log(1 - leak)``, as ``param`` says."""
        if self.param == "alpha":
            return 1.0 - leak
        # Guards keep tau_q and its gradient finite: leak 1 (alpha_q = 0) is tau_q = 0,
        # and leaks near 0 give tau_q ~ 1/leak (inf for leak 0, i.e. no decay at all).
        full = leak >= 1
        small = leak <= _LEAK_MIN
        normal = ~(full | small)
        safe = torch.where(normal, leak, torch.full_like(leak, 0.5))
        tau = -1.0 / torch.log1p(-safe)
        edge = torch.where(full, torch.zeros_like(leak), 1.0 / leak.detach())
        return torch.where(normal, tau, edge)

    def _remember(self, codes: Tensor) -> None:
        setattr(self, self._code_name, codes.detach().to(getattr(self, self._code_name).dtype))

    def fake_quantize(self, input: Tensor) -> Tensor:
        codes = self._codes(self._leak(input))
        self._remember(codes)
        return self._value(self._leak_of(codes))

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """The integer codes of ``input`` (also kept for :meth:`qparams`)."""
        codes = self._codes(self._leak(input), export=True)
        self._remember(codes)
        return getattr(self, self._code_name)

    def dequantize(self, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """``alpha_q`` or ``tau_q`` (as ``param`` says) of integer ``codes``.

        ``dequantize(to_int(x), x.dtype)`` equals ``forward(x)`` (deterministic rounding).
        """
        return self._value(self._leak_of(codes.to(dtype)))

    def decay_codes(self, alpha: Union[float, Tensor]) -> Tensor:
        """The integer codes (``dash`` or ``d``, ``int64``) of decays ``alpha`` on this grid.

        ``alpha`` is the decay per step :math:`\\alpha_q` (also for ``param="tau"``:
        :math:`e^{-1/\\tau_q}`), as this quantizer produced it; a value off the grid gets
        the nearest code (in the code's own terms: ``dash`` for a bit-shift decay, ``d``
        for a uniform one), clamped to ``quant_min..quant_max``. A bit-shift decay whose
        leak :math:`2^{-dash}` is too small for its float type (``dash`` above 24 in
        float32) reads as :math:`\\alpha = 1` and gets the largest ``dash``; on states of
        magnitude below :math:`2^{dash}` both leak 1 per step, so the rule is unchanged.

        Example:
            >>> from aquatic.quantizers import BitShiftDecay
            >>> BitShiftDecay(bits=4).decay_codes(torch.tensor([0.5, 0.875, 1.0]))
            tensor([ 1,  3, 15])
        """
        alpha = _as_alpha(alpha)
        leak = 1.0 - alpha.detach().double()
        codes = torch.clamp(self._grid_code(leak), self.quant_min, self.quant_max)
        return codes.to(torch.int64)

    @torch.no_grad()
    def integer_decay(self, input: Tensor, alpha: Union[float, Tensor]) -> Tensor:
        """Decay the integer states ``input`` by ``alpha`` exactly as the chip does.

        Args:
            input: integer tensor, the state in units of its grid.
            alpha: the decay per step :math:`\\alpha_q` produced by this quantizer (for
                ``param="tau"``: :math:`e^{-1/\\tau_q}`), a number or a tensor that
                broadcasts to ``input``; see :meth:`decay_codes`.

        Returns:
            The decayed states, an integer tensor of ``input``'s dtype.

        Example:
            >>> from aquatic.quantizers import BitShiftDecay, UniformDecay
            >>> q = BitShiftDecay(bits=4)
            >>> alpha = q(torch.tensor(0.9))  # dash 3: alpha_q = 0.875
            >>> q.integer_decay(torch.tensor([-3, 1, 7, 100]), alpha)  # x - (x >> 3), at least 1
            tensor([-2,  0,  6, 88])
            >>> UniformDecay(bits=12).integer_decay(torch.tensor([-100, 100]), 0.75)
            tensor([-75,  75])
        """
        check_integer(input)
        return self._integer_rule(input, self.decay_codes(alpha).to(input.device))

    def decay_state(
        self,
        state: Tensor,
        alpha: Union[float, Tensor],
        scale: Union[float, Tensor],
        quant_min: Optional[Union[int, Tensor]] = None,
        quant_max: Optional[Union[int, Tensor]] = None,
    ) -> Tensor:
        """Decay a float ``state`` on the grid of step ``scale`` as the chip decays integers.

        .. math::

            v' = s \\cdot \\mathrm{rule}\\big(\\mathrm{clamp}(\\mathrm{round}(v / s),\\;
            q_{min},\\; q_{max})\\big)

        with the rule of :meth:`integer_decay`. A state on the grid and in range is used
        as it is; otherwise it is first rounded to the nearest point of the grid (half to
        even) and saturated to ``quant_min..quant_max`` when given (the state's integer
        range, as a chip saturates a sum before it decays it). The gradient is the one
        of :math:`\\alpha v` (straight through): :math:`\\partial/\\partial v = \\alpha`,
        :math:`\\partial/\\partial\\alpha = v`, so ``alpha`` keeps training.

        Args:
            state: floating-point state.
            alpha: the decay per step as forward uses it (a tensor that broadcasts to
                ``state``, or a number); see :meth:`integer_decay`.
            scale: step of the state's grid, positive: a number or a tensor that
                broadcasts to ``state`` (e.g. one per channel).
            quant_min, quant_max: range of ``state / scale`` (ints or broadcastable
                integer tensors), or ``None`` for no saturation.

        Returns:
            The decayed state, on the grid, with the dtype of ``state``.

        Example:
            >>> from aquatic.quantizers import BitShiftDecay
            >>> q = BitShiftDecay(bits=4)
            >>> alpha = torch.tensor(0.875, requires_grad=True)  # dash 3
            >>> v = torch.tensor([0.75, 12.5], requires_grad=True)  # codes 3 and 50
            >>> out = q.decay_state(v, alpha, scale=0.25)
            >>> out.detach()  # 0.25 * (3 - 1), 0.25 * (50 - (50 >> 3)); alpha * v: 0.66, 10.94
            tensor([ 0.5000, 11.0000])
            >>> out.sum().backward(); v.grad, alpha.grad
            (tensor([0.8750, 0.8750]), tensor(13.2500))
        """
        if not isinstance(state, Tensor) or not state.is_floating_point():
            raise TypeError(
                f"state must be a floating-point tensor, got "
                f"{getattr(state, 'dtype', type(state).__name__)}; use state.float()"
            )
        scale = torch.as_tensor(scale, dtype=state.dtype, device=state.device)
        # The check reads the values (a device sync, a data-dependent branch): eager only,
        # so that a compiled step stays one graph.
        if not torch.compiler.is_compiling() and (
            not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all())
        ):
            raise ValueError(f"scale must be positive and finite, got {scale}")
        _check_alpha_type(alpha)
        if not isinstance(alpha, Tensor):
            alpha = torch.tensor(float(alpha), dtype=state.dtype, device=state.device)
        codes = torch.round(state.detach() / scale)
        if quant_min is not None or quant_max is not None:
            low, high = _as_bound(quant_min), _as_bound(quant_max)
            codes = torch.clamp(codes, low, high)
        codes = codes.to(_code_dtype(quant_min, quant_max))
        value = self.integer_decay(codes, alpha).to(state.dtype) * scale
        return straight_through(value, alpha * state)

    def grid(self) -> Grid:
        """Raises a ``ValueError``: these decays are not evenly spaced (see subclasses)."""
        raise ValueError(
            f"{type(self).__name__}(param={self.param!r}) is not on a uniform grid: its "
            f"values {'alpha' if self.param == 'alpha' else 'tau'}_q are not evenly spaced; "
            f"read its integer codes ({self._code_name}) with to_int() or decay_codes()"
        )

    def qparams(self) -> Dict[str, Any]:
        """The codes of the last tensor quantized (empty before any), ``bits``, ``param``
        and the code range ``quant_min``, ``quant_max``."""
        return {
            self._code_name: getattr(self, self._code_name),
            "bits": self.bits,
            "param": self.param,
            "quant_min": self.quant_min,
            "quant_max": self.quant_max,
        }

    def _check_loaded(self, name, value, own):
        if name == self._code_name:
            check_codes(
                value, describe(value), self.quant_min, self.quant_max, name=self._code_name
            )

    def _prepare_load(self, state_dict, prefix):
        # The codes buffer takes the shape of the tensor last quantized; follow the saved one.
        saved = state_dict.get(prefix + self._code_name)
        current = getattr(self, self._code_name)
        if saved is not None and saved.shape != current.shape:
            setattr(self, self._code_name, torch.empty_like(saved, device=current.device))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, param={self.param!r}" + self._switch_repr()
