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
margin from both edges. The PyTorch loops clamp the argument to :data:`FLOOR` and then
zero the results at or under :data:`CUT`, a number between :math:`e^{FLOOR}` and the
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

__all__ = ["FLOOR", "CUT"]

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
