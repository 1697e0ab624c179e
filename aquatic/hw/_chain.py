"""The chain of layers of a model with a ``forward`` of its own (or a NIR-loaded graph),
for the chip exports: the chips here hold feed-forward chains of layers, so a graph
that branches or joins is refused with the operation named."""

from __future__ import annotations

from typing import List, Tuple

from torch import fx, nn

from aquatic.graph import kind, trace
from aquatic.graph.ops import is_tensor_op
from aquatic.interop.nir import NIRModule

__all__ = ["chain_layers"]

#: Operations between layers that the chips' layer sequences skip as they skip the
#: modules (``Flatten``, ``Unflatten``, ``Dropout``): reshapes such as folding the time
#: axis into the batch (``x.flatten(0, 1)`` ... ``.unflatten(0, (n, t))``).
_PASSIVE_OPS = ("flatten", "reshape", "dropout", "contiguous")


def _nir_chain(model: NIRModule, target: str, error: type) -> List[Tuple[str, nn.Module]]:
    sources = {}
    for source, dest in model.edges:
        sources.setdefault(dest, []).append(source)
    previous = model.input_name
    for name in model.names + [model.output_name]:
        if sources.get(name) != [previous]:
            raise error(
                f"{target} takes a chain of layers; the NIR graph's node {name!r} receives "
                f"edges from {sources.get(name)}, not from the node before it ({previous!r})"
            )
        previous = name
    return list(model.named_nodes())


def _one_use(node: fx.Node, target: str, model: str, error: type, sizes: set) -> None:
    users = [user for user in node.users if user.name not in sizes]
    if len(users) > 1:
        users = ", ".join(repr(user.name) for user in users)
        raise error(
            f"{target} takes a chain of layers; {node.name!r} (a graph node in the forward "
            f"of {model}) feeds {users}, a branch the chip cannot hold (residual sums, "
            "concatenation)"
        )


def chain_layers(model: nn.Module, target: str, error: type) -> List[Tuple[str, nn.Module]]:
    """``(name, layer)`` in running order for a model whose traced ``forward`` (or
    :class:`~aquatic.interop.nir.NIRModule` graph) is a chain of layers; ``error`` (the
    chip's ``DoesNotFitError``) naming the first operation that is not."""
    if isinstance(model, NIRModule):
        return _nir_chain(model, target, error)
    gm = trace(model, f"{target} export")
    layers: List[Tuple[str, nn.Module]] = []
    current = None
    sizes: set = set()  # the nodes that yield shapes or numbers (x.shape[:2]), no data
    for node in gm.graph.nodes:
        if node.op != "output" and not is_tensor_op(node, sizes):
            sizes.add(node.name)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if node.users:
                if current is not None:
                    raise error(f"{target} takes one input; {type(model).__name__} has several")
                current = node
                _one_use(node, target, type(model).__name__, error, sizes)
            continue
        if node.name in sizes:
            continue
        inputs = [a for a in node.all_input_nodes if a.name not in sizes]
        where = f"graph node {node.name!r} in the forward of {type(model).__name__}"
        if inputs != [current]:
            what = getattr(node.target, "__name__", str(node.target))
            raise error(
                f"{target} takes a chain of layers, each fed by the one before; {what!r} "
                f"({where}) takes {[n.name for n in inputs]}: the chip cannot hold a graph "
                "that branches or joins (residual sums, concatenation)"
            )
        if node.op == "output":
            break
        _one_use(node, target, type(model).__name__, error, sizes)
        if node.op == "call_module":
            layers.append((str(node.target), gm.get_submodule(node.target)))
        elif kind(node) not in _PASSIVE_OPS and node.target != "unflatten":
            what = getattr(node.target, "__name__", str(node.target))
            raise error(
                f"{target} cannot hold {what!r} ({where}); write it as a layer the chip has"
            )
        current = node
    return layers
