"""The graph step of :func:`aquatic.quantize` for models that are not ``nn.Sequential``."""

from __future__ import annotations

import warnings

from torch import fx, nn

from aquatic.graph.insert import QConfigFor, insert_quantizers
from aquatic.graph.trace import GraphCaptureError, is_leaf, trace

__all__ = ["capture", "follows_graph"]


def follows_graph(model: nn.Module) -> bool:
    """Whether :func:`aquatic.quantize` follows ``model``'s ``forward`` as a graph: a
    module of one's own (or an ``fx.GraphModule``) with layers inside; ``nn.Sequential``
    and single layers keep the layer-by-layer path."""
    if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) or is_leaf(model):
        return False
    if type(model).forward is nn.Module.forward:
        return False  # a holder of layers without a forward of its own
    return isinstance(model, fx.GraphModule) or any(True for _ in model.children())


def capture(model: nn.Module, qconfig_for: QConfigFor) -> nn.Module:
    """``model`` (its layers already swapped) as an ``fx.GraphModule`` with input
    quantizers and ``Add``/``Mul``/``Cat`` inserted; ``model`` itself, with a
    ``UserWarning`` saying why, when its ``forward`` cannot be traced."""
    try:
        gm = trace(model, "aquatic.quantize")
    except GraphCaptureError as error:
        warnings.warn(
            f"{error}. The layers are quantized, but no input quantizer and no quantizers "
            "where tensors meet were inserted, so aquatic.convert cannot follow this model",
            UserWarning,
            stacklevel=3,
        )
        return model
    insert_quantizers(gm, qconfig_for)
    gm.train(model.training)
    for name, module in model.named_modules():
        if name:
            try:
                gm.get_submodule(name).train(module.training)
            except AttributeError:
                pass
    return gm
