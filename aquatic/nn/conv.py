"""Quantization-aware convolutions: ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d``.

One implementation, :class:`_QuantConvNd`, serves all six; the classes below only name
their ``torch.nn`` twin, as torch's own ``_ConvNd`` family does.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.functional.time_steps import has_time_axis, per_step
from aquatic.nn.twin import TorchTwin
from aquatic.qconfig import QConfig

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
]

_DOC = """:class:`torch.nn.{name}` whose weight, bias and output are quantized by ``qconfig``.

    The convolution runs with the quantized weight and bias (straight-through
    gradients), then the output passes through the activation quantizer. With
    ``qconfig=None``, or a QConfig whose fields are all ``None``, the forward pass is
    :class:`torch.nn.{name}`'s own code, bit for bit.

    It takes the arguments of :class:`torch.nn.{name}` (same names, order and
    defaults) and, keyword only, ``qconfig``.

    Args:
        qconfig: which of ``weight``, ``bias`` and ``activation`` (the output) are
            quantized, and how.

    Shape:
        As :class:`torch.nn.{name}`, and with a time axis after the batch,
        ``(N, T, C, *)`` (one dimension more than torch's batched input, which torch
        refuses): each step is convolved on its own (batch and time merged, then split),
        so that a spiking network on sequences is one ``nn.Sequential``.

    Attributes:
        quantizers: ``nn.ModuleDict`` from ``"weight"``, ``"bias"``, ``"activation"`` to
            the quantizers the QConfig asked for.

    Example:
        >>> import torch, aquatic
        >>> conv = aquatic.nn.{name}(2, 4, 3, qconfig=aquatic.qconfig.int8)
        >>> conv.extra_repr()
        '2, 4, kernel_size={kernel}, stride={stride}, quantized=(weight, activation)'
        >>> conv(torch.randn(1, 2, {size})).shape
        torch.Size([1, 4, {out}])
    """


class _QuantConvNd(TorchTwin):
    """The shared implementation: construction, forward, conversion, ``extra_repr``."""

    #: functional transposed convolution of this dimension (transposed classes only)
    _conv_transpose = None

    def __init__(self, *args: Any, qconfig: Optional[QConfig] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quantizers(qconfig)
        self._check_bias_quantizer()

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        kwargs = dict(
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel_size=module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
        if module.transposed:
            kwargs["output_padding"] = module.output_padding
        return kwargs

    @property
    def _weight_out_axis(self) -> int:
        # torch stores transposed-convolution weights as (in, out / groups, *kernel).
        return 1 if self.transposed else 0

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if output_size is not None and not self.transposed:
            raise TypeError(
                f"{type(self).__name__}.forward takes no output_size (ConvTranspose does)"
            )
        if has_time_axis(input, len(self.kernel_size) + 2):
            return per_step(lambda step: self._step(step, output_size), input)
        return self._step(input, output_size)

    def _step(self, input: Tensor, output_size: Optional[List[int]]) -> Tensor:
        if not self._modules["quantizers"]._modules:
            if self.transposed:
                return super().forward(input, output_size)
            return super().forward(input)
        weight, bias = self.quantized_weight_and_bias(input)
        if not self.transposed:
            return self.quantize_own_output(self._conv_forward(input, weight, bias))
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        output_padding = self._output_padding(
            input,
            output_size,
            self.stride,
            self.padding,
            self.kernel_size,
            len(self.kernel_size),
            self.dilation,
        )
        output = self._conv_transpose(
            input,
            weight,
            bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
        )
        return self.quantize_own_output(output)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


class Conv1d(_QuantConvNd, nn.Conv1d):
    __doc__ = _DOC.format(name="Conv1d", kernel="(3,)", stride="(1,)", size="8", out="6")
    _float_module = nn.Conv1d


class Conv2d(_QuantConvNd, nn.Conv2d):
    __doc__ = _DOC.format(name="Conv2d", kernel="(3, 3)", stride="(1, 1)", size="8, 8", out="6, 6")
    _float_module = nn.Conv2d


class Conv3d(_QuantConvNd, nn.Conv3d):
    __doc__ = _DOC.format(
        name="Conv3d", kernel="(3, 3, 3)", stride="(1, 1, 1)", size="5, 5, 5", out="3, 3, 3"
    )
    _float_module = nn.Conv3d


class ConvTranspose1d(_QuantConvNd, nn.ConvTranspose1d):
    __doc__ = _DOC.format(name="ConvTranspose1d", kernel="(3,)", stride="(1,)", size="8", out="10")
    _float_module = nn.ConvTranspose1d
    _conv_transpose = staticmethod(F.conv_transpose1d)


class ConvTranspose2d(_QuantConvNd, nn.ConvTranspose2d):
    __doc__ = _DOC.format(
        name="ConvTranspose2d", kernel="(3, 3)", stride="(1, 1)", size="8, 8", out="10, 10"
    )
    _float_module = nn.ConvTranspose2d
    _conv_transpose = staticmethod(F.conv_transpose2d)


class ConvTranspose3d(_QuantConvNd, nn.ConvTranspose3d):
    __doc__ = _DOC.format(
        name="ConvTranspose3d",
        kernel="(3, 3, 3)",
        stride="(1, 1, 1)",
        size="5, 5, 5",
        out="7, 7, 7",
    )
    _float_module = nn.ConvTranspose3d
    _conv_transpose = staticmethod(F.conv_transpose3d)
