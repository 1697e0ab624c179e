"""Finding ``layer -> BatchNorm`` pairs and fusing them for quantization-aware training.

:func:`aquatic.quantize` fuses every pair it finds inside ``nn.Sequential`` containers
(:func:`sequential_bn_pairs`); graph capture, which finds pairs in a traced forward,
calls :func:`fuse_conv_bn` for each.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from aquatic.nn.conv_bn import ConvBn1d, ConvBn2d, ConvBn3d, LinearBn1d
from aquatic.nn.fused_bn import FusedBatchNorm
from aquatic.qconfig import QConfig
from aquatic.walk import adjacent_pairs, shared_uses

__all__ = ["FUSED", "fold_fused", "fuse_conv_bn", "fused_pair", "sequential_bn_pairs"]

#: (torch layer type, torch batch norm type) -> the fused aquatic layer.
FUSED: Dict[Tuple[type, type], type] = {
    (nn.Conv1d, nn.BatchNorm1d): ConvBn1d,
    (nn.Conv2d, nn.BatchNorm2d): ConvBn2d,
    (nn.Conv3d, nn.BatchNorm3d): ConvBn3d,
    (nn.Linear, nn.BatchNorm1d): LinearBn1d,
}


def _fusable(layer: nn.Module, bn: nn.Module) -> bool:
    return (type(layer), type(bn)) in FUSED and bn.track_running_stats


def sequential_bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """``(layer_name, bn_name)`` of every ``torch.nn`` conv/linear layer directly followed
    by its batch norm inside an ``nn.Sequential`` (exact types, see :data:`FUSED`),
    neither used anywhere else in the model."""
    shared = shared_uses(model)
    return adjacent_pairs(
        model,
        lambda a, b: _fusable(a, b) and id(a) not in shared and id(b) not in shared,
    )


def fused_pair(
    layer: nn.Module, bn: nn.Module, qconfig: Optional[QConfig], **options: Any
) -> nn.Module:
    """The fused aquatic layer of a ``torch.nn`` ``layer`` and the ``bn`` after it
    (parameters and batch norm shared).

    Raises:
        TypeError: the pair is not one of :data:`FUSED` (names the supported pairs).
    """
    fused = FUSED.get((type(layer), type(bn)))
    if fused is None:
        supported = ", ".join(f"{a.__name__} + {b.__name__}" for a, b in FUSED)
        raise TypeError(
            f"cannot fuse {type(layer).__name__} with {type(bn).__name__}; supported pairs: "
            f"{supported} (exact torch.nn types)"
        )
    return fused.from_modules(layer, bn, qconfig, **options)


def fuse_conv_bn(
    model: nn.Module, layer_name: str, bn_name: str, qconfig: Optional[QConfig], **options: Any
) -> nn.Module:
    """Replace the layer named ``layer_name`` by its fusion with the batch norm named
    ``bn_name``, and the batch norm by ``nn.Identity`` (in place).

    Args:
        model: the model holding both.
        layer_name, bn_name: qualified names (``model.get_submodule``).
        qconfig: what the fused layer quantizes.
        options: ``freeze_bn_after`` (see :class:`aquatic.nn.ConvBn2d`).

    Returns:
        The fused layer.

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
        >>> fused = fuse_conv_bn(model, "0", "1", aquatic.qconfig.int8)
        >>> [type(m).__name__ for m in model]
        ['ConvBn2d', 'Identity', 'ReLU']
    """
    try:
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
    except AttributeError as error:
        raise ValueError(f"fuse_conv_bn({layer_name!r}, {bn_name!r}): {error}") from None
    fused = fused_pair(layer, bn, qconfig, **options)
    for name, new in ((layer_name, fused), (bn_name, nn.Identity())):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return fused


def fold_fused(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every fused layer by :meth:`~aquatic.nn.FusedBatchNorm.folded`: the plain
    aquatic layer with the running statistics folded into its weight and bias, and the
    same quantizers. It computes what the fused layer computes in eval mode, and every
    export that knows ``aquatic.nn.Conv2d`` or ``Linear`` then reads the folded values.

    Args:
        model: a model with fused layers (after :func:`aquatic.quantize`).
        inplace: change ``model`` itself rather than a copy.

    Returns:
        The model, in the training mode it had.

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> qmodel = aquatic.quantize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
        ...                           aquatic.qconfig.int8)
        >>> _ = qmodel(torch.randn(4, 1, 5, 5))
        >>> type(fold_fused(qmodel)[0]).__name__
        'Conv2d'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, FusedBatchNorm):
        return model.folded()
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, FusedBatchNorm):
                parent._modules[name] = child.folded()
    return model
