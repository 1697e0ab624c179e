"""Where a compiled fake-quantization loop writes, and how its result gets its gradient.

A loop (:mod:`aquatic.functional.fake_quant_jit`) writes values, and where codes may
clip the gradient's mask, into tensors made before it runs; autograd must see the
result as a function of the input with the straight-through gradient. :func:`prepare`
makes them, :func:`finish` returns the result:

- no gradient needed: the values' tensor itself;
- the identity gradient (no code can clip): ``input.clone()``, a C++ autograd node
  whose values the loop reads where they lie and overwrites (:attr:`Written.copy`);
  from ``clone_limit`` elements, where the copy costs more than a Python call, an
  autograd.Function;
- the masked gradient: ``input * mask``, whose mask the product saves by reference and
  the loop then writes, as it does the values; from ``product_limit`` elements
  an autograd.Function that saves the mask, one byte a value (``uint8``), a quarter of
  a float32 mask's memory and traffic, and multiplies the gradient by it with the
  ``product`` :func:`finish` is given (a compiled loop), else with PyTorch's mixed
  product, the same bits.

Mask kinds, as the loops take them: :data:`NO_MASK`, :data:`FLOAT_MASK` (float32 0.0
and 1.0) and :data:`BYTE_MASK` (``uint8`` 0 and 1); :func:`mask_kind` tells a mask's.

A layer whose forward has just made its output, which nothing else holds, may let the
loop write the fake-quantized values over it (:data:`OWNED`, for large tensors: the
values' array is the input's memory, and the autograd.Functions mark it dirty). That
spares a tensor's allocation and a pass of writes to fresh memory: on one thread,
802,816 values just written took 159 µs in place against 283 µs into a new tensor.
"""

from __future__ import annotations

import threading
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "NO_MASK", "FLOAT_MASK", "BYTE_MASK", "OWNED", "Written", "owns", "mask_kind", "prepare",
    "finish",
]  # fmt: skip

#: No mask: the identity gradient.
NO_MASK = 0
#: A float32 mask (0.0 and 1.0).
FLOAT_MASK = 1
#: A ``uint8`` mask (0 and 1).
BYTE_MASK = 2

Product = Callable[[Tensor, Tensor], Optional[Tensor]]

#: ``OWNED.tensor``: the tensor (this thread's) whose owner lets the loops write over it
#: (:meth:`aquatic.nn.QuantizedModule.quantize_own_output` sets it for the call of
#: its activation quantizer), else ``None``.
OWNED = threading.local()


def owns(input: Tensor) -> bool:
    """Whether ``input`` is the tensor in :data:`OWNED`.

    Example:
        >>> x = torch.ones(2)
        >>> OWNED.tensor = x
        >>> owns(x), owns(x.clone())
        (True, False)
        >>> OWNED.tensor = None
    """
    return getattr(OWNED, "tensor", None) is input


class _Identity(torch.autograd.Function):
    """``out``, written by a loop from ``input``, with the identity gradient."""

    @staticmethod
    def forward(ctx, input: Tensor, out: Tensor) -> Tensor:
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def _times_mask(ctx, grad: Tensor) -> Tensor:
    """The gradient times the mask that a masked function saved: by its ``product``
    where it is given and gives a result, and no graph of the gradient is asked for,
    else by PyTorch's product."""
    (mask,) = ctx.saved_tensors
    if ctx.product is not None and not torch.is_grad_enabled():
        result = ctx.product(grad, mask)
        if result is not None:
            return result
    return grad * mask


class _Masked(torch.autograd.Function):
    """``out``, written by a loop from ``input``, with the gradient times ``mask``:
    by ``product`` where it is given and gives a result, and no graph of the gradient
    is asked for (``create_graph``), else by PyTorch's product, which a second
    derivative can go through."""

    @staticmethod
    def forward(
        ctx, input: Tensor, out: Tensor, mask: Tensor, product: Optional[Product]
    ) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.product = product
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _times_mask(ctx, grad), None, None, None


class _IdentityHere(torch.autograd.Function):
    """``input``, whose values a loop has overwritten, with the identity gradient."""

    @staticmethod
    def forward(ctx, input: Tensor) -> Tensor:
        ctx.mark_dirty(input)
        return input

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad


class _MaskedHere(torch.autograd.Function):
    """``input``, whose values a loop has overwritten, with the gradient times ``mask``
    (as :class:`_Masked`)."""

    @staticmethod
    def forward(ctx, input: Tensor, mask: Tensor, product: Optional[Product]) -> Tensor:
        ctx.mark_dirty(input)
        ctx.save_for_backward(mask)
        ctx.product = product
        return input

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _times_mask(ctx, grad), None, None


class Written(NamedTuple):
    """What the loop writes, by address: ``out`` (the values; it may be ``result``
    itself, or the input, so it may need a gradient) and ``mask`` (the gradient's mask, or
    ``None``); ``result``: the tensor to return once they are written, or ``None``
    where :func:`finish` wraps them in an autograd.Function; ``here``: ``out`` is the
    input's own memory; ``copy``: ``out`` holds a copy of the input's values (a
    clone), which a loop may read there and overwrite in place."""

    out: Tensor
    mask: Optional[Tensor]
    result: Optional[Tensor]
    here: bool = False
    copy: bool = False


def prepare(
    input: Tensor, clips: bool, clone_limit: int, product_limit: int, in_place: bool = True
) -> Written:
    """The tensors a loop writes for ``input``: a mask where codes may clip
    (``clips``) and a gradient is needed; see the module docstring. ``in_place=False``:
    never the input's own memory, for a step that may write some values and then
    decline (the per-row step stops at the first row it refuses), whose fallback must
    find the input as it was.

    Shape:
        - input: any shape; ``out`` and ``mask``: the same shape and strides.

    The loop writes by address, not through PyTorch operations: an in-place operation
    on the mask would bump the version of the tensor the product saved, and backward
    would refuse it.

    Example:
        >>> x = torch.ones(3, requires_grad=True)
        >>> written = prepare(x, clips=True, clone_limit=1 << 19, product_limit=1 << 19)
        >>> written.out.detach().numpy()[:] = [1.0, 2.0, 3.0]  # as a loop writes
        >>> written.mask.numpy()[:] = [1.0, 0.0, 1.0]
        >>> y = finish(x, written); y.sum().backward(); y.detach(), x.grad
        (tensor([1., 2., 3.]), tensor([1., 0., 1.]))
    """
    # The loops take out and mask by address: no detach (a call each) is needed.
    size = input.numel()
    large = size >= product_limit  # where a Python autograd.Function pays
    here = in_place and large and owns(input)  # the values over the input (OWNED)
    if not (input.requires_grad and torch.is_grad_enabled()):
        if here:
            return Written(input, None, input, True)
        out = torch.empty_like(input)
        return Written(out, None, out)
    if not clips:
        if size < clone_limit and not here:
            result = input.clone()
            return Written(result, None, result, False, True)
        return Written(input if here else torch.empty_like(input), None, None, here)
    if not large:
        # Zeros, not torch.empty: leftover bits (integer indices, say) are subnormal
        # floats, which slow the product down many times over.
        mask = torch.zeros_like(input)
        result = input * mask
        return Written(result, mask, result)
    mask = torch.empty_like(input, dtype=torch.uint8)
    return Written(input if here else torch.empty_like(input), mask, None, here)


def mask_kind(mask: Optional[Tensor]) -> int:
    """How a loop writes ``mask``: :data:`NO_MASK`, :data:`FLOAT_MASK` or
    :data:`BYTE_MASK`.

    Example:
        >>> mask_kind(None), mask_kind(torch.ones(2)), mask_kind(torch.ones(2, dtype=torch.uint8))
        (0, 1, 2)
    """
    if mask is None:
        return NO_MASK
    return BYTE_MASK if mask.dtype == torch.uint8 else FLOAT_MASK


def finish(input: Tensor, written: Written, product: Optional[Product] = None) -> Tensor:
    """The result of ``input``'s fake quantization once the loop has written
    ``written`` (from :func:`prepare`); ``product(grad, mask)``: the gradient times a
    ``uint8`` mask, or ``None`` where it cannot (PyTorch's product then)."""
    if written.result is not None:
        return written.result
    if written.here:
        if written.mask is not None:
            return _MaskedHere.apply(input, written.mask, product)
        return _IdentityHere.apply(input)
    if written.mask is not None:
        return _Masked.apply(input, written.out, written.mask, product)
    return _Identity.apply(input, written.out)
