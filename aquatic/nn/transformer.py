"""Quantization-aware :class:`torch.nn.TransformerEncoderLayer` and
:class:`torch.nn.TransformerDecoderLayer`.

Each is torch's layer whose attention blocks are :class:`aquatic.nn.MultiheadAttention`
and whose feed-forward layers are :class:`aquatic.nn.Linear`, all with the layer's
QConfig. The layer norms and residual sums stay in float. torch's
:class:`~torch.nn.TransformerEncoder` and :class:`~torch.nn.TransformerDecoder` stack
them as they are (they copy the layer they are given).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.nn.multihead import MultiheadAttention
from aquatic.nn.base import QuantizedModule, copy_forward_hooks
from aquatic.nn.linear import Linear
from aquatic.qconfig import QConfig

__all__ = [
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "follow_mapping",
    "fused_layers_left_in_float",
]

Activation = Union[str, Callable[[Tensor], Tensor]]


class _LayerTwin(QuantizedModule):
    """What the two layers share: their children are the twins, built with one QConfig."""

    _float_module: type = nn.Module
    _attention = ("self_attn",)
    _linears = ("linear1", "linear2")
    _quantizes_output = False  # linear2 and the attention blocks quantize their outputs

    def _quantize_children(self, qconfig: Optional[QConfig]) -> None:
        self._init_quantizers(qconfig)
        for name in self._attention:
            setattr(self, name, MultiheadAttention.from_float(getattr(self, name), qconfig))
        for name in self._linears:
            setattr(self, name, Linear.from_float(getattr(self, name), qconfig))

    def child_names(self) -> Tuple[str, ...]:
        """The children built as twins: attention blocks, then feed-forward layers."""
        return self._attention + self._linears

    def set_child_qconfigs(self, qconfigs: Dict[str, Optional[QConfig]]) -> None:
        """Rebuild the named children (see :meth:`child_names`) with a QConfig of their
        own (``None``: unquantized), around the same float parameters; others are kept.
        :func:`aquatic.quantize` calls it for children that its mapping names.

        Raises:
            ValueError: a name that is not one of :meth:`child_names`.
        """
        for name, qconfig in qconfigs.items():
            if name not in self.child_names():
                raise ValueError(
                    f"{type(self).__name__}: {name!r} is not one of {list(self.child_names())}"
                )
            child = getattr(self, name)
            if child.qconfig != qconfig:
                setattr(self, name, type(child).from_float(child.to_float(baked=False), qconfig))

    def is_quantized(self) -> bool:
        """Whether any attention block or feed-forward layer has a quantizer."""
        return any(getattr(self, name).is_quantized() for name in self._attention) or any(
            len(getattr(self, name).quantizers) for name in self._linears
        )

    @classmethod
    def _twin_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        activation = module.activation
        return dict(
            d_model=module.linear1.in_features,
            nhead=module.self_attn.num_heads,
            dim_feedforward=module.linear1.out_features,
            dropout=module.dropout.p,
            activation=activation,
            layer_norm_eps=module.norm1.eps,
            batch_first=module.self_attn.batch_first,
            norm_first=module.norm_first,
            bias=module.linear1.bias is not None,
        )

    def _children_names(self):
        names = [n for n in self._modules if n != "quantizers"]
        return [n for n in names if n not in self._attention + self._linears]

    @classmethod
    def from_float(cls, module: nn.Module, qconfig: Optional[QConfig] = None) -> "_LayerTwin":
        """A layer that shares ``module``'s parameters, norms, hooks and training mode,
        its attention blocks and feed-forward layers rebuilt as twins with ``qconfig``.

        Raises:
            TypeError: if ``module`` is not exactly the torch layer.
        """
        cls._check_float_twin(module)
        dtype = module.linear1.weight.dtype
        new = cls(**cls._twin_kwargs(module), device="meta", dtype=dtype, qconfig=None)
        for name in new._children_names():
            setattr(new, name, getattr(module, name))
        for name in cls._attention:
            setattr(new, name, MultiheadAttention.from_float(getattr(module, name), qconfig))
        for name in cls._linears:
            setattr(new, name, Linear.from_float(getattr(module, name), qconfig))
        new._init_quantizers(qconfig)
        copy_forward_hooks(module, new)
        new.train(module.training)
        return new

    def to_float(self, baked: bool = True) -> nn.Module:
        """The torch layer: its attention blocks and feed-forward layers as their torch
        twins (``baked``: holding the quantized values), its norms shared."""
        dtype = self.linear1.weight.dtype
        module = self._float_module(**self._twin_kwargs(self), device="meta", dtype=dtype)
        for name in self._children_names():
            setattr(module, name, getattr(self, name))
        for name in self._attention + self._linears:
            setattr(module, name, getattr(self, name).to_float(baked))
        if not baked:
            copy_forward_hooks(self, module)
        module.train(self.training)
        return module


class TransformerEncoderLayer(_LayerTwin, nn.TransformerEncoderLayer):
    """:class:`torch.nn.TransformerEncoderLayer` with quantized attention and feed-forward
    layers.

    It takes the arguments of :class:`torch.nn.TransformerEncoderLayer` and, keyword
    only, ``qconfig``, which ``self_attn`` (:class:`aquatic.nn.MultiheadAttention`: see
    its table of quantizers) and ``linear1``, ``linear2`` (:class:`aquatic.nn.Linear`)
    take. With ``qconfig=None`` it computes as torch's layer, bit for bit, fused
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
        if not (src.is_nested and self.is_quantized()):
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        sequences = src.unbind()
        lengths = torch.tensor([len(s) for s in sequences], device=src.device)
        padded = src.to_padded_tensor(0.0)
        steps = torch.arange(padded.shape[1], device=src.device)
        padding = steps[None, :] >= lengths[:, None]
        if not self.self_attn.batch_first:
            padded = padded.transpose(0, 1)
        output = super().forward(padded, src_mask, padding, is_causal)
        if not self.self_attn.batch_first:
            output = output.transpose(0, 1)
        return torch.nested.nested_tensor([o[: int(n)] for o, n in zip(output, lengths)])


class TransformerDecoderLayer(_LayerTwin, nn.TransformerDecoderLayer):
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
    if not isinstance(new, _LayerTwin):
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
