"""Convolution (or linear layer) and batch norm fused for quantization-aware training.

Integer hardware has no batch norm: it is folded into the layer before it,

.. math::

    W' = W\\, \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
    b' = (b - \\mu)\\, \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta,

and it is :math:`W'` that must be quantized, not :math:`W`. The fused layers here
quantize the folded weight while training, following Jacob et al. 2018 ("Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
section 3.2) and Krishnamoorthi 2018 ("Quantizing deep convolutional networks for
efficient inference: A whitepaper", section 3.2), as ``torch.ao.nn.intrinsic.qat``'s
``ConvBn2d`` does:

- while training, and before :func:`freeze_bn`: the weight is scaled by
  :math:`\\gamma / \\sqrt{\\sigma^2_{running} + \\epsilon}` and quantized, the layer
  runs with it, the scaling is undone on the output and the batch norm normalises with
  the *batch* statistics (and updates its running ones). Training sees the weight grid
  of the deployed model and the batch-norm dynamics of float training;
- after :func:`freeze_bn` (or ``freeze_bn_after`` training steps), and in eval mode:
  the layer runs with the folded weight and bias (running statistics), quantized, which
  is exactly what :func:`aquatic.convert` turns into integer arithmetic.

The activation quantizer (``QConfig.activation``) quantizes the output *after* the
batch norm, where the integer model has its requantizer.
"""

from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.functional.time_steps import has_time_axis, per_step
from aquatic.nn.conv import Conv1d, Conv2d, Conv3d
from aquatic.nn.fused_bn import FusedBatchNorm
from aquatic.nn.linear import Linear
from aquatic.qconfig import QConfig

__all__ = ["ConvBn1d", "ConvBn2d", "ConvBn3d", "LinearBn1d"]


_DOC = """:class:`aquatic.nn.{layer}` followed by :class:`torch.nn.{bn}`, fused for
    quantization-aware training (see :mod:`aquatic.nn.conv_bn` for the method).

    :func:`aquatic.quantize` builds it from a ``{layer}`` directly followed by a
    ``{bn}`` in an ``nn.Sequential`` (the batch norm's slot becomes ``nn.Identity``).

    Args:
        *args, **kwargs: :class:`torch.nn.{layer}`'s arguments.
        eps, momentum: the batch norm's.
        freeze_bn_after: switch to the running statistics after this many training
            steps (see :func:`freeze_bn`); ``None``: only when asked.
        qconfig: what to quantize: the weight and bias *after folding*, and the output
            after the batch norm; keyword only.

    Shape:
        As :class:`torch.nn.{layer}`{shape}.

    Example:
        >>> import torch, aquatic
        >>> layer = aquatic.nn.{name}({args}, qconfig=aquatic.qconfig.int8)
        >>> _ = layer(torch.randn({size}))  # training: batch statistics
        >>> _ = layer.freeze_bn()  # running statistics from now on
        >>> layer.eval()(torch.randn({size})).shape
        torch.Size([{out}])
    """


class _ConvBnNd(FusedBatchNorm):
    def __init__(
        self,
        *args: Any,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        freeze_bn_after: Optional[int] = None,
        qconfig: Optional[QConfig] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, qconfig=qconfig, **kwargs)
        self._setup_bn(eps, momentum, freeze_bn_after, kwargs.get("device"), kwargs.get("dtype"))

    def forward(self, input: Tensor) -> Tensor:
        if has_time_axis(input, len(self.kernel_size) + 2):
            return per_step(self._step, input)
        return self._step(input)

    def _step(self, input: Tensor, output_size: Optional[Any] = None) -> Tensor:
        return self._fused(input, self._conv_forward)


class ConvBn1d(_ConvBnNd, Conv1d):
    __doc__ = _DOC.format(
        layer="Conv1d",
        bn="BatchNorm1d",
        name="ConvBn1d",
        args="2, 4, 3",
        size="8, 2, 10",
        out="8, 4, 8",
        shape=", and with a time axis ``(N, T, C, L)``",
    )
    _bn_class = nn.BatchNorm1d
    _layer_class = Conv1d


class ConvBn2d(_ConvBnNd, Conv2d):
    __doc__ = _DOC.format(
        layer="Conv2d",
        bn="BatchNorm2d",
        name="ConvBn2d",
        args="2, 4, 3",
        size="8, 2, 6, 6",
        out="8, 4, 4, 4",
        shape=", and with a time axis ``(N, T, C, H, W)``",
    )
    _bn_class = nn.BatchNorm2d
    _layer_class = Conv2d


class ConvBn3d(_ConvBnNd, Conv3d):
    __doc__ = _DOC.format(
        layer="Conv3d",
        bn="BatchNorm3d",
        name="ConvBn3d",
        args="2, 4, 3",
        size="8, 2, 5, 5, 5",
        out="8, 4, 3, 3, 3",
        shape="",
    )
    _bn_class = nn.BatchNorm3d
    _layer_class = Conv3d


class LinearBn1d(FusedBatchNorm, Linear):
    __doc__ = _DOC.format(
        layer="Linear",
        bn="BatchNorm1d",
        name="LinearBn1d",
        args="6, 4",
        size="8, 6",
        out="8, 4",
        shape=" on ``(N, in_features)`` (the batch norm's ``(N, C)``)",
    )
    _bn_class = nn.BatchNorm1d
    _layer_class = Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        freeze_bn_after: Optional[int] = None,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype, qconfig=qconfig)
        self._setup_bn(eps, momentum, freeze_bn_after, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 2:
            raise ValueError(
                f"LinearBn1d takes (N, in_features) inputs (BatchNorm1d normalises (N, C)), "
                f"got shape {tuple(input.shape)}"
            )
        return self._fused(input, F.linear)
