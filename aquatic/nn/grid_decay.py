"""Decays on a quantized state: a decay quantizer's integer rule on a state's grid.

When the quantizer that decides a spiking layer's decay (``alpha_mem`` / ``alpha_syn``
if ``QConfig.alpha`` is set, else ``tau_mem`` / ``tau_syn``) knows how a chip applies
it to an integer state (it has a ``decay_state`` method, as
:class:`~aquatic.quantizers.BitShiftDecay` and
:class:`~aquatic.quantizers.UniformDecay` do) and that state's quantizer has a grid
(its ``grid()``, a :class:`~aquatic.functional.Grid`), the layer decays the state as
the chip does: :math:`s \\cdot \\mathrm{rule}(\\mathrm{clamp}(\\mathrm{round}(v / s)))`
on the state's integer grid and range, with the gradient of :math:`\\alpha v`. The rule
lives with the decay quantizer; the layer only asks for it (:class:`GridDecay`). Otherwise (no state
quantizer, a scale not known yet, an ``alpha`` quantizer without a rule, or fake
quantization switched off) it multiplies by :math:`\\alpha`. The grid is read at every
step, so a state quantizer whose observer moves its scale is followed.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.functional.grid import Grid
from aquatic.quantizers.base import Quantizer
from aquatic.quantizers.decay import BitShiftDecay, UniformDecay
from aquatic.quantizers.shared import SharedStateQuantizer

__all__ = ["GridDecay", "GridState"]


def fixed_grid(quantizer: nn.Module) -> Optional[Grid]:
    """The grid a state quantizer puts a whole sequence on, or ``None`` when it may move
    or is not torch's per-tensor fake quantization with nearest rounding.

    Known fixed: a :class:`~aquatic.quantizers.SharedStateQuantizer` (it observes
    nothing; the group's scale is set before the sequence runs) and quantizers that
    declare ``fixed_state_grid = True`` (e.g. :class:`aquatic.hw.loihi.StateQuantizer`).
    Learned scales, observers, switched-off fake quantization and hooks keep the loop.
    """
    declared = isinstance(quantizer, SharedStateQuantizer) or getattr(
        type(quantizer), "fixed_state_grid", False
    )
    if not declared or not isinstance(quantizer, Quantizer):
        return None
    if not quantizer.fake_quant_enabled or quantizer._forward_hooks:
        return None
    if quantizer._forward_pre_hooks or any(p.requires_grad for p in quantizer.parameters()):
        return None
    try:
        grid = quantizer.grid()
    except ValueError:
        return None
    if grid.scale.numel() != 1 or grid.rounding != "nearest":
        return None
    return grid


class GridState:
    """A layer's state quantizer as a neuron function's ``quantize_v_mem``/``quantize_i_syn``.

    Calling it runs the quantizer; :meth:`fixed_grid` tells the fused sequence the grid
    when it stays fixed (:func:`fixed_grid`), so that the sequence need not run step by
    step.
    """

    def __init__(self, quantizer: nn.Module) -> None:
        self.quantizer = quantizer

    def __call__(self, state: Tensor) -> Tensor:
        return self.quantizer(state)

    def fixed_grid(self) -> Optional[Grid]:
        """The quantizer's fixed grid, or ``None``."""
        return fixed_grid(self.quantizer)


class GridDecay:
    """``decay(state, alpha)``: a decay quantizer's integer rule on a state quantizer's grid.

    Falls back to ``alpha * state`` whenever the rule does not apply (see the module
    docstring). Built by the layers for the functions of :mod:`aquatic.functional.neurons`.
    """

    def __init__(self, decay_quantizer: nn.Module, state_quantizer: nn.Module) -> None:
        self.decay_quantizer = decay_quantizer
        self.state_quantizer = state_quantizer

    def __call__(self, state: Tensor, alpha: Tensor) -> Tensor:
        quantizers = (self.decay_quantizer, self.state_quantizer)
        if not all(getattr(q, "fake_quant_enabled", True) for q in quantizers):
            return alpha * state
        try:
            grid = self.state_quantizer.grid()
        except ValueError:  # no range yet, or not on a uniform grid: no integer rule
            return alpha * state
        if grid.scale.numel() > 1 and not grid.per_channel:
            return alpha * state
        scale, zero_point = grid.along(state)
        zero_point = zero_point.detach().to(torch.int64)
        # The range of state / scale: the integer range less the zero point.
        low, high = grid.quant_min - zero_point, grid.quant_max - zero_point
        scale = scale.detach().to(device=state.device)
        return self.decay_quantizer.decay_state(state, alpha, scale, low, high)

    def fixed_rule(self, alpha: Tensor) -> Optional[Tuple[str, int, Tensor]]:
        """``(rule, bits, codes)`` of this decay on its state's fixed grid, or ``None``.

        ``"bitshift"`` for a :class:`~aquatic.quantizers.BitShiftDecay`,
        ``"multiplicative"`` with ``bits`` for a :class:`~aquatic.quantizers.UniformDecay`,
        and the integer codes of ``alpha``; ``None`` where :meth:`__call__` would not
        apply a rule, or applies one the fused sequence does not know.
        """
        quantizer = self.decay_quantizer
        if not getattr(quantizer, "fake_quant_enabled", True):
            return None
        if fixed_grid(self.state_quantizer) is None or not isinstance(alpha, Tensor):
            return None
        if isinstance(quantizer, BitShiftDecay):
            return "bitshift", 0, quantizer.decay_codes(alpha.detach())
        if isinstance(quantizer, UniformDecay):
            return "multiplicative", quantizer.bits, quantizer.decay_codes(alpha.detach())
        return None
