"""Quantization-aware :class:`torch.nn.Linear`."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.nn.twin import TorchTwin
from aquatic.qconfig import QConfig

__all__ = ["Linear"]


class Linear(TorchTwin, nn.Linear):
    """:class:`torch.nn.Linear` whose weight, bias and output are quantized by ``qconfig``.

    :math:`y = \\hat{x} \\hat{W}^T + \\hat{b}`, then the activation quantizer, where
    hats mark values passed through the QConfig's quantizers (straight-through
    gradients). With ``qconfig=None``, or a QConfig whose fields are all ``None``, the
    forward pass is :class:`torch.nn.Linear`'s own code, bit for bit.

    Args:
        in_features, out_features, bias, device, dtype: as :class:`torch.nn.Linear`.
        qconfig: which of ``weight``, ``bias`` and ``activation`` (the output) are
            quantized, and how; keyword only.

    Shape:
        - Input: :math:`(*, H_{in})`. Output: :math:`(*, H_{out})`.

    Attributes:
        quantizers: ``nn.ModuleDict`` from ``"weight"``, ``"bias"``, ``"activation"`` to
            the quantizers the QConfig asked for.

    Example:
        >>> import torch, aquatic
        >>> layer = aquatic.nn.Linear(4, 2, qconfig=aquatic.qconfig.int8)
        >>> layer
        Linear(
          in_features=4, out_features=2, bias=True, quantized=(weight, activation)
          (quantizers): ModuleDict(...)
        )
        >>> layer(torch.randn(3, 4)).shape
        torch.Size([3, 2])
        >>> float_layer = layer.to_float()  # torch.nn.Linear, quantized weight baked in
        >>> torch.equal(float_layer.weight, layer.quantize_params()["weight"])
        True
    """

    _float_module = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_quantizers(qconfig)
        self._check_bias_quantizer()

    @classmethod
    def _twin_kwargs(cls, module: nn.Linear) -> Dict[str, Any]:
        return dict(
            in_features=module.in_features,
            out_features=module.out_features,
            bias=module.bias is not None,
        )

    def forward(self, input: Tensor) -> Tensor:
        if not self._modules["quantizers"]._modules:
            return super().forward(input)
        weight, bias = self.quantized_weight_and_bias(input)
        return self.quantize_own_output(F.linear(input, weight, bias))

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()
