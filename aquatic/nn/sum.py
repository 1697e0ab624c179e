"""``Sum``: a sum over one dimension, such as counting spikes over time."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Sum"]


class Sum(nn.Module):
    """Sum over dimension ``dim``: ``input.sum(dim)``.

    The readout of a spiking network that counts spikes over time is ``Sum(dim=1)`` on
    ``(N, T, ...)`` spikes. :func:`aquatic.convert` turns it into an integer sum, as it
    knows the module by its type; a module of one's own that sums has no integer
    counterpart (convert does not run user code to guess what it computes).

    Args:
        dim: the dimension summed over (negative counts from the end).

    Shape:
        - Input: any shape with ``dim``.
        - Output: the input's shape without ``dim``.

    Example:
        >>> import torch
        >>> Sum(dim=1)(torch.ones(2, 5, 3))
        tensor([[5., 5., 5.],
                [5., 5., 5.]])
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {dim!r}")
        self.dim = dim

    def forward(self, input: Tensor) -> Tensor:
        return input.sum(dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
