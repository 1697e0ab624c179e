"""Quantization-aware :class:`torch.nn.Embedding` and :class:`torch.nn.EmbeddingBag`.

The table (``weight``) is quantized by ``QConfig.weight``; a per-channel weight
quantizer with ``ch_axis=0`` gives every row (every token) a scale of its own, as
torch.ao's quantized embeddings do. ``QConfig.activation`` quantizes the output.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.nn.base import copy_forward_hooks
from aquatic.nn.twin import TorchTwin
from aquatic.qconfig import QConfig

__all__ = ["Embedding", "EmbeddingBag"]


class _TableTwin(TorchTwin):
    """What the two embedding twins share: a weight without a bias."""

    _quantized_params = {"weight": "weight"}
    _weight_out_axis = 0

    def _check_table_options(self) -> None:
        if "weight" in self.quantizers and self.sparse:
            raise ValueError(
                f"{type(self).__name__}: sparse=True gives sparse gradients, which a weight "
                "quantizer (straight-through, over the whole table) cannot; use sparse=False "
                "or leave QConfig.weight None"
            )

    def _check_indices(self, input: Tensor) -> None:
        if not isinstance(input, Tensor):
            raise TypeError(
                f"{type(self).__name__} takes a tensor of indices, got {type(input).__name__}"
            )
        if input.is_floating_point() or input.is_complex() or input.dtype == torch.bool:
            raise TypeError(
                f"{type(self).__name__} takes integer indices (torch.long or torch.int), got "
                f"{input.dtype}; convert with input.long()"
            )

    def _table(self, input: Tensor) -> Tensor:
        """The weight as ``forward`` uses it (rows renormalized first, with ``max_norm``)."""
        if self.max_norm is not None:
            # torch renormalizes the float rows in place; the quantizer then reads them.
            with torch.no_grad():
                torch.embedding_renorm_(self.weight, input, self.max_norm, self.norm_type)
        return self.quantized("weight")

    @classmethod
    def from_float(cls, module: nn.Module, qconfig: Optional[QConfig] = None) -> "_TableTwin":
        """An aquatic layer that shares ``module``'s weight (and its device, dtype,
        ``requires_grad``), hooks and training mode, quantized as ``qconfig`` says.

        Raises:
            TypeError: if ``module`` is not exactly the twin class.
        """
        cls._check_float_twin(module)
        new = cls(
            **cls._twin_kwargs(module), device="meta", dtype=module.weight.dtype, qconfig=qconfig
        )
        new.weight = module.weight
        new.quantizers.to(module.weight.device)
        copy_forward_hooks(module, new)
        new.train(module.training)
        return new

    def to_float(self, baked: bool = True) -> nn.Module:
        """The torch twin: with ``baked``, holding a copy of the quantized table; else
        sharing this layer's float weight and hooks. The activation quantizer is dropped."""
        module = self._float_module(
            **self._twin_kwargs(self), device="meta", dtype=self.weight.dtype
        )
        if baked:
            value = self.quantize_params().get("weight", self.weight).detach().clone()
            module.weight = nn.Parameter(value, requires_grad=self.weight.requires_grad)
        else:
            module.weight = self.weight
            copy_forward_hooks(self, module)
        module.train(self.training)
        return module


class Embedding(_TableTwin, nn.Embedding):
    """:class:`torch.nn.Embedding` whose table and output are quantized by ``qconfig``.

    The output is the rows of the quantized table, :math:`\\hat{W}[i]`, then the
    activation quantizer. With ``qconfig=None``, or a QConfig whose fields are all
    ``None``, ``forward`` is :class:`torch.nn.Embedding`'s own, bit for bit, and the
    ``state_dict`` is torch's.

    Args:
        num_embeddings, embedding_dim, padding_idx, max_norm, norm_type,
        scale_grad_by_freq, sparse, device, dtype: as :class:`torch.nn.Embedding`
            (``max_norm`` renormalizes the float rows, which are then quantized).
        qconfig: ``weight`` quantizes the table (``ch_axis=0``: one scale per row),
            ``activation`` the output; keyword only.

    Shape:
        - Input: :math:`(*)` integer indices. Output: :math:`(*, H)`.

    Raises:
        ValueError: ``sparse=True`` with a weight quantizer.
        TypeError: (in ``forward``) indices that are not integers.

    Example:
        >>> import torch, aquatic
        >>> from aquatic.quantizers import UniformQuantizer
        >>> per_row = aquatic.QConfig(weight=UniformQuantizer.with_args(bits=4, ch_axis=0))
        >>> emb = aquatic.nn.Embedding(10, 3, qconfig=per_row)
        >>> emb(torch.tensor([[1, 2], [3, 9]])).shape
        torch.Size([2, 2, 3])
        >>> emb.to_int()["weight"]["scale"].shape  # one scale per row
        torch.Size([10])
    """

    _float_module = nn.Embedding

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: Optional[int] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        _freeze: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            _weight,
            _freeze,
            device,
            dtype,
        )
        self._init_quantizers(qconfig)
        self._check_table_options()

    @classmethod
    def _twin_kwargs(cls, module: nn.Embedding) -> Dict[str, Any]:
        return dict(
            num_embeddings=module.num_embeddings,
            embedding_dim=module.embedding_dim,
            padding_idx=module.padding_idx,
            max_norm=module.max_norm,
            norm_type=module.norm_type,
            scale_grad_by_freq=module.scale_grad_by_freq,
            sparse=module.sparse,
        )

    def forward(self, input: Tensor) -> Tensor:
        if not self._modules["quantizers"]._modules:
            return super().forward(input)
        self._check_indices(input)
        output = F.embedding(
            input,
            self._table(input),
            self.padding_idx,
            None,
            self.norm_type,
            self.scale_grad_by_freq,
            False,
        )
        return self.quantize_output(output)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


class EmbeddingBag(_TableTwin, nn.EmbeddingBag):
    """:class:`torch.nn.EmbeddingBag` whose table and output are quantized by ``qconfig``.

    Each bag reduces rows of the quantized table :math:`\\hat{W}` (``mode`` ``"sum"``,
    ``"mean"`` or ``"max"``), then the activation quantizer. With ``qconfig=None``, or
    a QConfig whose fields are all ``None``, ``forward`` is
    :class:`torch.nn.EmbeddingBag`'s own, bit for bit, and the ``state_dict`` is torch's.

    Args:
        num_embeddings, embedding_dim, max_norm, norm_type, scale_grad_by_freq, mode,
        sparse, include_last_offset, padding_idx, device, dtype: as
            :class:`torch.nn.EmbeddingBag`.
        qconfig: ``weight`` quantizes the table (``ch_axis=0``: one scale per row),
            ``activation`` the reduced output; keyword only.

    Shape:
        As :class:`torch.nn.EmbeddingBag`: input :math:`(B, N)` bags of equal size, or
        a 1-D input with ``offsets``; output :math:`(B, H)`.

    Example:
        >>> import torch, aquatic
        >>> bag = aquatic.nn.EmbeddingBag(10, 3, mode="sum", qconfig=aquatic.qconfig.int8)
        >>> bag(torch.tensor([[1, 2, 4], [4, 3, 9]])).shape
        torch.Size([2, 3])
    """

    _float_module = nn.EmbeddingBag

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
        device: Any = None,
        dtype: Any = None,
        *,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"EmbeddingBag: mode must be 'sum', 'mean' or 'max', got {mode!r}")
        super().__init__(
            num_embeddings,
            embedding_dim,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            mode,
            sparse,
            _weight,
            include_last_offset,
            padding_idx,
            device,
            dtype,
        )
        self._init_quantizers(qconfig)
        self._check_table_options()

    @classmethod
    def _twin_kwargs(cls, module: nn.EmbeddingBag) -> Dict[str, Any]:
        return dict(
            num_embeddings=module.num_embeddings,
            embedding_dim=module.embedding_dim,
            max_norm=module.max_norm,
            norm_type=module.norm_type,
            scale_grad_by_freq=module.scale_grad_by_freq,
            mode=module.mode,
            sparse=module.sparse,
            include_last_offset=module.include_last_offset,
            padding_idx=module.padding_idx,
        )

    def forward(
        self,
        input: Tensor,
        offsets: Optional[Tensor] = None,
        per_sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        if not self._modules["quantizers"]._modules:
            return super().forward(input, offsets, per_sample_weights)
        self._check_indices(input)
        output = F.embedding_bag(
            input,
            self._table(input),
            offsets,
            None,
            self.norm_type,
            self.scale_grad_by_freq,
            self.mode,
            False,
            per_sample_weights,
            self.include_last_offset,
            self.padding_idx,
        )
        return self.quantize_output(output)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()
