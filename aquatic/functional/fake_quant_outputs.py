"""Where a compiled fake-quantization loop writes, and how its result gets its gradient.

A loop (:mod:`aquatic.functional.fake_quant_jit`) writes values, and where codes may
clip the gradient's mask, into tensors made before it runs; autograd must see the
result as a function of the input with the straight-through gradient. :func:`prepare`
makes them, :func:`finish` returns the result:

- no gradient needed: the values' tensor itself;
- the identity gradient (no code can clip): ``input.clone()``, a C++ autograd node
  whose values the loop overwrites; from ``clone_limit`` elements, where the copy costs
  more than a Python call, an autograd.Function;
- the masked gradient: ``input * mask``, whose mask the product saves by reference and
  the loop then writes, as it does the values; from ``clone_limit`` elements
  an autograd.Function that saves the mask.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["Written", "prepare", "finish"]


class _Identity(torch.autograd.Function):
    """``out``, written by a loop from ``input``, with the identity gradient."""

    @staticmethod
    def forward(ctx, input: Tensor, out: Tensor) -> Tensor:
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _Masked(torch.autograd.Function):
    """``out``, written by a loop from ``input``, with the gradient times ``mask``."""

    @staticmethod
    def forward(ctx, input: Tensor, out: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


class Written(NamedTuple):
    """What the loop writes: ``out`` (the values) and ``mask`` (the gradient's mask, or
    ``None``); ``result``: the tensor to return once they are written, or ``None``
    where :func:`finish` wraps them in an autograd.Function."""

    out: Tensor
    mask: Optional[Tensor]
    result: Optional[Tensor]


def prepare(input: Tensor, clips: bool, clone_limit: int) -> Written:
    """The tensors a loop writes for ``input``: a mask where codes may clip
    (``clips``) and a gradient is needed; see the module docstring.

    Shape:
        - input: any shape; ``out`` and ``mask``: the same shape and strides.

    The loop writes by address, not through PyTorch operations: an in-place operation
    on the mask would bump the version of the tensor the product saved, and backward
    would refuse it.

    Example:
        >>> x = torch.ones(3, requires_grad=True)
        >>> written = prepare(x, clips=True, clone_limit=1 << 19)
        >>> written.out.numpy()[:] = [1.0, 2.0, 3.0]  # as a loop writes
        >>> written.mask.numpy()[:] = [1.0, 0.0, 1.0]
        >>> y = finish(x, written); y.sum().backward(); y.detach(), x.grad
        (tensor([1., 2., 3.]), tensor([1., 0., 1.]))
    """
    source = input.detach()
    if not (input.requires_grad and torch.is_grad_enabled()):
        out = torch.empty_like(source)
        return Written(out, None, out)
    small = input.numel() < clone_limit
    if not clips:
        if small:
            result = input.clone()
            return Written(result.detach(), None, result)
        return Written(torch.empty_like(source), None, None)
    if small:
        # Zeros, not torch.empty: leftover bits (integer indices, say) are subnormal
        # floats, which slow the product down many times over.
        mask = torch.zeros_like(source)
        result = input * mask
        return Written(result.detach(), mask, result)
    return Written(torch.empty_like(source), torch.empty_like(source), None)


def finish(input: Tensor, written: Written) -> Tensor:
    """The result of ``input``'s fake quantization once the loop has written
    ``written`` (from :func:`prepare`)."""
    if written.result is not None:
        return written.result
    if written.mask is not None:
        return _Masked.apply(input, written.out, written.mask)
    return _Identity.apply(input, written.out)
