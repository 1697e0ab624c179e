"""Where two tensors meet: ``Add``, ``Mul`` and ``Cat`` with a quantized output.

In an integer model every tensor has a scale; where two tensors meet (a residual
addition, a product, a concatenation) their codes live on different grids, and the
result needs a grid of its own. These modules compute what their ``torch`` function
computes and quantize the result with ``qconfig.activation``, so that
:func:`aquatic.convert` knows that grid: it requantizes each input onto it with an
integer multiplier and shift. :func:`aquatic.quantize` inserts them where a traced
``forward`` adds, multiplies or concatenates tensors; use them by hand in any
``forward`` as well.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from aquatic.nn.base import QuantizedModule
from aquatic.qconfig import QConfig

__all__ = ["Add", "Cat", "Mul"]


class Add(QuantizedModule):
    """``a + b``, the sum quantized with ``qconfig.activation``.

    Args:
        qconfig: only its ``activation`` field is used; keyword only. ``None`` leaves
            the sum in float.

    Shape:
        - Inputs: two tensors that broadcast. Output: their broadcast shape.

    Example:
        >>> import torch, aquatic
        >>> from aquatic.quantizers import UniformQuantizer
        >>> qconfig = aquatic.QConfig(activation=UniformQuantizer.with_args(bits=8, scale=0.25))
        >>> add = aquatic.nn.Add(qconfig=qconfig)
        >>> add(torch.tensor([0.5, 1.0]), torch.tensor([0.1, 2.0]))
        tensor([0.5000, 3.0000])
    """

    _quantized_params = {}

    def __init__(self, *, qconfig: Optional[QConfig] = None) -> None:
        super().__init__()
        self._init_quantizers(qconfig)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.quantize_output(a + b)

    def to_float(self) -> "Add":
        """The same operation without quantization (what :func:`aquatic.dequantize` uses)."""
        return Add()

    def extra_repr(self) -> str:
        return self._quant_repr().lstrip(", ")


class Mul(QuantizedModule):
    """``a * b`` (elementwise), the product quantized with ``qconfig.activation``.

    Args:
        qconfig: only its ``activation`` field is used; keyword only.

    Shape:
        - Inputs: two tensors that broadcast. Output: their broadcast shape.

    Example:
        >>> import torch, aquatic
        >>> mul = aquatic.nn.Mul()
        >>> mul(torch.tensor([0.5, 2.0]), torch.tensor([4.0, 0.25]))
        tensor([2.0000, 0.5000])
    """

    _quantized_params = {}

    def __init__(self, *, qconfig: Optional[QConfig] = None) -> None:
        super().__init__()
        self._init_quantizers(qconfig)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.quantize_output(a * b)

    def to_float(self) -> "Mul":
        """The same operation without quantization (what :func:`aquatic.dequantize` uses)."""
        return Mul()

    def extra_repr(self) -> str:
        return self._quant_repr().lstrip(", ")


class Cat(QuantizedModule):
    """``torch.cat(tensors, dim)``, the result quantized with ``qconfig.activation``.

    All inputs end up on one grid (the output quantizer's), as an integer model needs
    for one tensor.

    Args:
        dim: the dimension to concatenate along (negative counts from the end).
        qconfig: only its ``activation`` field is used; keyword only.

    Shape:
        - Input: a sequence of tensors equal in shape except along ``dim``.
        - Output: their concatenation.

    Example:
        >>> import torch, aquatic
        >>> cat = aquatic.nn.Cat(dim=1)
        >>> cat([torch.zeros(2, 3), torch.ones(2, 1)]).shape
        torch.Size([2, 4])
    """

    _quantized_params = {}

    def __init__(self, dim: int = 0, *, qconfig: Optional[QConfig] = None) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {dim!r}")
        self.dim = dim
        self._init_quantizers(qconfig)

    def forward(self, tensors: Sequence[Tensor]) -> Tensor:
        if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
            raise TypeError(
                f"Cat takes a list or tuple of tensors (as torch.cat), got {type(tensors).__name__}"
            )
        return self.quantize_output(torch.cat(list(tensors), dim=self.dim))

    def to_float(self) -> "Cat":
        """The same operation without quantization (what :func:`aquatic.dequantize` uses)."""
        return Cat(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}" + self._quant_repr()
