"""Small modules that let a recurrent layer sit inside an ``nn.Sequential``.

A recurrent layer returns a tuple, ``(output, h_n)`` (``(output, (h_n, c_n))`` for an
LSTM), which the next layer of a ``Sequential`` cannot take. :class:`SelectOutput`
picks one element of it, and :class:`LastStep` one time step of a sequence, so that a
keyword spotter is written, and converted by :func:`aquatic.convert`, as::

    nn.Sequential(
        aquatic.nn.GRU(8, 16, batch_first=True, qconfig=q),
        aquatic.nn.SelectOutput(0),  # the output sequence (N, L, H)
        aquatic.nn.LastStep(1),      # its last step (N, H)
        aquatic.nn.Linear(16, 3, qconfig=q),
    )

Both are explicit on purpose: which element and which step a model reads is part of
the model, and ``nn.Sequential`` stays torch's own.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["SelectOutput", "LastStep"]


class SelectOutput(nn.Module):
    """Element ``index`` of a tuple output (``(output, h_n)`` of a recurrent layer).

    Args:
        index: which element; ``0`` (the default) is a recurrent layer's output
            sequence, ``1`` its final state.

    Raises:
        TypeError: ``index`` is not an int; (in ``forward``) the input is not a tuple or
            list.

    Example:
        >>> import torch, aquatic
        >>> gru = aquatic.nn.GRU(3, 4, batch_first=True)
        >>> model = torch.nn.Sequential(gru, aquatic.nn.SelectOutput(0))
        >>> model(torch.randn(2, 5, 3)).shape
        torch.Size([2, 5, 4])
    """

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"SelectOutput: index must be an int, got {index!r}")
        self.index = index

    def forward(self, input: Any) -> Any:
        if not isinstance(input, (tuple, list)):
            raise TypeError(
                f"SelectOutput takes a tuple (e.g. (output, h_n) of a recurrent layer), got "
                f"{type(input).__name__}; remove it after layers that return one tensor"
            )
        if not -len(input) <= self.index < len(input):
            raise ValueError(
                f"SelectOutput: index {self.index} is out of range for a tuple of "
                f"{len(input)} elements"
            )
        return input[self.index]

    def extra_repr(self) -> str:
        return f"index={self.index}"


class LastStep(nn.Module):
    """The last step of a sequence along ``dim``: ``input.select(dim, -1)``.

    Args:
        dim: the time dimension; ``1`` for ``batch_first`` layers (the default), ``0``
            for sequence-first ones.

    Shape:
        - Input: :math:`(N, L, *)` (``dim=1``). Output: :math:`(N, *)`.

    Example:
        >>> import torch, aquatic
        >>> aquatic.nn.LastStep(1)(torch.arange(6).view(1, 3, 2))
        tensor([[4, 5]])
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"LastStep: dim must be an int, got {dim!r}")
        self.dim = dim

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor):
            raise TypeError(
                f"LastStep takes a tensor, got {type(input).__name__}; after a recurrent "
                "layer, put aquatic.nn.SelectOutput(0) first"
            )
        if not -input.dim() <= self.dim < input.dim():
            raise ValueError(
                f"LastStep: dim {self.dim} is out of range for a {input.dim()}-D input of "
                f"shape {tuple(input.shape)}"
            )
        return input.select(self.dim, -1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
