"""Stateless layers on sequences: one function applied to every time step of ``(N, T, *)``.

A convolution, pooling or normalisation has no state across time, so running it on
each step of a sequence is running it once on the batch and time axes merged,
``(N * T, *)``, and splitting them again. That is how a spiking convolutional network
(sinabs / Speck style) runs as one ``nn.Sequential`` on ``(N, T, C, H, W)``.
"""

from __future__ import annotations

from typing import Callable, Tuple, Union

from torch import Tensor

__all__ = ["has_time_axis", "per_step"]

Output = Union[Tensor, Tuple[Tensor, ...]]


def has_time_axis(input: Tensor, batched_dims: int) -> bool:
    """Whether ``input`` carries a time axis after the batch: one more dimension than
    the ``batched_dims`` of the layer's own batched input (4 for ``Conv2d``).

    Example:
        >>> import torch
        >>> has_time_axis(torch.zeros(2, 5, 3, 8, 8), 4), has_time_axis(torch.zeros(2, 3, 8, 8), 4)
        (True, False)
    """
    return input.dim() == batched_dims + 1


def per_step(fn: Callable[[Tensor], Output], input: Tensor) -> Output:
    """``fn`` applied to every step of ``input`` ``(N, T, *)``: batch and time merged into
    one axis for ``fn``, then split again (each output of a tuple alike).

    Args:
        fn: a stateless function of one batched input ``(B, *)``.
        input: ``(N, T, *)``.

    Returns:
        ``(N, T, *)``: what ``fn`` returns for the merged input, reshaped.

    Example:
        >>> import torch
        >>> x = torch.arange(12.0).reshape(2, 3, 2)
        >>> torch.equal(per_step(lambda s: s.sum(1, keepdim=True), x), x.sum(2, keepdim=True))
        True
    """
    batch, steps = input.shape[0], input.shape[1]
    output = fn(input.reshape((batch * steps,) + tuple(input.shape[2:])))
    if isinstance(output, tuple):
        return tuple(out.reshape((batch, steps) + tuple(out.shape[1:])) for out in output)
    return output.reshape((batch, steps) + tuple(output.shape[1:]))
