"""What the custom operators of the fused neuron paths share (``torch.library``
operators, which ``torch.compile`` calls as opaque kernels)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["fake_gradients", "op_output"]


def op_output(tensor: Optional[Tensor], like: Tensor) -> Tensor:
    """``tensor`` as a custom operator may return it: an operator's outputs may not be
    views, so a missing one is an empty tensor like ``like`` and a view (a gradient summed
    to a shape it already had) is copied."""
    if tensor is None:
        return like.new_empty(0)
    return tensor.clone() if tensor._base is not None else tensor


def fake_gradients(v: Tensor, likes: Sequence[Optional[Tensor]], needs: Sequence[bool]):
    """The fake (shape-only) gradients of a backward operator for ``torch.compile``: one
    like ``v`` for the input, then one like each of ``likes`` where ``needs`` says so, an
    empty tensor otherwise."""
    return [
        (
            (torch.empty_like(like) if like is v else like.new_empty(like.shape))
            if need
            else v.new_empty(0)
        )
        for need, like in zip(needs, (v,) + tuple(likes))
    ]
