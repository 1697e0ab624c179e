"""Fold batch normalisation into the convolution (or linear layer) before it.

In inference, batch norm is an affine map per channel with its running statistics,

.. math::  \\mathrm{BN}(y) = \\gamma\\, \\frac{y - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta,

so applied to :math:`y = W * x + b` it equals one convolution with

.. math::

    W' = W\\, \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
    b' = (b - \\mu)\\, \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta

(per output channel; Jacob et al. 2018, section 3.2). Integer hardware has no batch
norm, so fold before quantization-aware training (the weights that get quantized are
then the ones that run) or before export.
"""

from __future__ import annotations

import copy
import warnings
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from aquatic.walk import adjacent_pairs, shared_uses
from aquatic.observers import RangeObserver
from aquatic.quantizers.learned import LSQQuantizer

__all__ = ["fold_batch_norm"]


def _check_pair(conv: nn.Module, bn: nn.Module, where: str) -> None:
    if not isinstance(conv, (_ConvNd, nn.Linear)):
        raise TypeError(
            f"{where}: expected a convolution or linear layer before the batch norm, "
            f"got {type(conv).__name__}"
        )
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"{where}: expected a BatchNorm layer, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"{where}: the batch norm keeps no running statistics "
            "(track_running_stats=False), so there is nothing fixed to fold"
        )
    out_channels = conv.out_features if isinstance(conv, nn.Linear) else conv.out_channels
    if bn.num_features != out_channels:
        raise ValueError(
            f"{where}: the batch norm has {bn.num_features} features but the layer before "
            f"it has {out_channels} output channels"
        )


def _check_not_shared(
    shared: Dict[int, List[str]], module: nn.Module, name: str, where: str
) -> None:
    # Folding rewrites the layer's weights (or removes the batch norm) at every place
    # the module object is used, while the batch norm applies after one use only.
    uses = shared.get(id(module))
    if uses:
        raise ValueError(
            f"{where}: {name!r} ({type(module).__name__}) is one module used {len(uses)} "
            f"times (as {', '.join(map(repr, uses))}); folding would change all its uses "
            "but the batch norm follows one. Use two separate layers (e.g. a "
            "copy.deepcopy for each use) before folding"
        )


@torch.no_grad()
def _reset_quantizers(conv: nn.Module, name: str) -> None:
    """Make the quantizers of a folded aquatic layer forget what they saw before the fold:
    range observers and LSQ scales re-observe on the next forward pass."""
    quantizers = getattr(conv, "quantizers", None)
    if not isinstance(quantizers, nn.ModuleDict):
        return
    kept = []
    for field, quantizer in quantizers.items():
        reset = False
        for module in quantizer.modules():
            if isinstance(module, RangeObserver):
                module.min_val.fill_(float("inf"))
                module.max_val.fill_(float("-inf"))
                module.initialized = False
                reset = True
            elif isinstance(module, LSQQuantizer):
                module.initialized = False  # re-initializes its scale from the next batch
                reset = True
        fixed = getattr(quantizer, "observer", True) is None  # a scale given by hand
        if not reset and (fixed or any(True for _ in quantizer.parameters())):
            kept.append(f"{field} ({type(quantizer).__name__})")
    if kept:
        warnings.warn(
            f"fold_batch_norm: layer {name!r} keeps the fixed or learned scales of its "
            f"quantizers {', '.join(kept)}, chosen for the values before the fold; "
            "fine-tune (or rebuild them) before converting",
            UserWarning,
            stacklevel=3,
        )


@torch.no_grad()
def _fold(conv: nn.Module, bn: _BatchNorm) -> None:
    weight = conv.weight
    # float64 for the arithmetic, then back to the parameter's dtype
    factor = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        factor = factor * bn.weight.double()
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(factor)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(factor)
    new_bias = (bias - bn.running_mean.double()) * factor + shift
    if isinstance(conv, _ConvNd) and conv.transposed:
        # (in, out / groups, *kernel): output channel g * (out / groups) + j
        groups = conv.groups
        shape = weight.shape
        grouped = weight.double().reshape(groups, shape[0] // groups, shape[1], *shape[2:])
        scale = factor.reshape(groups, 1, shape[1], *([1] * (weight.dim() - 2)))
        new_weight = (grouped * scale).reshape(shape)
    else:
        new_weight = weight.double() * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    weight.copy_(new_weight.to(weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(
            new_bias.to(weight.dtype).to(weight.device), requires_grad=weight.requires_grad
        )
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))


def _sequential_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    return adjacent_pairs(
        model, lambda a, b: isinstance(a, (_ConvNd, nn.Linear)) and isinstance(b, _BatchNorm)
    )


def fold_batch_norm(
    model: nn.Module,
    pairs: Optional[Iterable[Tuple[str, str]]] = None,
    inplace: bool = False,
) -> nn.Module:
    """Fold each batch norm into the convolution or linear layer that feeds it.

    The layer's weight and bias take the batch norm's running statistics and affine
    parameters (a bias is created where there was none), and the batch norm becomes
    ``nn.Identity``. In eval mode the folded model computes what the original did, up
    to float rounding. Works for ``torch.nn`` and ``aquatic.nn`` convolutions (also
    transposed, any ``groups``) and linear layers.

    Folding an already quantized ``aquatic.nn`` layer resets what its quantizers
    (weight, bias, activation) observed before the fold: range observers and LSQ
    scales start afresh and re-observe on the next forward pass (in training mode, or
    the first one in eval mode), so run a calibration pass (or keep training) before
    :func:`aquatic.convert`. Quantizers with a scale set by hand or learned (PACT) keep
    it, with a ``UserWarning`` naming them.

    A layer or batch norm used more than once in the model (the same module object
    twice, e.g. in ``nn.Sequential(conv, bn, conv, bn)``) is refused: the fold would
    change every use of the layer while the batch norm follows one of them.

    Args:
        model: the model.
        pairs: ``(layer_name, batch_norm_name)`` qualified names to fold; ``None``
            folds every layer directly followed by a batch norm inside an
            ``nn.Sequential`` (a forward that is not sequential needs the pairs).
        inplace: change ``model`` itself rather than a copy.

    Returns:
        The model with batch norms folded.

    Raises:
        TypeError, ValueError: a pair names the wrong kinds of module, a batch norm
            without running statistics, mismatched channel counts, or a layer or batch
            norm that is used more than once; all pairs are checked before anything
            changes.

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> folded = aquatic.fold_batch_norm(model)
        >>> folded
        Sequential(
          (0): Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1))
          (1): Identity()
          (2): ReLU()
        )
        >>> x = torch.randn(2, 1, 6, 6)
        >>> torch.allclose(folded(x), model(x), atol=1e-6)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if pairs is None:
        pairs = _sequential_pairs(model)
    else:
        pairs = [tuple(pair) for pair in pairs]
        for pair in pairs:
            if len(pair) != 2 or not all(isinstance(name, str) for name in pair):
                raise TypeError(
                    f"pairs must hold (layer_name, batch_norm_name) string pairs, got {pair!r}"
                )
    if not inplace:
        model = copy.deepcopy(model)
    shared = shared_uses(model)
    resolved = []
    for conv_name, bn_name in pairs:
        where = f"fold_batch_norm({conv_name!r}, {bn_name!r})"
        try:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        except AttributeError as error:
            raise ValueError(f"{where}: {error}") from None
        _check_pair(conv, bn, where)
        _check_not_shared(shared, conv, conv_name, where)
        _check_not_shared(shared, bn, bn_name, where)
        resolved.append((conv, conv_name, bn_name, bn))
    for conv, conv_name, bn_name, bn in resolved:
        _fold(conv, bn)
        _reset_quantizers(conv, conv_name)
        parent_name, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, nn.Identity())
    return model
