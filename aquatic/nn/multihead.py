"""Quantization-aware :class:`torch.nn.MultiheadAttention`."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.functional.attention import additive_mask, quantized_attention
from aquatic.nn.base import QuantizedModule, copy_forward_hooks
from aquatic.nn.linear import Linear
from aquatic.qconfig import QConfig
from aquatic.quantizers.shared import link_shared_scales

__all__ = ["MultiheadAttention"]

#: The projection parameters, in torch's names.
_PROJECTIONS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_SHARED = _PROJECTIONS + ("in_proj_bias", "bias_k", "bias_v")
#: The matmul inputs, each quantized by QConfig.activation.
SIGNALS = ("q", "k", "v", "attention")


class MultiheadAttention(QuantizedModule, nn.MultiheadAttention):
    """:class:`torch.nn.MultiheadAttention` with quantized projections and matmul inputs.

    It takes the arguments of :class:`torch.nn.MultiheadAttention` (same names, order
    and defaults) and, keyword only, ``qconfig``. With ``qconfig=None``, or a QConfig
    whose fields are all ``None``, ``forward`` is torch's own (its fused inference path
    included), bit for bit, and the ``state_dict`` is torch's.

    With quantizers, ``forward`` is always the explicit computation below (torch's fused
    ``_native_multi_head_attention`` kernel, which would read the float weights, never
    runs, in training or in eval under ``no_grad`` alike). Which QConfig field drives
    which quantizer:

    ============================  ==================  =======================================
    quantizer                      QConfig field       what it quantizes
    ============================  ==================  =======================================
    ``in_proj_weight`` (or         ``weight``          the input projections
    ``q/k/v_proj_weight``)
    ``in_proj_bias``               ``bias``            their bias
    ``q``, ``k``, ``v``            ``activation``      the projected queries, keys, values
                                                       (the inputs of the two matmuls)
    ``attention``                  ``activation``      the attention weights (after softmax)
    ``out_proj.quantizers``        ``weight``,         the output projection (an
                                   ``bias``,           :class:`aquatic.nn.Linear`) and the
                                   ``activation``      layer's output
    ============================  ==================  =======================================

    ``bias_k`` / ``bias_v`` (``add_bias_kv``) join the keys and values before the ``k`` and
    ``v`` quantizers. The computation is :func:`aquatic.functional.quantized_attention`.

    Args:
        qconfig: what to quantize, and how; keyword only.

    Shape:
        As :class:`torch.nn.MultiheadAttention`.

    Raises:
        ValueError: ``QConfig.bias`` follows the input scale
            (:class:`~aquatic.quantizers.AccumulatorBiasQuantizer`), which the three input
            projections, read from up to three inputs, do not share.

    Example:
        >>> import torch, aquatic
        >>> mha = aquatic.nn.MultiheadAttention(8, 2, batch_first=True, qconfig=aquatic.qconfig.int8)
        >>> sorted(mha.quantizers)
        ['attention', 'in_proj_weight', 'k', 'q', 'v']
        >>> x = torch.randn(3, 5, 8)
        >>> out, weights = mha(x, x, x)
        >>> out.shape, weights.shape
        (torch.Size([3, 5, 8]), torch.Size([3, 5, 5]))
    """

    _float_module = nn.MultiheadAttention
    _quantized_params = {name: "weight" for name in _PROJECTIONS}
    _quantized_params.update(in_proj_bias="bias")
    _quantizes_output = False  # out_proj quantizes the output
    _quantized_states = SIGNALS  # not parameters: quantize_params and to_int skip them

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(
            embed_dim,
            num_heads,
            dropout,
            bias,
            add_bias_kv,
            add_zero_attn,
            kdim,
            vdim,
            batch_first,
            device,
            dtype,
        )
        self._init_quantizers(qconfig)
        quantizer = self.quantizers["in_proj_bias"] if "in_proj_bias" in self.quantizers else None
        if getattr(quantizer, "follows_input_scale", False):
            raise ValueError(
                f"MultiheadAttention: QConfig.bias is {type(quantizer).__name__}, whose scale "
                "follows one input and weight scale, which the q, k and v projections do not "
                "share; use a bias quantizer with a scale of its own, e.g. "
                "UniformQuantizer.with_args(bits=16)"
            )
        if qconfig is not None and qconfig.activation is not None:
            for name in SIGNALS:
                self.quantizers[name] = qconfig.activation()
            link_shared_scales(self.quantizers.values())
        if qconfig is not None and not qconfig.is_empty():
            out = Linear(embed_dim, embed_dim, bias, device="meta", dtype=dtype, qconfig=qconfig)
            out.weight, out.bias = self.out_proj.weight, self.out_proj.bias
            self.out_proj = out
        if self.out_proj.weight.device.type != "meta":  # from_float moves them itself
            _move_quantizers(self, self.out_proj.weight.device)

    # -- conversion ---------------------------------------------------------------------

    @classmethod
    def _twin_kwargs(cls, module: nn.MultiheadAttention) -> Dict[str, Any]:
        return dict(
            embed_dim=module.embed_dim,
            num_heads=module.num_heads,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            add_bias_kv=module.bias_k is not None,
            add_zero_attn=module.add_zero_attn,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
        )

    @classmethod
    def from_float(
        cls, module: nn.MultiheadAttention, qconfig: Optional[QConfig] = None
    ) -> "MultiheadAttention":
        """An aquatic layer that shares ``module``'s parameters (and their device, dtype,
        ``requires_grad``), hooks and training mode, quantized as ``qconfig`` says.

        Raises:
            TypeError: if ``module`` is not exactly a ``torch.nn.MultiheadAttention``.
        """
        cls._check_float_twin(module)
        weight = module.out_proj.weight
        new = cls(**cls._twin_kwargs(module), device="meta", dtype=weight.dtype, qconfig=qconfig)
        _share(module, new)
        new.train(module.training)
        return new

    def to_float(self, baked: bool = True) -> nn.MultiheadAttention:
        """The torch twin: with ``baked``, holding copies of the quantized parameter
        values; else sharing this layer's float parameters and hooks. The quantizers of
        q, k, v, the attention weights and the output are dropped."""
        weight = self.out_proj.weight
        module = nn.MultiheadAttention(**self._twin_kwargs(self), device="meta", dtype=weight.dtype)
        if not baked:
            _share(self, module)
        else:
            values = self.quantize_params()
            out = self.out_proj
            if isinstance(out, Linear):
                values.update({"out_" + k: v for k, v in out.quantize_params().items()})
            params = {name: getattr(self, name) for name in _SHARED}
            params.update(out_weight=out.weight, out_bias=out.bias)
            copies = {}
            for name, param in params.items():
                if param is not None:
                    value = values.get(name, param).detach().clone()
                    copies[name] = nn.Parameter(value, requires_grad=param.requires_grad)
            for name in _SHARED:
                if name in copies:
                    setattr(module, name, copies[name])
            module.out_proj.weight = copies["out_weight"]
            if "out_bias" in copies:
                module.out_proj.bias = copies["out_bias"]
        module.train(self.training)
        return module

    # -- forward ------------------------------------------------------------------------

    def is_quantized(self) -> bool:
        """Whether any quantizer is set (here or in ``out_proj``): then ``forward`` is
        the explicit quantized computation, never torch's fused path."""
        own, out = self._modules.get("quantizers"), self._modules.get("out_proj")
        out = None if out is None else out._modules.get("quantizers")
        return bool(own is not None and len(own)) or bool(out is not None and len(out))

    # torch's TransformerEncoderLayer and TransformerEncoder take their fused paths,
    # which read in_proj_weight in float, only where this is true: never with quantizers,
    # even inside torch's own layers.
    @property
    def _qkv_same_embed_dim(self) -> bool:
        return self.__dict__.get("_same_dims", True) and not self.is_quantized()

    @_qkv_same_embed_dim.setter
    def _qkv_same_embed_dim(self, value: bool) -> None:
        self.__dict__["_same_dims"] = value

    def _projections(self) -> Tuple[Tensor, Tensor, Tensor]:
        if self.__dict__.get("_same_dims", True):
            return self.quantized("in_proj_weight").chunk(3)
        return tuple(self.quantized(f"{n}_proj_weight") for n in "qkv")

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """As torch's ``forward``: ``(output, attention weights or None)``."""
        if not self.is_quantized():
            return super().forward(
                query,
                key,
                value,
                key_padding_mask,
                need_weights,
                attn_mask,
                average_attn_weights,
                is_causal,
            )
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "MultiheadAttention: query, key and value must all be 3-D (batched) or all "
                f"2-D (unbatched), got {query.dim()}-D, {key.dim()}-D and {value.dim()}-D"
            )
        if is_causal and attn_mask is None:
            raise ValueError(
                "MultiheadAttention: is_causal is a hint that attn_mask is causal; pass the "
                "mask too (e.g. nn.Transformer.generate_square_subsequent_mask(L))"
            )
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        length, batch, embed = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        if embed != self.embed_dim:
            raise ValueError(
                f"MultiheadAttention: expected {self.embed_dim} query features, got {embed}"
            )
        w_q, w_k, w_v = self._projections()
        bias = self.quantized("in_proj_bias")
        b_q, b_k, b_v = (None, None, None) if bias is None else bias.chunk(3)
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        mask = additive_mask(attn_mask, q.dtype, "attn_mask")
        padding = additive_mask(key_padding_mask, q.dtype, "key_padding_mask")
        if mask is not None and mask.dim() == 2:
            mask = mask.unsqueeze(0)
        extra = (self.bias_k is not None) + bool(self.add_zero_attn)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, batch, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, batch, 1)])
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(1, batch, embed)])
            v = torch.cat([v, v.new_zeros(1, batch, embed)])
        if extra:
            mask = None if mask is None else F.pad(mask, (0, extra))
            padding = None if padding is None else F.pad(padding, (0, extra))
        q, k, v = (
            x.reshape(x.shape[0], batch * heads, head_dim).transpose(0, 1) for x in (q, k, v)
        )
        if padding is not None:
            padding = padding.view(batch, 1, 1, -1).expand(-1, heads, -1, -1)
            padding = padding.reshape(batch * heads, 1, -1)
            mask = padding if mask is None else mask + padding
        quantizers = self._modules["quantizers"]._modules
        output, weights = quantized_attention(
            q,
            k,
            v,
            mask,
            self.dropout,
            self.training,
            *(quantizers.get(name) for name in SIGNALS),
        )
        output = output.transpose(0, 1).reshape(length * batch, embed)
        output = self.out_proj(output).view(length, batch, embed)
        if self.batch_first and batched:
            output = output.transpose(0, 1)
        elif not batched:
            output = output.squeeze(1)
        if not need_weights:
            return output, None
        weights = weights.view(batch, heads, length, -1)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return output, weights if batched else weights.squeeze(0)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        self._keep_quantizer_state(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _share(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the parameters and forward hooks of ``source``."""
    for name in _SHARED:
        param = getattr(source, name)
        if param is not None:
            setattr(target, name, param)
    target.out_proj.weight = source.out_proj.weight
    target.out_proj.bias = source.out_proj.bias
    _move_quantizers(target, source.out_proj.weight.device)
    copy_forward_hooks(source, target)


def _move_quantizers(layer: nn.Module, device: torch.device) -> None:
    """Move the quantizers of ``layer`` and of its output projection to ``device``."""
    for module in (layer, layer.out_proj):
        quantizers = module._modules.get("quantizers")
        if quantizers is not None:
            quantizers.to(device)
