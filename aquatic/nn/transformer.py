"""Quantization-aware :class:`torch.nn.TransformerEncoderLayer` and
:class:`torch.nn.TransformerDecoderLayer`.

Each is torch's layer whose attention blocks are :class:`aquatic.nn.MultiheadAttention`
and whose feed-forward layers are :class:`aquatic.nn.Linear`, all with the layer's
QConfig. With ``QConfig.activation`` the layer norms are :class:`aquatic.nn.LayerNorm`
and every residual sum passes through a quantizer of the layer's own (``residual1``,
``residual2``, ...; :mod:`aquatic.nn.transformer_base`), so that an integer model finds
every tensor on a grid; otherwise norms and sums stay in float. torch's
:class:`~torch.nn.TransformerEncoder` and :class:`~torch.nn.TransformerDecoder` stack
them as they are (they copy the layer they are given).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.nn.transformer_base import TransformerLayerTwin
from aquatic.qconfig import QConfig

__all__ = [
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "follow_mapping",
    "fused_layers_left_in_float",
]

Activation = Union[str, Callable[[Tensor], Tensor]]


class TransformerEncoderLayer(TransformerLayerTwin, nn.TransformerEncoderLayer):
    """:class:`torch.nn.TransformerEncoderLayer` with quantized attention and feed-forward
    layers.

    It takes the arguments of :class:`torch.nn.TransformerEncoderLayer` and, keyword
    only, ``qconfig``, which ``self_attn`` (:class:`aquatic.nn.MultiheadAttention`: see
    its table of quantizers) and ``linear1``, ``linear2`` (:class:`aquatic.nn.Linear`)
    take; with ``QConfig.activation``, ``norm1`` and ``norm2`` are
    :class:`aquatic.nn.LayerNorm` and the residual sums go through the quantizers
    ``residual1``, ``residual2``. :func:`aquatic.convert` turns it (``relu``, post-norm or
    pre-norm) into integer arithmetic. With ``qconfig=None`` it computes as torch's layer, bit for bit, fused
    inference path included, and its ``state_dict`` is torch's.

    With quantizers, torch's fused inference path (``torch._transformer_encoder_layer_fwd``
    in eval under ``no_grad``, and :class:`~torch.nn.TransformerEncoder`'s nested-tensor
    path), which reads the float weights, never runs: the layer computes as in training
    (without dropout), so eval under ``no_grad`` gives what eval with gradients gives.
    Nested-tensor input (from a ``TransformerEncoder`` built on torch's layers and
    quantized afterwards) is padded, run, and returned nested. A ``TransformerEncoder``
    built on a quantized layer warns that it turns nested tensors off; pass
    ``enable_nested_tensor=False`` to say so.

    Args:
        qconfig: what to quantize, and how; keyword only.

    Example:
        >>> import torch, aquatic
        >>> layer = aquatic.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True,
        ...                                            qconfig=aquatic.qconfig.int8)
        >>> encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        >>> x = torch.randn(3, 5, 8)
        >>> with torch.no_grad():
        ...     y = encoder.eval()(x)
        >>> torch.equal(y, encoder(x).detach())
        True
    """

    _float_module = nn.TransformerEncoderLayer

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            layer_norm_eps,
            batch_first,
            norm_first,
            bias,
            device,
            dtype,
        )
        self._quantize_children(qconfig)

    # torch takes its fused path only where this is true: never with quantizers.
    @property
    def activation_relu_or_gelu(self) -> int:
        if "self_attn" in self._modules and self.is_quantized():
            return 0
        return self.__dict__.get("_relu_or_gelu", 0)

    @activation_relu_or_gelu.setter
    def activation_relu_or_gelu(self, value: int) -> None:
        self.__dict__["_relu_or_gelu"] = value

    def forward(
        self,
        src: Tensor,
        src_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
        is_causal: bool = False,
    ) -> Tensor:
        if not self.is_quantized():
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        if not src.is_nested:
            return self._quantized(src, src_mask, src_key_padding_mask, is_causal)
        sequences = src.unbind()
        lengths = torch.tensor([len(s) for s in sequences], device=src.device)
        padded = src.to_padded_tensor(0.0)
        steps = torch.arange(padded.shape[1], device=src.device)
        padding = steps[None, :] >= lengths[:, None]
        if not self.self_attn.batch_first:
            padded = padded.transpose(0, 1)
        output = self._quantized(padded, src_mask, padding, is_causal)
        if not self.self_attn.batch_first:
            output = output.transpose(0, 1)
        return torch.nested.nested_tensor([o[: int(n)] for o, n in zip(output, lengths)])

    def _quantized(self, x, mask, padding, is_causal) -> Tensor:
        """torch's layer (Xiong et al. 2020, fig. 1, both ways), the residual sums
        quantized."""
        if self.norm_first:
            x = self.residual(1, x + self._sa_block(self.norm1(x), mask, padding, is_causal))
            return self.residual(2, x + self._ff_block(self.norm2(x)))
        x = self.norm1(self.residual(1, x + self._sa_block(x, mask, padding, is_causal)))
        return self.norm2(self.residual(2, x + self._ff_block(x)))


class TransformerDecoderLayer(TransformerLayerTwin, nn.TransformerDecoderLayer):
    """:class:`torch.nn.TransformerDecoderLayer` with quantized attention and feed-forward
    layers.

    As :class:`TransformerEncoderLayer`, with ``self_attn`` and ``multihead_attn``
    (:class:`aquatic.nn.MultiheadAttention`) and ``linear1``, ``linear2``
    (:class:`aquatic.nn.Linear`) taking ``qconfig``. torch's decoder layer has no fused
    path; its ``forward`` is torch's own.

    Args:
        qconfig: what to quantize, and how; keyword only.

    Example:
        >>> import torch, aquatic
        >>> layer = aquatic.nn.TransformerDecoderLayer(8, 2, 16, qconfig=aquatic.qconfig.int8)
        >>> layer(torch.randn(4, 2, 8), torch.randn(6, 2, 8)).shape
        torch.Size([4, 2, 8])
    """

    _float_module = nn.TransformerDecoderLayer
    _attention = ("self_attn", "multihead_attn")
    _norms = ("norm1", "norm2", "norm3")
    _quantized_states = ("residual1", "residual2", "residual3")

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            layer_norm_eps,
            batch_first,
            norm_first,
            bias,
            device,
            dtype,
        )
        self._quantize_children(qconfig)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        tgt_key_padding_mask: Optional[Tensor] = None,
        memory_key_padding_mask: Optional[Tensor] = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        if not self.is_quantized():
            return super().forward(
                tgt,
                memory,
                tgt_mask,
                memory_mask,
                tgt_key_padding_mask,
                memory_key_padding_mask,
                tgt_is_causal,
                memory_is_causal,
            )
        x = tgt
        masks = (tgt_mask, tgt_key_padding_mask, tgt_is_causal)
        cross = (memory, memory_mask, memory_key_padding_mask, memory_is_causal)
        if self.norm_first:
            x = self.residual(1, x + self._sa_block(self.norm1(x), *masks))
            x = self.residual(2, x + self._mha_block(self.norm2(x), *cross))
            return self.residual(3, x + self._ff_block(self.norm3(x)))
        x = self.norm1(self.residual(1, x + self._sa_block(x, *masks)))
        x = self.norm2(self.residual(2, x + self._mha_block(x, *cross)))
        return self.norm3(self.residual(3, x + self._ff_block(x)))


def fused_layers_left_in_float(
    named: Iterable[Tuple[str, nn.Module]], converted: Set[int]
) -> List[str]:
    """Torch ``TransformerEncoderLayer`` modules that stay torch's own while their
    feed-forward layers are quantized.

    torch's fused inference path (eval under ``no_grad``) would read those layers' float
    weights; :func:`aquatic.quantize` warns about them. (A quantized attention block
    turns the fused path off by itself.)

    Args:
        named: ``(name, module)`` pairs, as ``model.named_modules()`` gives them.
        converted: the ``id`` of every module being quantized.

    Returns:
        The names of those layers.

    Example:
        >>> layer = torch.nn.TransformerEncoderLayer(8, 2, 16)
        >>> fused_layers_left_in_float([("enc", layer)], {id(layer.linear1)})
        ['enc']
    """
    return [
        name or "(the model itself)"
        for name, module in named
        if type(module) is nn.TransformerEncoderLayer
        and id(module) not in converted
        and (id(module.linear1) in converted or id(module.linear2) in converted)
    ]


def follow_mapping(new: nn.Module, name: str, original: nn.Module, resolver: Any) -> None:
    """Give the children of a transformer layer twin ``new`` (built by
    :func:`aquatic.quantize` from ``original`` at ``name``) the QConfig that the
    mapping gives them; the others keep the layer's QConfig. Any other module is left
    alone.

    A child follows the precedence of :meth:`aquatic.mapping.QConfigResolver.resolve`:
    a name key (its own name, or the nearest enclosing name, the layer's included) or a
    regular expression matching its whole name decides it (``None`` included); failing
    those, the type key nearest to its class does, unless that key also covers the
    layer itself (``{nn.Module: int8, nn.TransformerEncoderLayer: int4}`` quantizes the
    layer's ``linear1`` with ``int4``: the catch-all ``nn.Module`` is no more about the
    child than about the layer; ``{nn.Module: int8, nn.Linear: None}`` leaves
    ``linear1`` and ``linear2`` unquantized).

    Args:
        new: the module built for ``original``.
        name: the qualified name of ``original``.
        original: the module it replaces, whose children the mapping names.
        resolver: :class:`aquatic.mapping.QConfigResolver` of the mapping.
    """
    if not isinstance(new, TransformerLayerTwin):
        return
    qconfigs = {}
    for child in new.child_names():
        qualified = f"{name}.{child}" if name else child
        module = getattr(original, child)
        if resolver.names_explicitly(qualified):
            qconfigs[child] = resolver.resolve(qualified, module)
            continue
        key = resolver.nearest_type(module)
        if key is not None and not isinstance(original, key):
            qconfigs[child] = resolver.resolve(qualified, module)
    new.set_child_qconfigs(qconfigs)
