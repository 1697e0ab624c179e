r"""Where the surrogates' exponential stops: one rule for the compiled and PyTorch loops.

``SingleExponential``'s slope :math:`e^{-|u|/w}` is taken as 0 where its argument
:math:`x = -|u|/w` is at or under :data:`FLOOR`: -86 in float32 and -707 in float64,
whose exponentials (:math:`4.5 \cdot 10^{-38}` and :math:`9.0 \cdot 10^{-308}`) are
about four times the smallest normal number, so every slope is a normal number or 0.

The reason is speed. PyTorch's CPU ``exp`` leaves its vectorized path where the result
nears the subnormal range: measured (PyTorch 2.13), for arguments at or under
-87.336536 in float32 (:math:`\approx \ln 2^{-126}`) and -707.70327 in float64
(:math:`\ln 2^{-1021}`). There it took 1.8 to 5 ms for 262,144 float32 arguments
against 26 µs in :math:`[-40, 0]` (two threads), and a membrane 44 widths under the
threshold, which a silent neuron's often is, gives such an argument. The floors keep a
margin from both edges. The PyTorch loops (:func:`exp_floored_`) clamp the argument to
:data:`FLOOR` and then zero the results at or under :data:`CUT`, a number between :math:`e^{FLOOR}` and the
exponential of the next argument up (so it holds whichever way ``exp`` rounds, to a
few units in the last place); the compiled loops' exponential
(:func:`~aquatic.functional.jit_math.exp_nonpositive`) returns 0 there itself. The
slopes lost are under :math:`4.5 \cdot 10^{-38}`: with any gradient of magnitude under
1 their products are subnormal, which the backward passes flush to 0 anyway
(:mod:`aquatic.functional.subnormals`).

Example:
    >>> import numpy as np
    >>> print(FLOOR[np.float32], FLOOR[np.float64])
    -86.0 -707.0
    >>> x = np.array([-86.0, np.nextafter(np.float32(-86), np.float32(0))], np.float32)
    >>> print(np.exp(x) <= CUT[np.float32])
    [ True False]
"""

from __future__ import annotations

import decimal
from typing import Dict

import numpy as np
import torch
from torch import Tensor

__all__ = ["FLOOR", "CUT", "exp_floored", "exp_floored_"]

#: The largest argument of each dtype (``numpy.float32``, ``numpy.float64``) whose
#: slope is taken as 0 (those under it too).
FLOOR: Dict[type, float] = {np.float32: np.float32(-86.0), np.float64: np.float64(-707.0)}


def _cut(dtype) -> float:
    """The midpoint of :math:`e^{FLOOR}` and the exponential of the next argument up,
    in 40-digit arithmetic, rounded to ``dtype``."""
    floor = FLOOR[dtype]
    above = np.nextafter(floor, dtype(0))
    with decimal.localcontext() as context:
        context.prec = 40
        middle = (decimal.Decimal(float(floor)).exp() + decimal.Decimal(float(above)).exp()) / 2
    return dtype(float(middle))


#: Between the exponentials of :data:`FLOOR` and of the next argument up: results at or
#: under it are those of arguments at or under :data:`FLOOR`.
CUT: Dict[type, float] = {dtype: _cut(dtype) for dtype in FLOOR}

# (FLOOR, CUT) by torch dtype, as Python numbers (what torch.compile traces best)
_BOUNDS = {
    torch.float32: (float(FLOOR[np.float32]), float(CUT[np.float32])),
    torch.float64: (float(FLOOR[np.float64]), float(CUT[np.float64])),
}


def exp_floored_(x: Tensor) -> Tensor:
    """:math:`e^x` in place, 0 at and under :data:`FLOOR` (float32 and float64; other
    dtypes: PyTorch's ``exp`` as it is): the argument clamped to :data:`FLOOR`, so that
    PyTorch's ``exp`` keeps its fast path, and the results at or under :data:`CUT`
    (those of the clamped arguments) zeroed. A nan stays nan.

    Example:
        >>> exp_floored_(torch.tensor([0.0, -1.0, -85.0, -86.0, -1e6, float("nan")]))
        tensor([1.0000e+00, 3.6788e-01, 1.2161e-37, 0.0000e+00, 0.0000e+00,        nan])
    """
    bounds = _BOUNDS.get(x.dtype)
    if bounds is None:
        return x.exp_()
    return torch.threshold_(x.clamp_(min=bounds[0]).exp_(), bounds[1], 0.0)


def exp_floored(x: Tensor) -> Tensor:
    """:func:`exp_floored_` out of place: the same values, and autograd can
    differentiate it (a second derivative through the spikes).

    Example:
        >>> x = torch.tensor([-1.0, -86.0], requires_grad=True)
        >>> y = exp_floored(x)
        >>> y.sum().backward()
        >>> y.detach(), x.grad
        (tensor([0.3679, 0.0000]), tensor([0.3679, 0.0000]))
    """
    bounds = _BOUNDS.get(x.dtype)
    if bounds is None:
        return torch.exp(x)
    return torch.threshold(torch.exp(torch.clamp(x, min=bounds[0])), bounds[1], 0.0)
