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

import torch
from torch import Tensor, nn

__all__ = ["GridDecay"]


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
