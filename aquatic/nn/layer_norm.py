"""Quantization-aware :class:`torch.nn.LayerNorm`."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.nn.base import copy_forward_hooks
from aquatic.nn.twin import TorchTwin
from aquatic.qconfig import QConfig

__all__ = ["LayerNorm"]


class LayerNorm(TorchTwin, nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` whose weight, bias and output are quantized by ``qconfig``.

    :math:`y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\hat{\\gamma}
    + \\hat{\\beta}`, then the activation quantizer, where hats mark values passed through
    the QConfig's quantizers. With ``qconfig=None``, or a QConfig whose fields are all
    ``None``, the forward pass is :class:`torch.nn.LayerNorm`'s own code, bit for bit.
    :func:`aquatic.convert` turns it into an
    :class:`~aquatic.integer.IntegerLayerNorm` (integer mean, variance and square root)
    when its input is on a grid and its output is quantized.

    Args:
        normalized_shape, eps, elementwise_affine, bias, device, dtype: as
            :class:`torch.nn.LayerNorm`.
        qconfig: ``weight`` quantizes :math:`\\gamma`, ``bias`` :math:`\\beta` and
            ``activation`` the output; keyword only. ``QConfig.bias`` cannot follow the
            input scale (there is no accumulator).

    Shape:
        As :class:`torch.nn.LayerNorm`.

    Example:
        >>> import torch, aquatic
        >>> norm = aquatic.nn.LayerNorm(8, qconfig=aquatic.qconfig.int8)
        >>> sorted(norm.quantizers)
        ['activation', 'weight']
        >>> norm(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 8])
    """

    _float_module = nn.LayerNorm

    def __init__(
        self,
        normalized_shape: Any,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self._init_quantizers(qconfig)
        quantizer = self.quantizers["bias"] if "bias" in self.quantizers else None
        if getattr(quantizer, "follows_input_scale", False):
            raise ValueError(
                f"LayerNorm: QConfig.bias is {type(quantizer).__name__}, whose scale follows "
                "an input and weight scale, which a layer norm has no accumulator for; use "
                "a bias quantizer with a scale of its own, e.g. UniformQuantizer.with_args(bits=16)"
            )

    @classmethod
    def _twin_kwargs(cls, module: nn.LayerNorm) -> Dict[str, Any]:
        return dict(
            normalized_shape=module.normalized_shape,
            eps=module.eps,
            elementwise_affine=module.elementwise_affine,
            bias=module.bias is not None,
        )

    @classmethod
    def from_float(cls, module: nn.LayerNorm, qconfig: Optional[QConfig] = None) -> "LayerNorm":
        """A layer that shares ``module``'s parameters (also without
        ``elementwise_affine``), hooks and training mode, quantized as ``qconfig`` says.

        Raises:
            TypeError: if ``module`` is not exactly a ``torch.nn.LayerNorm``.
        """
        if module.weight is not None:
            return super().from_float(module, qconfig)
        cls._check_float_twin(module)
        new = cls(**cls._twin_kwargs(module), qconfig=qconfig)
        copy_forward_hooks(module, new)
        new.train(module.training)
        return new

    def to_float(self, baked: bool = True) -> nn.LayerNorm:
        """As :meth:`aquatic.nn.Linear.to_float`; without ``elementwise_affine`` a new
        :class:`torch.nn.LayerNorm` with the same arguments."""
        if self.weight is not None:
            return super().to_float(baked)
        module = nn.LayerNorm(**self._twin_kwargs(self))
        if not baked:
            copy_forward_hooks(self, module)
        module.train(self.training)
        return module

    def forward(self, input: Tensor) -> Tensor:
        if not self._modules["quantizers"]._modules:
            return super().forward(input)
        weight, bias = self.quantized("weight"), self.quantized("bias")
        output = F.layer_norm(input, self.normalized_shape, weight, bias, self.eps)
        return self.quantize_output(output)
