"""The layers and edges of a model with a ``forward`` of its own, for NIR export.

The model is traced with :func:`aquatic.graph.trace` (``torch.fx``, layers kept whole).
Each layer call is a node; a sum of two tensors (``x + y``, ``torch.add``,
:class:`aquatic.nn.Add`) becomes edges into the node that uses it, since NIR sums the
edges into a node (Pedersen et al. 2024, NIR's graph semantics; ``nirtorch`` and the
simulators reading NIR add incoming edges the same way). ``torch.flatten`` becomes a
``Flatten`` node; dropout, ``contiguous`` and folding the time axis into the batch
(``x.flatten(0, 1)`` ... ``.unflatten(0, (n, t))``, with ``x.shape`` read for the
sizes) pass their input on. Everything else
(concatenation, products, ``F.relu``, indexing, reshapes) has no NIR node and is refused
with the operation named.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from torch import fx, nn

from aquatic.graph import kind, trace
from aquatic.graph.ops import is_tensor_op
from aquatic.nn.combine import Add, Cat, Mul

Layers = List[Tuple[str, nn.Module]]
Edges = List[Tuple[str, str]]

#: Operations that pass their (one tensor) input on unchanged at inference.
_PASS = ("dropout", "contiguous")


def _folds_time(node: fx.Node) -> bool:
    """``x.flatten(0, 1)`` or ``x.unflatten(0, (n, t))``: batch and time axes merged for
    per-step layers and split again, which NIR's per-step nodes do implicitly."""
    args = list(node.args[1:])
    if kind(node) == "flatten":
        start = args[0] if args else node.kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
        return start == 0 and end == 1
    if node.op == "call_method" and node.target == "unflatten":
        return (args[0] if args else node.kwargs.get("dim")) == 0
    return False


def _refuse(model: nn.Module, node: fx.Node, why: str) -> TypeError:
    target = getattr(node.target, "__name__", str(node.target))
    return TypeError(
        f"NIR export cannot express {target!r} (graph node {node.name!r}) in the forward of "
        f"{type(model).__name__}: {why}. NIR graphs hold layers joined by edges, and sum "
        "the edges into a node (x + y); write the rest as layers NIR has"
    )


def traced_layers(model: nn.Module) -> Tuple[Layers, Edges]:
    """``(name, layer)`` in running order and the edges between them (with ``"input"``
    and ``"output"``) along ``model``'s traced ``forward``.

    Raises:
        GraphCaptureError: the forward cannot be traced (the message names the line).
        TypeError: an operation NIR cannot express (the message names it).
    """
    gm = trace(model, "aquatic.interop.nir.export")
    layers: Layers = []
    edges: Edges = []
    #: fx node -> the layer nodes whose outputs it sums (an add or a pass-through is
    #: no layer of its own: its sources feed its users)
    feeds: Dict[fx.Node, List[str]] = {}
    uses: Dict[str, int] = {}
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and n.users]
    if len(inputs) != 1:
        raise TypeError(
            f"NIR export takes a forward with one tensor input; {type(model).__name__}'s "
            f"uses {[n.name for n in inputs]}"
        )

    def sources(node: fx.Node, arg: object) -> List[str]:
        if not isinstance(arg, fx.Node) or arg not in feeds:
            raise _refuse(model, node, f"its input {arg!r} is not a tensor of the graph")
        return feeds[arg]

    def add_layer(name: str, module: nn.Module, node: fx.Node, args: tuple) -> None:
        incoming = [s for arg in args for s in sources(node, arg)]
        if len(set(incoming)) != len(incoming):
            raise _refuse(model, node, "it adds a tensor to itself, which two edges cannot say")
        layers.append((name, module))
        edges.extend((source, name) for source in incoming)
        feeds[node] = [name]

    sizes: set = set()  # nodes that yield shapes or numbers (x.shape[:2]), no data
    for node in gm.graph.nodes:
        if node.op not in ("placeholder", "output") and not is_tensor_op(node, sizes):
            sizes.add(node.name)
    for node in gm.graph.nodes:
        if node.name in sizes:
            continue
        if node.op == "placeholder":
            feeds[node] = ["input"]
        elif node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise _refuse(
                    model, node, "the forward returns several tensors; NIR has one output"
                )
            edges.extend((source, "output") for source in sources(node, node.args[0]))
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            # "layer1.0.conv" -> "layer1_0_conv": nirtorch names torch modules after nodes
            base = str(node.target).replace(".", "_")
            count = uses.get(base, 0)
            uses[base] = count + 1
            name = base if not count else f"{base}_{count}"
            if name in ("input", "output"):
                name = f"{name}_{count}"
            if node.kwargs or isinstance(module, (Cat, Mul)):
                raise _refuse(model, node, f"NIR has no {type(module).__name__} node")
            if isinstance(module, Add) or len(node.args) == 1:
                add_layer(name, module, node, node.args)
            else:
                raise _refuse(model, node, "the layer takes several inputs")
        elif node.op in ("call_function", "call_method"):
            op = kind(node)
            tensors = [a for a in node.args if isinstance(a, fx.Node)]
            if op == "add" and len(node.args) == 2 and len(tensors) == 2 and not node.kwargs:
                summed = sources(node, node.args[0]) + sources(node, node.args[1])
                if len(set(summed)) != len(summed):
                    raise _refuse(model, node, "it adds a tensor to itself")
                feeds[node] = summed
            elif (op in _PASS or _folds_time(node)) and tensors and tensors[0] is node.args[0]:
                feeds[node] = sources(node, node.args[0])
            elif op == "flatten" and len(tensors) == 1 and tensors[0] is node.args[0]:
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
                add_layer(node.name, nn.Flatten(start, end), node, node.args[:1])
            else:
                raise _refuse(model, node, "it has no NIR counterpart")
        else:  # get_attr: a tensor held by the model, used as a constant
            raise _refuse(model, node, "NIR has no constant tensors")
    return layers, edges
