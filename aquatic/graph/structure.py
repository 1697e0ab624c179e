"""What :func:`aquatic.quantize` reads from a model's dataflow before it swaps layers:
the layer and batch-norm pairs it fuses, and the layers whose output is the model's.

For ``nn.Sequential`` models both come from the order of the layers
(:func:`aquatic.fuse.sequential_bn_pairs`, :func:`aquatic.walk.output_layers`); for a
model with a ``forward`` of its own they come from its traced graph, so a ResNet's
``conv1 -> bn1`` pairs fuse and its final ``fc`` is the output layer.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from torch import fx, nn

from aquatic.fuse import FUSED, sequential_bn_pairs
from aquatic.graph.capture import follows_graph
from aquatic.graph.trace import GraphCaptureError, trace
from aquatic.walk import output_layers as sequential_output_layers
from aquatic.walk import shared_uses

__all__ = ["bn_pairs", "output_layers"]


def _graph(model: nn.Module) -> Optional[fx.GraphModule]:
    """The traced graph, or ``None`` where the model is not followed as a graph or its
    ``forward`` cannot be traced (:func:`aquatic.quantize` warns about that itself)."""
    if not follows_graph(model):
        return None
    try:
        return trace(model, "aquatic.quantize")
    except GraphCaptureError:
        return None


def bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """``(layer_name, bn_name)`` of each ``torch.nn`` conv/linear layer whose output goes
    only to its batch norm (a pair of :data:`aquatic.fuse.FUSED`), neither module used
    anywhere else; in ``nn.Sequential`` containers and, for a model of one's own, along
    its traced ``forward``.

    Example:
        >>> import torch
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        ...     def forward(self, x):
        ...         return torch.relu(self.bn(self.conv(x))) + x
        >>> Block.__module__ = "my_models"  # a class of one's own, not one of aquatic's
        >>> bn_pairs(Block())
        [('conv', 'bn')]
    """
    pairs = sequential_bn_pairs(model)
    gm = _graph(model)
    if gm is None:
        return pairs
    shared = shared_uses(model)
    seen = {layer for layer, _ in pairs}
    for node in gm.graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or user.args[:1] != (node,) or node.target in seen:
            continue
        layer, bn = model.get_submodule(node.target), model.get_submodule(user.target)
        fusable = (type(layer), type(bn)) in FUSED and bn.track_running_stats
        if fusable and id(layer) not in shared and id(bn) not in shared:
            pairs.append((node.target, user.target))
            seen.add(node.target)
    return pairs


def _passes_on(gm: fx.GraphModule, node: fx.Node) -> Optional[fx.Node]:
    """The one tensor input of a node that only passes values on (a function or method
    such as ``flatten``/``relu``/indexing, or a module without parameters or
    quantizers), else ``None``."""
    inputs = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
    if len(inputs) != 1:
        return None
    if node.op in ("call_function", "call_method"):
        return inputs[0]
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if next(module.parameters(), None) is None and not hasattr(module, "quantizers"):
            return inputs[0]
    return None


def output_layers(model: nn.Module) -> List[str]:
    """Qualified names of the layers whose output is the model's output: for
    ``nn.Sequential``, :func:`aquatic.walk.output_layers`; for a model of one's own, the
    layers that feed its ``return`` through operations that only pass values on
    (``torch.flatten``, ``relu``, ``x[:, -1]``...). :func:`aquatic.quantize` leaves their
    activation quantizer off unless asked.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 2)
        ...     def forward(self, x):
        ...         return self.head(self.body(x).relu()).flatten(1)
        >>> Net.__module__ = "my_models"  # a class of one's own, not one of aquatic's
        >>> output_layers(Net())
        ['head']
    """
    gm = _graph(model)
    if gm is None:
        return sequential_output_layers(model)
    names: List[str] = []
    for node in gm.graph.nodes:
        if node.op != "output":
            continue
        for start in node.all_input_nodes:
            current: Optional[fx.Node] = start
            while current is not None and current.op != "placeholder":
                if current.op == "call_module" and _passes_on(gm, current) is None:
                    if current.target not in names:
                        names.append(current.target)
                    break
                current = _passes_on(gm, current)
    return names
