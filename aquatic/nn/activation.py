"""A standalone activation quantizer, to place quantization between any two layers."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from aquatic.nn.base import QuantizedModule
from aquatic.qconfig import QConfig

__all__ = ["ActivationQuantizer"]


class ActivationQuantizer(QuantizedModule):
    """Quantizes whatever passes through it, with ``qconfig.activation``.

    Put it where a tensor should be quantized and no aquatic layer does it: the
    network's input, after a ``torch.nn`` layer that has no aquatic twin, after a
    residual addition. With ``qconfig=None`` (or no ``activation`` field) it returns its
    input unchanged.

    Args:
        qconfig: only its ``activation`` field is used; keyword only.

    Shape:
        - Input: any shape. Output: the same shape.

    Attributes:
        quantizers: ``nn.ModuleDict`` holding the ``"activation"`` quantizer, if any.

    Example:
        >>> import torch, aquatic
        >>> from aquatic.quantizers import UniformQuantizer
        >>> qconfig = aquatic.QConfig(activation=UniformQuantizer.with_args(bits=4, scale=0.5))
        >>> quant = aquatic.nn.ActivationQuantizer(qconfig=qconfig)
        >>> quant
        ActivationQuantizer(
          quantized=(activation)
          (quantizers): ModuleDict(
            (activation): UniformQuantizer(bits=4, quant_min=-8, quant_max=7, scale=0.5, zero_point=0)
          )
        )
        >>> quant(torch.tensor([0.3, -1.1, 9.0]))
        tensor([ 0.5000, -1.0000,  3.5000])
    """

    _quantized_params = {}

    def __init__(self, *, qconfig: Optional[QConfig] = None) -> None:
        super().__init__()
        self._init_quantizers(qconfig)

    def forward(self, input: Tensor) -> Tensor:
        return self.quantize_output(input)

    def extra_repr(self) -> str:
        return self._quant_repr().lstrip(", ")
