"""Spike functions with surrogate gradients.

A spiking neuron emits :math:`s = H(v - \\vartheta)`, whose derivative is zero almost
everywhere. Surrogate-gradient training (Neftci, Mostafa and Zenke 2019, "Surrogate
Gradient Learning in Spiking Neural Networks") keeps the step in the forward pass and
uses a smooth pseudo-derivative :math:`\\psi(u)`, :math:`u = v - \\vartheta`, in the
backward pass.

Each surrogate here is a small stateless class holding its width. All of them peak at
``scale`` (default 1) at :math:`u = 0`:

=======================  ===============================================================
class                    :math:`\\psi(u)`
=======================  ===============================================================
``SingleExponential``    :math:`c\\, e^{-|u|/w}` (Shrestha and Orchard 2018, SLAYER)
``FastSigmoid``          :math:`c\\, (1 + k|u|)^{-2}` (Zenke and Ganguli 2018, SuperSpike)
``ArcTan``               :math:`c\\, (1 + (u/w)^2)^{-1}` (Fang et al. 2021)
``Triangle``             :math:`c\\, \\max(0, 1 - |u|/w)` (Bellec et al. 2018)
=======================  ===============================================================

``ArcTan(width=1/pi)`` equals snnTorch's default ``atan(alpha=2)``; ``FastSigmoid(slope=25)``
equals snnTorch's ``fast_sigmoid()``; sinabs' ``SingleExponential(grad_width=w,
grad_scale=g)`` is ``SingleExponential(width=w, scale=g / w)`` here.

The spike itself (:func:`spike`) is :math:`H(v - \\vartheta)` with :math:`H(0) = 1`
(a neuron exactly at threshold fires), or with ``max_spikes > 1`` the spike count
:math:`\\min(\\max(\\lfloor v / \\vartheta \\rfloor, 0), s_{max})`. Both use
:math:`\\partial s/\\partial v = \\psi(v - \\vartheta) = -\\partial s/\\partial \\vartheta`.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from aquatic.functional.exp_floor import exp_floored, exp_floored_

__all__ = [
    "Surrogate",
    "SingleExponential",
    "FastSigmoid",
    "ArcTan",
    "Triangle",
    "spike",
    "spike_values",
    "check_surrogate",
]


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def _scaled_(values: Tensor, scale: float) -> Tensor:
    """``values * scale`` in place; nothing to do for the default scale 1 (exactly)."""
    return values if scale == 1 else values.mul_(scale)


class Surrogate:
    """Base class of surrogate gradients: subclasses define :meth:`derivative`.

    Instances are stateless (they only hold their width and scale), so one instance may
    be passed to many layers.
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = _positive("scale", scale)

    def derivative(self, u: Tensor) -> Tensor:
        """The pseudo-derivative :math:`\\psi(u)` of the spike at ``u = v - threshold``."""
        raise NotImplementedError

    def derivative_(self, u: Tensor) -> Tensor:
        """:meth:`derivative`, allowed to overwrite ``u`` (saves memory in backward passes).

        Subclasses may override it with in-place operations; the values must be
        exactly those of :meth:`derivative`.
        """
        return self.derivative(u)

    def primitive(self, u: Tensor) -> Tensor:
        """A smooth function whose derivative is :meth:`derivative` (up to a constant)."""
        raise NotImplementedError

    def __call__(self, u: Tensor) -> Tensor:
        return self.derivative(u)

    def kernel_form(self) -> Optional[Tuple[str, float, float]]:
        """``(kind, parameter, scale)`` of a built-in surrogate, which the compiled
        backward pass of the fused sequence computes itself; ``None`` for any other
        (a subclass too: it may define its own :meth:`derivative`), whose slope the
        PyTorch backward computes by calling :meth:`derivative_`.

        Example:
            >>> ArcTan(width=0.5).kernel_form()
            ('arctan', 0.5, 1.0)
        """
        form = _KERNEL_FORMS.get(type(self))
        return None if form is None else (form[0], getattr(self, form[1]), self.scale)

    def _args(self) -> Tuple[Tuple[str, float], ...]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value:g}" for name, value in self._args())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._args() == other._args()

    def __hash__(self) -> int:
        return hash((type(self), self._args()))


class SingleExponential(Surrogate):
    """:math:`\\psi(u) = c\\, e^{-|u|/w}`, and 0 where :math:`|u| \\ge 86\\, w` (float32;
    :math:`707\\, w` in float64), where :math:`e^{-|u|/w}` nears the subnormal range:
    the rule of :mod:`aquatic.functional.exp_floor`, under which PyTorch's ``exp``
    keeps its fast path.

    Args:
        width: decay length :math:`w` of the exponential, in units of membrane potential.
        scale: peak value :math:`c` at the threshold.

    Example:
        >>> SingleExponential(width=0.5).derivative(torch.tensor([0.0, 0.5, -1.0]))
        tensor([1.0000, 0.3679, 0.1353])
    """

    def __init__(self, width: float = 0.5, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.width = _positive("width", width)

    def derivative(self, u: Tensor) -> Tensor:
        return exp_floored(u.abs() / -self.width) * self.scale

    def derivative_(self, u: Tensor) -> Tensor:
        return _scaled_(exp_floored_(u.abs_().div_(-self.width)), self.scale)

    def primitive(self, u: Tensor) -> Tensor:
        # c w (1 + sign(u) (1 - e^{-|u|/w})): 0 at -inf, c w at 0, 2 c w at +inf.
        tail = 1 - torch.exp(u.abs() / -self.width)
        return self.scale * self.width * (1 + torch.sign(u) * tail)

    def _args(self):
        return (("width", self.width), ("scale", self.scale))


class FastSigmoid(Surrogate):
    """:math:`\\psi(u) = c\\, (1 + k|u|)^{-2}`, the derivative of :math:`u / (1 + k|u|)`.

    Args:
        slope: steepness :math:`k` (the inverse of a width).
        scale: peak value :math:`c` at the threshold.

    Example:
        >>> FastSigmoid(slope=25.0).derivative(torch.tensor([0.0, 0.04]))
        tensor([1.0000, 0.2500])
    """

    def __init__(self, slope: float = 25.0, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.slope = _positive("slope", slope)

    def derivative(self, u: Tensor) -> Tensor:
        denominator = u.abs() * self.slope + 1
        return torch.reciprocal(denominator * denominator) * self.scale

    def derivative_(self, u: Tensor) -> Tensor:
        denominator = u.abs_().mul_(self.slope).add_(1)
        return _scaled_(denominator.mul_(denominator).reciprocal_(), self.scale)

    def primitive(self, u: Tensor) -> Tensor:
        return self.scale * u / (1 + self.slope * u.abs())

    def _args(self):
        return (("slope", self.slope), ("scale", self.scale))


class ArcTan(Surrogate):
    """:math:`\\psi(u) = c\\, (1 + (u/w)^2)^{-1}`, the derivative of :math:`c w \\arctan(u/w)`.

    Args:
        width: half width at half maximum :math:`w`; ``1/pi`` equals snnTorch's
            default ``atan(alpha=2)``.
        scale: peak value :math:`c` at the threshold.

    Example:
        >>> ArcTan(width=0.5).derivative(torch.tensor([0.0, 0.5, 1.0]))
        tensor([1.0000, 0.5000, 0.2000])
    """

    def __init__(self, width: float = 1 / math.pi, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.width = _positive("width", width)

    def derivative(self, u: Tensor) -> Tensor:
        ratio = u / self.width
        return torch.reciprocal(ratio * ratio + 1) * self.scale

    def derivative_(self, u: Tensor) -> Tensor:
        ratio = u.div_(self.width)
        return _scaled_(ratio.mul_(ratio).add_(1).reciprocal_(), self.scale)

    def primitive(self, u: Tensor) -> Tensor:
        return self.scale * self.width * torch.atan(u / self.width)

    def _args(self):
        return (("width", self.width), ("scale", self.scale))


class Triangle(Surrogate):
    """:math:`\\psi(u) = c\\, \\max(0, 1 - |u|/w)`, piecewise linear.

    Args:
        width: half width :math:`w` of the support (zero gradient for :math:`|u| \\ge w`).
        scale: peak value :math:`c` at the threshold (Bellec et al. use 0.3).

    Example:
        >>> Triangle(width=1.0).derivative(torch.tensor([0.0, 0.25, -2.0]))
        tensor([1.0000, 0.7500, 0.0000])
    """

    def __init__(self, width: float = 1.0, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.width = _positive("width", width)

    def derivative(self, u: Tensor) -> Tensor:
        return torch.clamp(1 - u.abs() / self.width, min=0) * self.scale

    def derivative_(self, u: Tensor) -> Tensor:
        return _scaled_(u.abs_().div_(self.width).neg_().add_(1).clamp_(min=0), self.scale)

    def primitive(self, u: Tensor) -> Tensor:
        inside = u.clamp(-self.width, self.width)
        return self.scale * (inside - inside * inside.abs() / (2 * self.width))

    def _args(self):
        return (("width", self.width), ("scale", self.scale))


#: The built-in surrogates' kinds and parameters for :meth:`Surrogate.kernel_form`.
_KERNEL_FORMS = {
    SingleExponential: ("exp", "width"),
    FastSigmoid: ("fast_sigmoid", "slope"),
    ArcTan: ("arctan", "width"),
    Triangle: ("triangle", "width"),
}


def check_surrogate(surrogate: Optional[Surrogate]) -> Surrogate:
    """Return ``surrogate``, ``SingleExponential()`` for ``None``, or raise a ``TypeError``."""
    if surrogate is None:
        return SingleExponential()
    if isinstance(surrogate, type) and issubclass(surrogate, Surrogate):
        raise TypeError(
            f"surrogate must be an instance, got the class {surrogate.__name__}; "
            f"write surrogate={surrogate.__name__}()"
        )
    if not callable(getattr(surrogate, "derivative", None)):
        raise TypeError(
            "surrogate must have a derivative(u) method, e.g. aquatic.nn.FastSigmoid(), "
            f"got {surrogate!r}"
        )
    return surrogate


#: Half the machine epsilon, and a little more for the rounding of the bound itself.
_SLACK = 0.5 * (1 + 2.0**-16)


def spike_values(v: Tensor, threshold: Tensor, max_spikes: int = 1) -> Tensor:
    """The spike count of membrane ``v`` (no gradient rule): the forward half of :func:`spike`.

    With ``max_spikes > 1`` the count of values on one grid, :math:`v = a s` and
    :math:`\\vartheta = b s`, is the integer division :math:`\\lfloor a/b \\rfloor`
    (capped to ``[0, max_spikes]``), as integer chips count. The float values are
    :math:`fl(a s)` and :math:`fl(b s)`, rounded unless :math:`s` is a power of two, so
    :math:`n` spikes are counted when :math:`n \\vartheta - v` is at most a bound of
    the rounding that :math:`a = n b` allows,
    :math:`(|v| + n \\vartheta)\\, \\epsilon / 2` with the machine epsilon of ``v``'s
    dtype (nothing for :math:`n \\le 1`: one spike is :math:`v \\ge \\vartheta`, as with
    ``max_spikes=1``). With ``p`` the significand bits of that dtype (24 for float32),
    this is :math:`\\lfloor a/b \\rfloor` exactly for
    :math:`|a| < 2^{p-2}` on any grid and :math:`|a| < 2^{p-1}` on a power-of-two grid;
    above, the float values cannot tell neighbouring grid values apart on every grid,
    and the rule is the definition (for counts below :math:`2^{22}`). The rule is
    computed in ``v``'s dtype and is invariant under power-of-two scaling; the integer
    twin evaluates it on its exact values (:class:`aquatic.integer.IntegerNeuron`), so
    the two agree over the whole range.

    Example:
        >>> spike_values(torch.tensor([0.5, 1.0, 3.7, -2.0]), torch.tensor(1.0), max_spikes=3)
        tensor([0., 1., 3., 0.])
    """
    if max_spikes == 1:
        return torch.ge(v, threshold).to(v.dtype)
    # fmod is exact: v = q threshold + r with q = trunc(v / threshold), so the count of
    # the stored values is q = (v - r) / threshold, an integer that rounding recovers
    # below 2**22 (v / threshold itself rounds: 771 s / 257 s -> 2.9999998).
    remainder = torch.fmod(v, threshold)
    count = torch.round((v - remainder) / threshold)
    # Then the grid: a = n b, stored as fl(a s), can lie a rounding below n fl(b s), by
    # at most (ulp(v) + n ulp(threshold)) / 2 <= (|v| + n threshold) eps / 2; the gap
    # threshold - r is exact where it is that small (Sterbenz).
    following = count + 1
    slack = (v.abs() + following * threshold) * (torch.finfo(v.dtype).eps * _SLACK)
    count = count + ((threshold - remainder <= slack) & (following >= 2)).to(v.dtype)
    return torch.clamp(count, 0, max_spikes)


def _reduce(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a broadcast gradient back to the shape (and dtype) of ``like``."""
    return grad.sum_to_size(like.shape).to(like.dtype)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, threshold, surrogate, max_spikes):
        ctx.save_for_backward(v, threshold)
        ctx.surrogate = surrogate
        return spike_values(v, threshold.to(v.dtype), max_spikes)

    @staticmethod
    def backward(ctx, grad):
        v, threshold = ctx.saved_tensors
        u = v - threshold.to(v.dtype)
        # With create_graph (a gradient penalty, meta-learning) the slope is part of a
        # graph: its out-of-place form, which autograd differentiates.
        surrogate = ctx.surrogate
        grad_u = grad * (
            surrogate.derivative(u) if torch.is_grad_enabled() else surrogate.derivative_(u)
        )
        grad_threshold = None
        if ctx.needs_input_grad[1]:
            grad_threshold = _reduce(-grad_u, threshold)
        return grad_u, grad_threshold, None, None


def spike(
    v: Tensor,
    threshold: Union[float, Tensor] = 1.0,
    surrogate: Optional[Surrogate] = None,
    max_spikes: int = 1,
) -> Tensor:
    """Spikes of membrane ``v`` with a surrogate gradient.

    Args:
        v: membrane potential.
        threshold: firing threshold, a number or a tensor that broadcasts to ``v``.
        surrogate: the pseudo-derivative (default :class:`SingleExponential`).
        max_spikes: 1 for binary spikes :math:`H(v - \\vartheta)`; more for the count
            :math:`\\lfloor v/\\vartheta \\rfloor` clipped to ``[0, max_spikes]``.

    Returns:
        Spikes in ``v``'s dtype; gradient :math:`\\psi(v - \\vartheta)` to ``v`` and its
        negative to ``threshold``.

    Example:
        >>> v = torch.tensor([0.5, 1.0], requires_grad=True)
        >>> s = spike(v, 1.0, FastSigmoid(slope=2.0))
        >>> s
        tensor([0., 1.], grad_fn=<_SpikeBackward>)
        >>> s.sum().backward(); v.grad
        tensor([0.2500, 1.0000])
    """
    surrogate = check_surrogate(surrogate)
    if not isinstance(threshold, Tensor):
        threshold = torch.tensor(float(threshold), dtype=v.dtype, device=v.device)
    return _Spike.apply(v, threshold, surrogate, max_spikes)
