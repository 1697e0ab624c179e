"""The quantizer interface and the factories that QConfig holds."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.factory import Factory
from aquatic.functional.grid import Grid, NoRangeError
from aquatic.functional.integer import int_range
from aquatic.quantizers.state_checks import loaded_error

__all__ = ["Quantizer", "check_bits", "integer_range"]


def check_bits(bits: Any, low: int = 1, high: int = 16) -> int:
    """Return ``bits`` if it is an int in ``[low, high]``, else raise."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {bits!r}")
    if not low <= bits <= high:
        raise ValueError(f"bits={bits} is outside the supported range {low}..{high}")
    return bits


class Quantizer(nn.Module):
    """Base class of every aquatic quantizer.

    ``forward(input)`` returns the fake-quantized ``input`` (float, on the quantization
    grid) with a straight-through gradient. It is the same template for every
    quantizer, as in torch.ao's ``FakeQuantize``:

    1. check that ``input`` is a floating-point tensor;
    2. if ``observer_enabled``, and in training mode or not yet :attr:`observed`:
       :meth:`observe` the (detached) input (with ``fake_quant_enabled``, first ask
       :meth:`observe_and_fake_quantize`, which may do this step and the next at once);
    3. if ``fake_quant_enabled``: return :meth:`fake_quantize` of the input, else the
       input unchanged.

    Two switches control it:

    - ``observer_enabled``: whether ``forward`` updates ranges or initial values from
      its input. Observers update in training mode, like batch-norm statistics; in
      eval mode they only fill a range that has never been observed.
    - ``fake_quant_enabled``: whether ``forward`` quantizes; when ``False`` the input
      passes through unchanged.

    Subclasses implement :meth:`observe`, :meth:`fake_quantize`, :meth:`to_int` and,
    when their values lie on a uniform grid, :meth:`grid` (:meth:`qparams` follows from
    it); they do not override ``forward``. :meth:`observe` may return the extrema of
    the batch it observed; ``forward`` then hands them to
    ``fake_quantize(input, extrema)``, which may use them to skip work (see
    :func:`aquatic.functional.fake_quant_uniform.fake_quantize_uniform`). An
    :meth:`observe` that returns ``None`` gets ``fake_quantize(input)``.
    """

    #: Capabilities a layer asks of its quantizers, declared rather than probed:
    #: a bias quantizer whose scale follows the layer's input and weight scales
    #: (:class:`~aquatic.quantizers.AccumulatorBiasQuantizer`) ...
    follows_input_scale: bool = False
    #: ... and a decay quantizer's integer rule for decaying a state on its grid,
    #: ``decay_state(state, alpha, scale, low, high)``, or ``None`` (the layer then
    #: multiplies by alpha; see :mod:`aquatic.nn.grid_decay`).
    decay_state: Optional[Callable[..., Tensor]] = None

    #: What this quantizer's last training step decided, for its next ones: a callable
    #: ``plan(input)`` that returns the output, or ``None`` where it does not apply (see
    #: :meth:`keep_plan`); ``None``: no plan.
    _plan: Optional[Callable[[Tensor], Optional[Tensor]]] = None
    #: Whether a repeat of the same weight may be told by its version alone, without
    #: comparing its bits (:func:`aquatic.trust_weight_versions`).
    trusts_weight_versions: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.observer_enabled = True
        self.fake_quant_enabled = True

    def keep_plan(self, plan: Callable[[Tensor], Optional[Tensor]]) -> None:
        """Keep ``plan`` for the next calls of ``forward``, which try it first, until an
        attribute of this quantizer is set or deleted (its mode, its switches, a
        submodule: anything its decision rested on). ``plan(input)`` returns the output
        of a whole ``forward`` (observing in training mode included), or ``None``
        where it does not apply, having changed nothing; it checks itself what can
        change without an attribute being set (see
        :class:`aquatic.quantizers.fused.Plan`). Not saved with the quantizer: a copy
        or an unpickled quantizer decides afresh.

        Example:
            >>> from aquatic.quantizers import UniformQuantizer
            >>> q = UniformQuantizer(bits=8)
            >>> q.keep_plan(lambda input: input * 0)
            >>> q(torch.ones(2))
            tensor([0., 0.])
            >>> q.fake_quant_enabled = True  # an attribute set: the plan is dropped
            >>> q(torch.ones(2))
            tensor([1., 1.])
        """
        self.__dict__["_plan"] = plan

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        self.__dict__["_plan"] = None

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        self.__dict__["_plan"] = None

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        return {**state, "_plan": None}

    def _replicate_for_data_parallel(self) -> "Quantizer":
        # A replica shares this quantizer's attributes, but has observers of its own.
        replica = super()._replicate_for_data_parallel()
        replica.__dict__["_plan"] = None
        return replica

    @classmethod
    def with_args(cls, **kwargs: Any) -> Factory:
        """A factory that builds this quantizer with ``kwargs``, for a :class:`~aquatic.QConfig`."""
        return Factory(cls, kwargs)

    def forward(self, input: Tensor) -> Tensor:
        plan = self._plan
        if plan is not None:
            output = plan(input)
            if output is not None:
                return output
        if not isinstance(input, Tensor) or not input.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} quantizes floating-point tensors, got "
                f"{getattr(input, 'dtype', type(input).__name__)}; convert with .float()"
            )
        extrema = None
        if self.observer_enabled and (self.training or not self.observed):
            if self.fake_quant_enabled:
                output = self.observe_and_fake_quantize(input)
                if output is not None:
                    return output
            extrema = self.observe(input.detach())
        if not self.fake_quant_enabled:
            return input
        if extrema is None:
            return self.fake_quantize(input)
        return self.fake_quantize(input, extrema)

    @property
    def observed(self) -> bool:
        """Whether ranges or initial values are set, so eval mode need not observe.

        ``True`` also when there is nothing to observe. The default, ``False``, has
        ``forward`` call :meth:`observe` in eval mode too, which then decides itself.
        """
        return False

    def observe(self, input: Tensor) -> Optional[Tuple[Any, Any]]:
        """Update ranges or initial values from ``input`` (no-op by default).

        Returns:
            ``None``, or the ``(min, max)`` of ``input`` when computing them was part of
            observing it (tensors, per channel where the quantizer is, or Python floats).
        """
        return None

    def observe_and_fake_quantize(self, input: Tensor) -> Optional[Tensor]:
        """:meth:`observe` then :meth:`fake_quantize` in one step, where a quantizer has
        a faster way to do both; ``None`` (the default) where it has not, and then
        nothing may have changed: ``forward`` runs the two steps.

        Example:
            >>> from aquatic.quantizers import BinaryQuantizer
            >>> BinaryQuantizer().observe_and_fake_quantize(torch.randn(3)) is None
            True
        """
        return None

    def fake_quantize(self, input: Tensor, extrema: Optional[Tuple[Any, Any]] = None) -> Tensor:
        """The fake-quantized ``input`` with a straight-through gradient.

        Args:
            input: floating-point tensor.
            extrema: what :meth:`observe` returned for this ``input``, if anything.
        """
        raise NotImplementedError

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """Integer codes (an integer dtype) of ``input`` under the current parameters."""
        raise NotImplementedError

    def grid(self) -> Grid:
        """The uniform grid that ``forward``'s values lie on now.

        ``forward(x)`` is :math:`(q - z)\\, s` for codes ``q`` in the grid's range, with
        the grid's scale and zero point: what integer conversion, the hardware exports
        and interop read.

        Raises:
            ValueError: the quantizer's values do not lie on a uniform grid, or it has no
                range yet (:class:`~aquatic.functional.grid.NoRangeError`).

        Example:
            >>> from aquatic.quantizers import UniformQuantizer
            >>> grid = UniformQuantizer(bits=4, scale=0.5).grid()
            >>> grid.scale, grid.zero_point, grid.quant_min, grid.quant_max, grid.ch_axis
            (tensor(0.5000), tensor(0, dtype=torch.int32), -8, 7, None)
            >>> try:
            ...     UniformQuantizer().grid()
            ... except ValueError as error:
            ...     print(error)
            UniformQuantizer has no range yet; run data through it (...)
        """
        if type(self).qparams is not Quantizer.qparams:
            # A subclass that predates grid() and describes itself through qparams().
            return self._grid_from_qparams()
        raise ValueError(
            f"{type(self).__name__} is not on a uniform grid (it has no scale and zero "
            "point); read its integer codes with to_int(), or use a uniform quantizer "
            "(e.g. aquatic.quantizers.UniformQuantizer) where a grid is needed"
        )

    def qparams(self) -> Dict[str, Any]:
        """The parameters that map :meth:`to_int` codes back to real values.

        For a quantizer on a uniform grid: ``scale``, ``zero_point``, ``quant_min``,
        ``quant_max`` and ``ch_axis`` of :meth:`grid`.

        Raises:
            RuntimeError: no range yet (run data through the quantizer first).
        """
        if type(self).grid is not Quantizer.grid:
            return self.grid().qparams()
        raise NotImplementedError

    def _no_range(self, detail: str) -> NoRangeError:
        """The error of a quantizer that has seen no data yet; ``detail`` says why."""
        return NoRangeError(
            f"{type(self).__name__} has no range yet; run data through it ({detail})"
        )

    def _grid_from_qparams(self) -> Grid:
        try:
            params = self.qparams()
        except RuntimeError as error:
            raise self._no_range(str(error)) from None
        missing = [k for k in ("scale", "quant_min", "quant_max") if k not in params]
        if missing:
            raise ValueError(
                f"{type(self).__name__} is not on a uniform grid (its qparams() lack "
                f"{', '.join(missing)}); read its integer codes with to_int()"
            )
        scale = torch.as_tensor(params["scale"]).detach()
        zero_point = params.get("zero_point")
        zero_point = torch.zeros_like(scale) if zero_point is None else zero_point
        zero_point = torch.as_tensor(zero_point).detach().round().to(torch.int64)
        ch_axis = params.get("ch_axis") if scale.dim() == 1 else None
        rounding = getattr(self, "rounding", "nearest")
        return Grid(
            scale, zero_point, int(params["quant_min"]), int(params["quant_max"]), ch_axis, rounding
        )

    def _check_loaded(self, name: str, value: Tensor, own: Dict[str, Tensor]) -> None:
        """Raise a ``ValueError`` if the loaded ``value`` of this quantizer's tensor
        ``name`` is one the constructor would refuse (``own``: all its loaded tensors)."""

    def _prepare_load(self, state_dict: Dict[str, Any], prefix: str) -> None:
        """Make room for the loaded tensors (e.g. per-channel shapes) before they are copied."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Check every loaded value before anything changes, so a refused checkpoint
        # leaves the quantizer as it was.
        own = {}
        for name in (*self._parameters, *self._buffers):
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor):
                own[name] = value
        for name, value in own.items():
            try:
                self._check_loaded(name, value, own)
            except ValueError as error:
                raise loaded_error(self, prefix + name, error) from None
        self._prepare_load(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _switch_repr(self) -> str:
        off = [
            name for name in ("observer_enabled", "fake_quant_enabled") if not getattr(self, name)
        ]
        return "".join(f", {name}=False" for name in off)


def integer_range(bits: int, signed: bool, narrow_range: bool = False) -> tuple:
    """``(quant_min, quant_max)`` of a ``bits``-bit integer.

    ``narrow_range`` drops the most negative code of a signed range (``-127..127``
    rather than ``-128..127``), so that it is symmetric around zero.

    Example:
        >>> integer_range(8, signed=True), integer_range(8, True, narrow_range=True)
        ((-128, 127), (-127, 127))
        >>> integer_range(4, signed=False)
        (0, 15)
    """
    check_bits(bits)
    if signed:
        if bits == 1:
            raise ValueError(
                "a signed 1-bit range holds only {-1, 0}; use signed=False or "
                "aquatic.quantizers.BinaryQuantizer for {-1, +1}"
            )
        low, high = int_range(bits)
        return (low + 1 if narrow_range else low), high
    return 0, 2**bits - 1
