"""Decays on a quantized state: a decay quantizer's integer rule on a state's grid.

When the quantizer that decides a spiking layer's decay (``alpha_mem`` / ``alpha_syn``
if ``QConfig.alpha`` is set, else ``tau_mem`` / ``tau_syn``) knows how a chip applies
it to an integer state (it has a ``decay_state`` method, as
:class:`~aquatic.quantizers.BitShiftDecay` and
:class:`~aquatic.quantizers.UniformDecay` do) and that state's quantizer has a grid
(``qparams()`` gives a ``scale``), the layer decays the state as the chip does:
:math:`s \\cdot \\mathrm{rule}(\\mathrm{clamp}(\\mathrm{round}(v / s)))` on the state's
integer grid and range, with the gradient of :math:`\\alpha v`. The rule lives with the
decay quantizer; the layer only asks for it (:class:`GridDecay`). Otherwise (no state
quantizer, a scale not known yet, an ``alpha`` quantizer without a rule, or fake
quantization switched off) it multiplies by :math:`\\alpha`. The grid is read at every
step, so a state quantizer whose observer moves its scale is followed.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["Grid", "GridDecay", "state_grid"]

Grid = Tuple[Tensor, Optional[Tensor], Optional[Tensor]]


def state_grid(quantizer: nn.Module, like: Tensor) -> Optional[Grid]:
    """``(scale, low, high)`` of a state quantizer's grid, broadcastable to ``like``.

    ``low``/``high`` bound ``state / scale`` (the integer range less the zero point;
    ``None`` when the quantizer does not say). ``None`` when the quantizer has no
    scale, has seen nothing yet, or does not quantize (``fake_quant_enabled=False``).
    """
    if not getattr(quantizer, "fake_quant_enabled", True):
        return None
    qparams = getattr(quantizer, "qparams", None)
    if not callable(qparams):
        return None
    try:
        params = qparams()
    except RuntimeError:  # an observer that has seen nothing: no grid so far
        return None
    scale = params.get("scale")
    if scale is None:
        return None
    scale = torch.as_tensor(scale).detach()
    zero_point = torch.as_tensor(params.get("zero_point", 0)).detach().to(torch.int64)
    quant_min, quant_max = params.get("quant_min"), params.get("quant_max")
    if scale.numel() > 1 or zero_point.numel() > 1:
        axis = params.get("ch_axis")
        if axis is None:
            return None
        shape = [1] * like.dim()
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    low = None if quant_min is None else quant_min - zero_point
    high = None if quant_max is None else quant_max - zero_point
    return scale.to(device=like.device), low, high


class GridDecay:
    """``decay(state, alpha)``: a decay quantizer's integer rule on a state quantizer's grid.

    Falls back to ``alpha * state`` whenever the rule does not apply (see the module
    docstring). Built by the layers for the functions of :mod:`aquatic.functional.neurons`.
    """

    def __init__(self, decay_quantizer: nn.Module, state_quantizer: nn.Module) -> None:
        self.decay_quantizer = decay_quantizer
        self.state_quantizer = state_quantizer

    def __call__(self, state: Tensor, alpha: Tensor) -> Tensor:
        grid = None
        if getattr(self.decay_quantizer, "fake_quant_enabled", True):
            grid = state_grid(self.state_quantizer, state)
        if grid is None:
            return alpha * state
        scale, low, high = grid
        return self.decay_quantizer.decay_state(state, alpha, scale, low, high)
