"""Rounding with straight-through gradients.

Rounding has a zero gradient almost everywhere, which would stop training. The
straight-through estimator (STE; Bengio, Léonard and Courville 2013, "Estimating or
Propagating Gradients Through Stochastic Neurons") treats rounding as the identity in
the backward pass: :math:`\\partial\\, \\mathrm{round}(x) / \\partial x := 1`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from aquatic.functional.qparam_checks import check_float_input

__all__ = ["ROUNDING_MODES", "round_ste", "sign_ste", "check_rounding", "straight_through"]

#: Rounding modes understood by every quantizer.
ROUNDING_MODES = ("nearest", "floor", "stochastic")


def check_rounding(rounding: str) -> str:
    """Return ``rounding`` if it is a known mode, else raise a ``ValueError``."""
    if rounding not in ROUNDING_MODES:
        raise ValueError(
            f"unknown rounding mode {rounding!r}; use one of {', '.join(map(repr, ROUNDING_MODES))}"
        )
    return rounding


def straight_through(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass.

    Written as ``value.detach() + (surrogate - surrogate.detach())`` so that the result
    equals ``value`` exactly: ``surrogate + (value - surrogate).detach()`` can be off by
    one ulp, which would move a quantized value off its grid.

    Example:
        >>> x = torch.tensor([0.2, 0.7], requires_grad=True)
        >>> y = straight_through(torch.ones(2), 3 * x)
        >>> y.detach()
        tensor([1., 1.])
        >>> y.sum().backward(); x.grad
        tensor([3., 3.])
    """
    return value.detach() + (surrogate - surrogate.detach())


def round_values(
    input: Tensor, rounding: str = "nearest", generator: Optional[torch.Generator] = None
) -> Tensor:
    """Round without any gradient rule (the forward half of :func:`round_ste`)."""
    if rounding == "nearest":
        # torch.round rounds half to even, as torch's fake-quantize kernels do.
        return torch.round(input)
    if rounding == "floor":
        return torch.floor(input)
    if rounding == "stochastic":
        # floor(x + u), u ~ U[0, 1): rounds up with probability frac(x), so E[.] = x.
        noise = torch.rand(input.shape, generator=generator, device=input.device, dtype=input.dtype)
        return torch.floor(input + noise)
    check_rounding(rounding)
    raise AssertionError("unreachable")


def round_ste(
    input: Tensor, rounding: str = "nearest", generator: Optional[torch.Generator] = None
) -> Tensor:
    """Round ``input`` to integers, passing the gradient straight through.

    Args:
        input: a floating-point tensor.
        rounding: ``"nearest"`` (half to even, as :func:`torch.round`), ``"floor"`` or
            ``"stochastic"`` (up with probability equal to the fractional part, so the
            expected value equals ``input``).
        generator: random number generator for stochastic rounding, for reproducible
            draws; the global generator when ``None``.

    Returns:
        A tensor of the same shape and dtype holding integral values; its gradient with
        respect to ``input`` is the identity.

    Raises:
        TypeError: if ``input`` is not a floating-point tensor.
        ValueError: for an unknown rounding mode.

    Example:
        >>> x = torch.tensor([0.5, 1.5, -0.7], requires_grad=True)
        >>> y = round_ste(x)
        >>> y
        tensor([ 0.,  2., -1.], grad_fn=<AddBackward0>)
        >>> y.sum().backward(); x.grad
        tensor([1., 1., 1.])
    """
    if not (isinstance(input, Tensor) and input.is_floating_point()):
        check_float_input(input)
    check_rounding(rounding)
    # Plain tensor ops keep torch.compile graphs free of custom autograd functions.
    return straight_through(round_values(input, rounding, generator), input)


def sign_ste(input: Tensor, clip: Optional[float] = 1.0) -> Tensor:
    """Binarize to ``{-1, +1}`` (zero maps to ``+1``) with a straight-through gradient.

    The gradient is the "hard tanh" STE of Hubara et al. 2016 ("Binarized Neural
    Networks"): it passes where ``|input| <= clip`` and is zero elsewhere; ``clip=None``
    passes it everywhere.

    Example:
        >>> x = torch.tensor([-0.3, 0.0, 2.0], requires_grad=True)
        >>> y = sign_ste(x)
        >>> y.detach()
        tensor([-1.,  1.,  1.])
        >>> y.sum().backward(); x.grad
        tensor([1., 1., 0.])
    """
    values = torch.where(input >= 0, 1.0, -1.0).to(input.dtype)
    passthrough = input if clip is None else torch.clamp(input, -clip, clip)
    return straight_through(values, passthrough)
