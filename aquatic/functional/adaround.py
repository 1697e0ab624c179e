"""Adaptive rounding (AdaRound): the soft rounding variable, its regulariser, its schedule.

Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"
(ICML). Instead of rounding every weight to its nearest grid point, each weight is
rounded down or up, as a learned continuous variable :math:`V` decides. The soft
weight of a layer is (eq. 22)

.. math::

    \\tilde W = s \\, \\big(\\mathrm{clamp}(\\lfloor W / s \\rfloor + h(V) + z,\\;
    q_{min},\\; q_{max}) - z\\big)

with the *rectified sigmoid* (eq. 23, from Louizos et al. 2018)

.. math::

    h(V) = \\mathrm{clip}\\big(\\sigma(V)\\,(\\zeta - \\gamma) + \\gamma,\\; 0,\\; 1\\big),
    \\qquad \\zeta = 1.1,\\ \\gamma = -0.1,

and :math:`V` minimises the layer's output reconstruction error plus
:math:`\\lambda f_{reg}(V)` with (eq. 24)

.. math::

    f_{reg}(V) = \\sum_{i,j} 1 - |2 h(V_{ij}) - 1|^{\\beta},

which pushes every :math:`h(V_{ij})` to 0 or 1 as :math:`\\beta` is annealed from a
high value (20) to a low one (2). The hard rounding at the end rounds up where
:math:`h(V) \\ge 1/2`, i.e. where :math:`V \\ge 0`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "ZETA",
    "GAMMA",
    "rectified_sigmoid",
    "rounding_regularizer",
    "annealed_beta",
    "initial_logits",
]

#: Stretch of the rectified sigmoid, above 1 (eq. 23 of Nagel et al. 2020).
ZETA = 1.1
#: Stretch of the rectified sigmoid, below 0 (eq. 23 of Nagel et al. 2020).
GAMMA = -0.1


def rectified_sigmoid(v: Tensor) -> Tensor:
    """:math:`h(V) = \\mathrm{clip}(\\sigma(V)(\\zeta - \\gamma) + \\gamma, 0, 1)`.

    Reaches 0 and 1 exactly for finite :math:`V` (unlike the sigmoid), so the
    regulariser can drive it there.

    Example:
        >>> rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rounding_regularizer(v: Tensor, beta: float) -> Tensor:
    """:math:`\\sum 1 - |2 h(V) - 1|^{\\beta}`: zero when every :math:`h(V)` is 0 or 1.

    Example:
        >>> rounding_regularizer(torch.tensor([-10.0, 10.0]), beta=2.0)
        tensor(0.)
        >>> rounding_regularizer(torch.tensor([0.0]), beta=2.0)
        tensor(1.)
    """
    return (1.0 - (2.0 * rectified_sigmoid(v) - 1.0).abs().pow(beta)).sum()


def annealed_beta(
    step: int, iters: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0
) -> float:
    """The exponent :math:`\\beta` of the regulariser at ``step`` of ``iters``.

    Nagel et al. 2020 (sec. 5, "Optimization") anneal :math:`\\beta` from 20 to 2 and
    leave the first 20% of the iterations to the reconstruction alone. Here the
    decay is linear in the step after the warm-up; during the warm-up the exponent is
    ``start`` (the caller leaves the regulariser out there).

    Example:
        >>> [annealed_beta(k, 100) for k in (0, 20, 60, 100)]
        [20.0, 20.0, 11.0, 2.0]
    """
    first = int(warmup * iters)
    if step <= first or iters <= first:
        return float(start)
    progress = min(1.0, (step - first) / (iters - first))
    return float(end + (start - end) * (1.0 - progress))


def initial_logits(rest: Tensor) -> Tensor:
    """The :math:`V` with :math:`h(V)` equal to ``rest``, the fractional part of
    :math:`W / s` in ``[0, 1)``: the soft weight then starts at the float weight.

    :math:`V = -\\log\\big((\\zeta - \\gamma) / (r - \\gamma) - 1\\big)`, the inverse of the
    rectified sigmoid inside ``(0, 1)``; ``rest`` is clamped a hair inside that interval
    so that :math:`V` stays finite.

    Example:
        >>> v = initial_logits(torch.tensor([0.25, 0.5, 0.9]))
        >>> rectified_sigmoid(v)
        tensor([0.2500, 0.5000, 0.9000])
    """
    eps = 1e-6
    rest = rest.clamp(eps, 1.0 - eps)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)
