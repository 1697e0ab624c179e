"""The surrogate slopes of the compiled LIF backward loop
(:mod:`aquatic.functional.neurons_jit_backward_kernels`), for the surrogates whose
formula it knows (:meth:`~aquatic.functional.surrogate.Surrogate.kernel_form`), as
inlined per-element functions: the plainest loop calls one of them, the others fill a
row of slopes with :func:`slopes_into`.

Each is the surrogate's ``derivative`` (:mod:`aquatic.functional.surrogate`) rewritten
with at most one division; the results agree with it to rounding (``SingleExponential``'s
exponential is :func:`~aquatic.functional.jit_math.exp_nonpositive`, under one unit in
the last place from the exact value).
"""

from __future__ import annotations

from aquatic.functional.jit_math import exp_nonpositive
from aquatic.functional.neurons_jit_backward import SAVED_CODE, SAVED_HERE_CODE, SURROGATE_CODES
from aquatic.functional.neurons_jit_options import inline, jit, numba

__all__ = [
    "GIVEN", "FAST_SIGMOID", "ARCTAN", "TRIANGLE", "EXP", "SAVED", "SAVED_HERE", "fast_sigmoid",
    "arctan",
    "triangle", "single_exponential", "slope", "constants", "slopes_row", "slopes_into",
]  # fmt: skip

#: The surrogates' codes in the flags (``SURROGATE_CODES`` of
#: :mod:`aquatic.functional.neurons_jit_backward`); ``GIVEN``: the slopes come computed
#: in ``slopes``.
GIVEN, FAST_SIGMOID, ARCTAN, TRIANGLE, EXP = (
    SURROGATE_CODES[kind] for kind in ("given", "fast_sigmoid", "arctan", "triangle", "exp")
)
#: Not surrogates: the backward loop's codes for "the array of membranes holds the slopes
#: themselves", which the forward loop wrote in their place
#: (:func:`~aquatic.functional.neurons_jit_backward.kept_slopes`), and for "so does the
#: gradient's array, which is the same array".
SAVED, SAVED_HERE = SAVED_CODE, SAVED_HERE_CODE

if numba is not None:

    # The surrogates' slopes at d = v - threshold, in the forms of ``Surrogate.kernel_form``
    # with constants that :func:`constants` works out once: one division at most (the
    # longest operation of the loop), and none by a constant.

    @inline
    def fast_sigmoid(d, c1, c2, one, zero):
        """FastSigmoid: :math:`s / (1 + k|d|)^2`, ``c1`` :math:`= s`, ``c2`` :math:`= k`."""
        q = abs(d) * c2 + one
        return c1 / (q * q)

    @inline
    def arctan(d, c1, c2, one, zero):
        """ArcTan: :math:`s / (1 + (d/w)^2) = s w^2 / (d^2 + w^2)`, ``c1`` :math:`= s w^2`,
        ``c2`` :math:`= w^2`."""
        return c1 / (d * d + c2)

    @inline
    def triangle(d, c1, c2, one, zero):
        """Triangle: :math:`s \\max(0, 1 - |d|/w)`, ``c1`` :math:`= s`, ``c2`` :math:`= 1/w`."""
        y = one - abs(d) * c2
        return (zero if y < zero else y) * c1

    @inline
    def single_exponential(d, c1, c2, one, zero):
        """SingleExponential: :math:`s\\, e^{-|d|/w}`, ``c1`` :math:`= s`, ``c2``
        :math:`= -1/w`."""
        return exp_nonpositive(abs(d) * c2) * c1

    @inline
    def slope(kind, d, c1, c2, one, zero):
        """The slope of surrogate ``kind`` (not ``GIVEN``) at ``d``."""
        if kind == ARCTAN:
            return arctan(d, c1, c2, one, zero)
        if kind == FAST_SIGMOID:
            return fast_sigmoid(d, c1, c2, one, zero)
        if kind == TRIANGLE:
            return triangle(d, c1, c2, one, zero)
        return single_exponential(d, c1, c2, one, zero)

    @inline
    def constants(kind, width, scale, one):
        """``(c1, c2)`` of the slopes of surrogate ``kind`` with the parameter ``width``
        (FastSigmoid's slope) and ``scale``."""
        if kind == ARCTAN:
            return scale * (width * width), width * width
        if kind == TRIANGLE:
            return scale, one / width
        if kind == EXP:
            return scale, -one / width
        return scale, width

    @jit
    def slopes_row(kind, v, h, c1, c2, out, m, one, zero):
        """The slopes of surrogate ``kind`` (a literal: compiled once for each) at
        ``v[:m] - h[:m]`` into ``out[:m]``. A loop of its own: inside the backward loop's
        function, beside the other kinds' loops, the exponential's loop took about 5
        times as long (a checkpointed step of ``(64, 100, 512)``)."""
        numba.literally(kind)
        for k in range(m):
            out[k] = slope(kind, v[k] - h[k], c1, c2, one, zero)

    @inline
    def slopes_into(kind, v, h, c1, c2, out, m, one, zero):
        """The surrogate's slopes at ``v[:m] - h[:m]`` into ``out[:m]``
        (:func:`slopes_row` for ``kind``); for ``SAVED`` and ``SAVED_HERE``, ``v[:m]``
        holds them."""
        if kind == SAVED or kind == SAVED_HERE:
            out[:m] = v[:m]
        elif kind == FAST_SIGMOID:
            slopes_row(FAST_SIGMOID, v, h, c1, c2, out, m, one, zero)
        elif kind == ARCTAN:
            slopes_row(ARCTAN, v, h, c1, c2, out, m, one, zero)
        elif kind == EXP:
            slopes_row(EXP, v, h, c1, c2, out, m, one, zero)
        else:
            slopes_row(TRIANGLE, v, h, c1, c2, out, m, one, zero)

else:  # pragma: no cover
    fast_sigmoid = arctan = triangle = single_exponential = slope = constants = None
    slopes_row = slopes_into = None
