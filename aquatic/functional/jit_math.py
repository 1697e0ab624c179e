r"""Elementary functions for the compiled loops, written so that a loop calling them
vectorizes.

Numba compiles ``math.exp`` and ``np.exp`` to a call of the C library's ``exp`` per
element (LLVM has no vector version of it without Intel's SVML, which the published
``llvmlite`` builds do not include), which costs more than the rest of the backward
loop: measured on 3.3 million float32 elements on one thread, 7.6 ms against 1.45 ms
for :func:`exp_nonpositive`, and 2.7 ms for PyTorch's ``torch.exp(x.abs() / -w)``.

:func:`exp_nonpositive` follows the classic scheme (W. J. Cody and W. Waite, *Software
Manual for the Elementary Functions*, 1980, ch. 6): with :math:`n =
\lfloor x \log_2 e + 1/2 \rceil`, :math:`r = x - n \ln 2` lies in :math:`[-\ln 2/2, \ln
2/2]`, computed in two parts (:math:`\ln 2 = c_{hi} + c_{lo}` with few bits in
:math:`c_{hi}`, so that :math:`n c_{hi}` is exact), and :math:`e^x = 2^n e^r`, where
:math:`e^r` is the Taylor polynomial of degree 7 (float32) or 13 (float64), whose
remainder :math:`|r|^{d+1}/(d+1)!` is below half a unit in the last place, evaluated by
Horner's rule with fused multiply-adds, and :math:`2^n` is built from its exponent
bits. Measured against float64 ``numpy.exp`` over 3.3 million float32 arguments: at
most 7.7e-8 relative error (PyTorch's ``exp``: 6.1e-8), under one unit in the last
place.
"""

from __future__ import annotations

import decimal
import math

import numpy as np

from aquatic.functional.exp_floor import FLOOR
from aquatic.functional.neurons_jit_options import numba

__all__ = ["exp_nonpositive", "fma"]


def exp_nonpositive(x):
    """:math:`e^x` for :math:`x \\le 0` in the compiled loops (float32 or float64, the
    type of ``x``), vectorizable: 0 at and under
    :data:`~aquatic.functional.exp_floor.FLOOR` (-86 in float32, where the result
    would be under :math:`4.5 \\cdot 10^{-38}`; the PyTorch loops' rule), nan for nan
    and for :math:`x > 0`, outside its domain.

    Only compiled code calls it (LLVM inlines its implementation into the loop).

    Example:
        >>> import numba
        >>> @numba.njit
        ... def slopes(d, out):
        ...     for k in range(d.size):
        ...         out[k] = exp_nonpositive(-abs(d[k]))
        >>> d = np.array([0.0, 1.0, -2.0, np.nan], np.float32)
        >>> out = np.empty_like(d)
        >>> slopes(d, out)
        >>> out
        array([1.        , 0.36787945, 0.13533528,        nan], dtype=float32)
    """
    raise TypeError("exp_nonpositive runs in compiled loops only; use torch.exp")


def _constants(dtype, degree: int, low: float):
    """The constants of :func:`exp_nonpositive` in ``dtype``: :math:`\\log_2 e`, the
    two parts of :math:`\\ln 2` (Cody and Waite's 355/512 and the rest), the floor
    (``low``), 1/2 and the Taylor coefficients :math:`1/k!`,
    highest first."""
    high_part = 355 / 512 if dtype == np.float32 else 6.93147180369123816490e-01
    # the rest of ln 2 from 40 digits of it: math.log(2) - high_part would carry the
    # rounding error of math.log(2), which n (up to 1022) multiplies
    with decimal.localcontext() as context:
        context.prec = 40
        rest = float(decimal.Decimal(2).ln() - decimal.Decimal(high_part))
    return (
        dtype(1 / math.log(2)),
        dtype(high_part),
        dtype(rest),
        dtype(low),
        dtype(0.5),
        tuple(dtype(1 / math.factorial(k)) for k in range(degree, -1, -1)),
    )


if numba is not None:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload

    @intrinsic
    def _pow2(typingctx, n):
        """:math:`2^n` for an ``int32`` (float32 result) or ``int64`` (float64) ``n`` in
        the range of normal numbers: ``n`` plus the exponent's bias, shifted into the
        exponent's bits."""
        if n == types.int32:
            result, bias, shift = types.float32, 127, 23
        elif n == types.int64:
            result, bias, shift = types.float64, 1023, 52
        else:
            return None

        def codegen(context, builder, signature, args):
            bits = ir.IntType(n.bitwidth)
            word = builder.shl(builder.add(args[0], bits(bias)), bits(shift))
            return builder.bitcast(word, context.get_value_type(result))

        return result(n), codegen

    @intrinsic
    def fma(typingctx, a, b, c):
        """:math:`a b + c` rounded once (LLVM's ``fma``), for three floats of one type;
        compiled code only.

        Example:
            >>> @numba.njit
            ... def residual(a, b, c):
            ...     return fma(a, b, c)
            >>> residual(0.1, 10.0, -1.0), 0.1 * 10.0 - 1.0  # the product's rounding error
            (5.551115123125783e-17, 0.0)
        """
        if not (isinstance(a, types.Float) and a == b == c):
            return None

        def codegen(context, builder, signature, args):
            return builder.fma(*args)

        return a(a, b, c), codegen

    _OPTIONS = dict(nogil=True, boundscheck=False, error_model="numpy")
    _inline = numba.njit(inline="always", **_OPTIONS)

    @_inline
    def _horner7(r, c):
        """The polynomial with the coefficients ``c[0:8]`` (highest first) at ``r``."""
        p = fma(c[0], r, c[1])
        p = fma(p, r, c[2])
        p = fma(p, r, c[3])
        p = fma(p, r, c[4])
        p = fma(p, r, c[5])
        p = fma(p, r, c[6])
        return fma(p, r, c[7])

    @_inline
    def _horner13(r, c):
        """The polynomial with the coefficients ``c[0:14]`` (highest first) at ``r``."""
        p = fma(_horner7(r, c), r, c[8])
        p = fma(p, r, c[9])
        p = fma(p, r, c[10])
        p = fma(p, r, c[11])
        p = fma(p, r, c[12])
        return fma(p, r, c[13])

    def _implementation(dtype, integer, horner, degree: int, low: float):
        log2e, ln2_high, ln2_low, floor, half, taylor = _constants(dtype, degree, low)
        zero, nan = dtype(0), dtype(np.nan)

        def exp_(x):
            y = x if x > floor else floor  # also for nan: the result is chosen below
            y = y if y < zero else zero
            n = np.floor(y * log2e + half)
            r = fma(n, -ln2_high, y)
            r = fma(n, -ln2_low, r)
            e = horner(r, taylor) * _pow2(integer(n))
            if x > floor and x <= zero:
                return e
            return zero if x <= floor else nan

        return exp_

    # 0 at and under the floors of exp_floor (results about four times the smallest
    # normal number). float32: degree 7, 0.347**8 / 8! < 6e-9; float64: degree 13,
    # 0.347**14 / 14! < 5e-18.
    _FLOAT32 = _implementation(np.float32, np.int32, _horner7, 7, FLOOR[np.float32])
    _FLOAT64 = _implementation(np.float64, np.int64, _horner13, 13, FLOOR[np.float64])

    @overload(exp_nonpositive, jit_options=_OPTIONS)
    def _exp_nonpositive(x):
        if x == types.float32:
            return _FLOAT32
        if x == types.float64:
            return _FLOAT64
        return None

else:  # pragma: no cover - the compiled loops need Numba
    fma = None
