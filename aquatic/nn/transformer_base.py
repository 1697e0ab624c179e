"""What the quantization-aware transformer layers share (:mod:`aquatic.nn.transformer`):
children built as twins with one QConfig, and quantized residual sums."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from torch import Tensor, nn

from aquatic.nn.base import QuantizedModule, copy_forward_hooks
from aquatic.nn.layer_norm import LayerNorm
from aquatic.nn.linear import Linear
from aquatic.nn.multihead import MultiheadAttention
from aquatic.qconfig import QConfig

__all__ = ["TransformerLayerTwin", "norm_twin"]


def norm_twin(norm: nn.Module, qconfig: Optional[QConfig]) -> nn.Module:
    """``norm`` as an :class:`aquatic.nn.LayerNorm` quantized by ``qconfig`` where that
    has an activation quantizer (the output grid an integer model needs), else as the
    float ``torch.nn.LayerNorm``; the parameters are shared."""
    if isinstance(norm, LayerNorm):
        norm = norm.to_float(baked=False)
    if qconfig is None or qconfig.activation is None:
        return norm
    return LayerNorm.from_float(norm, qconfig)


class TransformerLayerTwin(QuantizedModule):
    """What the encoder and decoder layers share: their attention blocks, feed-forward
    layers and (with ``QConfig.activation``) norms are twins built with one QConfig, and
    each residual sum :math:`x + f(x)` passes through a quantizer ``residual1``,
    ``residual2``, ... (``QConfig.activation``) of the layer's own."""

    _float_module: type = nn.Module
    _attention: Tuple[str, ...] = ("self_attn",)
    _linears = ("linear1", "linear2")
    _norms: Tuple[str, ...] = ("norm1", "norm2")
    _quantizes_output = False  # the last residual quantizer or norm quantizes the output
    #: signals, not parameters: quantize_params and to_int skip them
    _quantized_states: Tuple[str, ...] = ("residual1", "residual2")

    def _quantize_children(self, qconfig: Optional[QConfig]) -> None:
        self._init_quantizers(qconfig)
        for name in self._attention:
            setattr(self, name, MultiheadAttention.from_float(getattr(self, name), qconfig))
        for name in self._linears:
            setattr(self, name, Linear.from_float(getattr(self, name), qconfig))
        for name in self._norms:
            setattr(self, name, norm_twin(getattr(self, name), qconfig))
        self._init_residuals(qconfig)

    def _init_residuals(self, qconfig: Optional[QConfig]) -> None:
        if qconfig is not None and qconfig.activation is not None:
            for name in self._quantized_states:
                self.quantizers[name] = qconfig.activation()

    def residual(self, index: int, total: Tensor) -> Tensor:
        """The residual sum ``total`` through quantizer ``residual{index}``, if any."""
        quantizer = self._modules["quantizers"]._modules.get(f"residual{index}")
        return total if quantizer is None else quantizer(total)

    def child_names(self) -> Tuple[str, ...]:
        """The children built as twins: attention blocks, feed-forward layers, norms."""
        return self._attention + self._linears + self._norms

    def set_child_qconfigs(self, qconfigs: Dict[str, Optional[QConfig]]) -> None:
        """Rebuild the named children (see :meth:`child_names`) with a QConfig of their
        own (``None``: unquantized; a norm is quantized only by a QConfig with an
        activation quantizer), around the same float parameters; others are kept.
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
            if name in self._norms:
                setattr(self, name, norm_twin(child, qconfig))
            elif child.qconfig != qconfig:
                setattr(self, name, type(child).from_float(child.to_float(baked=False), qconfig))

    def is_quantized(self) -> bool:
        """Whether the layer, an attention block, a feed-forward layer or a norm has a
        quantizer: then ``forward`` is the explicit computation, never torch's fused one."""
        if len(self._modules["quantizers"]) or any(
            getattr(self, name).is_quantized() for name in self._attention
        ):
            return True
        others = self._linears + self._norms
        return any(len(getattr(getattr(self, n), "quantizers", ())) for n in others)

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
        return [n for n in names if n not in self.child_names()]

    @classmethod
    def from_float(
        cls, module: nn.Module, qconfig: Optional[QConfig] = None
    ) -> "TransformerLayerTwin":
        """A layer that shares ``module``'s parameters, hooks and training mode, its
        attention blocks, feed-forward layers and norms rebuilt as twins with ``qconfig``.

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
        for name in cls._norms:
            setattr(new, name, norm_twin(getattr(module, name), qconfig))
        new._init_quantizers(qconfig)
        new._init_residuals(qconfig)
        new.quantizers.to(module.linear1.weight.device)
        copy_forward_hooks(module, new)
        new.train(module.training)
        return new

    def to_float(self, baked: bool = True) -> nn.Module:
        """The torch layer: its attention blocks, feed-forward layers and norms as their
        torch twins (``baked``: holding the quantized values). The residual quantizers
        are dropped."""
        dtype = self.linear1.weight.dtype
        module = self._float_module(**self._twin_kwargs(self), device="meta", dtype=dtype)
        for name in self._children_names():
            setattr(module, name, getattr(self, name))
        for name in self._attention + self._linears:
            setattr(module, name, getattr(self, name).to_float(baked))
        for name in self._norms:
            norm = getattr(self, name)
            setattr(module, name, norm.to_float(baked) if isinstance(norm, LayerNorm) else norm)
        if not baked:
            copy_forward_hooks(self, module)
        module.train(self.training)
        return module

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        self._keep_quantizer_state(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
