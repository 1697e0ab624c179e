"""Integer modules of the operations that commute with quantization.

Max pooling commutes with any increasing affine map, so it runs on the codes as they
are; average pooling becomes sum pooling of ``q - z`` with the scale divided by the
window size; flattening and sums over a dimension (spike counts over time) run on the
codes too.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from aquatic.functional.time_steps import has_time_axis, per_step
from aquatic.integer.base import IntegerModule

__all__ = ["IntegerMaxPool", "IntegerReshape", "IntegerSum", "IntegerSumPool"]


class IntegerMaxPool(IntegerModule):
    """Max pooling of codes (it commutes with any increasing affine map).

    Example:
        >>> IntegerMaxPool(1, kernel_size=[2], stride=[2])(torch.tensor([[[1, 5, -2, 0]]]))
        tensor([[[5, 0]]])
    """

    kind = "maxpool"
    _config_keys = ("dim", "kernel_size", "stride", "padding", "dilation", "ceil_mode")

    def __init__(
        self,
        dim: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int] = (0,),
        dilation: Sequence[int] = (1,),
        ceil_mode: bool = False,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        self.dim = dim
        self.kernel_size, self.stride = list(kernel_size), list(stride)
        self.padding, self.dilation = list(padding), list(dilation)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, input: Tensor) -> Tensor:
        if has_time_axis(input, self.dim + 2):  # (N, T, C, *): each step on its own
            return per_step(self.forward, input)
        # float64 holds the codes exactly (and pads with -inf, as max pooling must).
        x = self._input_codes(input).double()
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[self.dim - 1]
        out = fn(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return out.to(input.dtype)


class IntegerSumPool(IntegerModule):
    """Sum pooling of ``x - z`` (average pooling times its divisor): scale ``s / divisor``.

    Only windows that all have the same divisor are supported (no partial windows).

    Example:
        >>> IntegerSumPool(1, kernel_size=[2], stride=[2])(torch.tensor([[[1, 5, -2, 0]]]))
        tensor([[[ 6, -2]]], dtype=torch.int32)
    """

    kind = "sumpool"
    _config_keys = ("dim", "kernel_size", "stride", "padding")
    _tensor_keys = ("zero_point",)

    def __init__(
        self,
        dim: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int] = (0,),
        zero_point=0,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        self.dim = dim
        self.kernel_size, self.stride, self.padding = (
            list(kernel_size),
            list(stride),
            list(padding),
        )
        self._set_tensors({"zero_point": torch.as_tensor(zero_point, dtype=torch.int64)})

    def forward(self, input: Tensor) -> Tensor:
        x = self._input_codes(input) - self.zero_point
        # A sum of small integers in float64 is exact (the bound is checked at conversion).
        window = torch.ones([1, 1] + self.kernel_size, dtype=torch.float64)
        shape = x.shape
        flat = x.reshape((-1, 1) + tuple(shape[-self.dim :])).double()
        fn = (F.conv1d, F.conv2d, F.conv3d)[self.dim - 1]
        summed = fn(flat, window, None, self.stride, self.padding)
        out = summed.reshape(tuple(shape[: -self.dim]) + tuple(summed.shape[-self.dim :]))
        return out.round().to(torch.int32)


class IntegerReshape(IntegerModule):
    """``flatten`` or ``unflatten`` of the codes (as ``nn.Flatten`` / ``nn.Unflatten``).

    Example:
        >>> IntegerReshape("flatten", start_dim=1, end_dim=-1)(torch.zeros(2, 3, 4)).shape
        torch.Size([2, 12])
    """

    kind = "reshape"
    _config_keys = ("op", "start_dim", "end_dim", "dim", "sizes")

    def __init__(
        self,
        op: str,
        start_dim: int = 1,
        end_dim: int = -1,
        dim: int = 1,
        sizes: Sequence[int] = (),
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        if op not in ("flatten", "unflatten"):
            raise ValueError(f"op must be 'flatten' or 'unflatten', got {op!r}")
        self.op, self.start_dim, self.end_dim = op, start_dim, end_dim
        self.dim, self.sizes = dim, list(sizes)

    def forward(self, input: Tensor) -> Tensor:
        if self.op == "flatten":
            return input.flatten(self.start_dim, self.end_dim)
        return input.unflatten(self.dim, self.sizes)


class IntegerSum(IntegerModule):
    """Sum of the codes over one dimension (e.g. spike counts over time).

    Example:
        >>> IntegerSum(dim=1)(torch.tensor([[[1, 0], [1, 1]]]))
        tensor([[2, 1]])
    """

    kind = "sum"
    _config_keys = ("dim",)

    def __init__(
        self, dim: int, name: str = "", notes: Optional[List[str]] = None, source: str = ""
    ) -> None:
        super().__init__(name, notes, source)
        self.dim = int(dim)

    def forward(self, input: Tensor) -> Tensor:
        return self._input_codes(input).sum(dim=self.dim)
