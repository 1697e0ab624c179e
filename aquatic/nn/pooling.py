"""Pooling twins: ``AvgPool1d/2d``, ``MaxPool1d/2d``, ``AdaptiveAvgPool1d/2d`` and the
sum pooling of spiking networks, ``SumPool1d/2d``.

Each takes its ``torch.nn`` twin's arguments and, keyword only, ``qconfig`` (whose
``activation`` quantizes the output), and accepts a time axis after the batch (see
:class:`~aquatic.nn.stateless.StatelessTwin`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.nn.stateless import StatelessTwin
from aquatic.qconfig import QConfig

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "MaxPool1d",
    "MaxPool2d",
    "SumPool1d",
    "SumPool2d",
]

_DOC = """:class:`torch.nn.{name}` with a time axis, its output quantized by ``qconfig``.

    With ``qconfig=None`` (or no ``activation`` field) the forward pass is
    :class:`torch.nn.{name}`'s own code, bit for bit.

    Args:
        qconfig: its ``activation`` field quantizes the output; keyword only. The other
            arguments are :class:`torch.nn.{name}`'s.

    Shape:
        As :class:`torch.nn.{name}`, and with a time axis after the batch, ``{timed}``:
        each step is pooled on its own.

    Example:
        >>> import torch, aquatic
        >>> pool = aquatic.nn.{name}({args})
        >>> pool(torch.rand(2, 5, {step})).shape  # (N, T, C, ...)
        torch.Size([2, 5, {out}])
    """


def _pool_kwargs(module: nn.Module, *names: str) -> Dict[str, Any]:
    return {name: getattr(module, name) for name in names}


def _max_kwargs(module: nn.Module) -> Dict[str, Any]:
    return _pool_kwargs(
        module, "kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"
    )


class AvgPool1d(StatelessTwin, nn.AvgPool1d):
    __doc__ = _DOC.format(name="AvgPool1d", timed="(N, T, C, L)", args="2", step="3, 8", out="3, 4")
    _float_module = nn.AvgPool1d
    _batched_dims = 3

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        return _pool_kwargs(
            module, "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"
        )


class AvgPool2d(StatelessTwin, nn.AvgPool2d):
    __doc__ = _DOC.format(
        name="AvgPool2d", timed="(N, T, C, H, W)", args="2", step="3, 8, 8", out="3, 4, 4"
    )
    _float_module = nn.AvgPool2d
    _batched_dims = 4

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        return _pool_kwargs(
            module,
            "kernel_size",
            "stride",
            "padding",
            "ceil_mode",
            "count_include_pad",
            "divisor_override",
        )


class MaxPool1d(StatelessTwin, nn.MaxPool1d):
    __doc__ = _DOC.format(name="MaxPool1d", timed="(N, T, C, L)", args="2", step="3, 8", out="3, 4")
    _float_module = nn.MaxPool1d
    _batched_dims = 3

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        return _max_kwargs(module)


class MaxPool2d(StatelessTwin, nn.MaxPool2d):
    __doc__ = _DOC.format(
        name="MaxPool2d", timed="(N, T, C, H, W)", args="2", step="3, 8, 8", out="3, 4, 4"
    )
    _float_module = nn.MaxPool2d
    _batched_dims = 4

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        return _max_kwargs(module)


class AdaptiveAvgPool1d(StatelessTwin, nn.AdaptiveAvgPool1d):
    __doc__ = _DOC.format(
        name="AdaptiveAvgPool1d", timed="(N, T, C, L)", args="1", step="3, 8", out="3, 1"
    )
    _float_module = nn.AdaptiveAvgPool1d
    _batched_dims = 3

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        return _pool_kwargs(module, "output_size")


class AdaptiveAvgPool2d(StatelessTwin, nn.AdaptiveAvgPool2d):
    __doc__ = _DOC.format(
        name="AdaptiveAvgPool2d",
        timed="(N, T, C, H, W)",
        args="1",
        step="3, 8, 8",
        out="3, 1, 1",
    )
    _float_module = nn.AdaptiveAvgPool2d
    _batched_dims = 4

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        return _pool_kwargs(module, "output_size")


class _SumPoolNd(StatelessTwin):
    """Sum pooling: the sum over each window (average pooling times the window size),
    as sinabs' ``SumPool2d`` and the sum pooling of DYNAP-CNN / Speck.

    Its torch twin is ``LPPool(norm_type=1)``, the same function; torch computes it as
    an average times the window size, which can round differently in the last bit, so
    this layer sums exactly instead (``avg_pool`` with ``divisor_override=1``).
    """

    _float_extra = {"norm_type": 1}

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        ceil_mode: bool = False,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(1, kernel_size, stride, ceil_mode, qconfig=qconfig)

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        return _pool_kwargs(module, "kernel_size", "stride", "ceil_mode")

    @classmethod
    def from_float(cls, module: nn.Module, qconfig: Optional[QConfig] = None) -> StatelessTwin:
        """A sum pooling layer from a ``torch.nn.LPPool`` with ``norm_type=1``."""
        if type(module) is cls._float_module and module.norm_type != 1:
            raise ValueError(
                f"{cls.__name__}.from_float takes LPPool with norm_type=1 (sum pooling), got "
                f"norm_type={module.norm_type}"
            )
        return super().from_float(module, qconfig)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, ceil_mode={self.ceil_mode}"
            + self._quant_repr()
        )


class SumPool1d(_SumPoolNd, nn.LPPool1d):
    __doc__ = _SumPoolNd.__doc__ + """
    Args:
        kernel_size: window length.
        stride: window step (default: ``kernel_size``).
        ceil_mode: keep a last, partial window (its sum).
        qconfig: its ``activation`` field quantizes the output; keyword only.

    Shape:
        ``(N, C, L)`` or ``(C, L)``, and with a time axis ``(N, T, C, L)``.

    Example:
        >>> import torch, aquatic
        >>> aquatic.nn.SumPool1d(2)(torch.tensor([[[1.0, 2.0, 3.0, 5.0]]]))
        tensor([[[3., 8.]]])
    """
    _float_module = nn.LPPool1d
    _batched_dims = 3

    def _step(self, input: Tensor) -> Tensor:
        kernel = self.kernel_size if isinstance(self.kernel_size, int) else self.kernel_size[0]
        stride = self.stride if self.stride is not None else kernel
        stride = stride if isinstance(stride, int) else stride[0]
        # A 2-d window of height 1: avg_pool1d has no divisor_override.
        out = F.avg_pool2d(
            input.unsqueeze(-2), (1, kernel), (1, stride), 0, self.ceil_mode, True, 1
        )
        return self.quantize_output(out.squeeze(-2))


class SumPool2d(_SumPoolNd, nn.LPPool2d):
    __doc__ = _SumPoolNd.__doc__ + """
    Args:
        kernel_size: window size.
        stride: window step (default: ``kernel_size``).
        ceil_mode: keep last, partial windows (their sums).
        qconfig: its ``activation`` field quantizes the output; keyword only.

    Shape:
        ``(N, C, H, W)`` or ``(C, H, W)``, and with a time axis ``(N, T, C, H, W)``.

    Example:
        >>> import torch, aquatic
        >>> aquatic.nn.SumPool2d(2)(torch.arange(16.0).reshape(1, 1, 4, 4))
        tensor([[[[10., 18.],
                  [42., 50.]]]])
    """
    _float_module = nn.LPPool2d
    _batched_dims = 4

    def _step(self, input: Tensor) -> Tensor:
        stride = self.stride if self.stride is not None else self.kernel_size
        out = F.avg_pool2d(input, self.kernel_size, stride, 0, self.ceil_mode, True, 1)
        return self.quantize_output(out)
