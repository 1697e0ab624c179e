"""Inserting the quantizers an integer model needs into a traced graph.

:func:`insert_quantizers` places an :class:`aquatic.nn.ActivationQuantizer` at each
graph input, and replaces every addition, product and concatenation of two tensors by
an :class:`aquatic.nn.Add`, :class:`~aquatic.nn.Mul` or :class:`~aquatic.nn.Cat` with
an output quantizer: the points where an integer model must know a grid that no layer
sets.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from torch import fx, nn

from aquatic.graph.ops import is_tensor_op, kind
from aquatic.nn.activation import ActivationQuantizer
from aquatic.nn.combine import Add, Cat, Mul
from aquatic.nn.embedding import Embedding, EmbeddingBag
from aquatic.qconfig import QConfig

__all__ = ["INDEX_LAYERS", "insert_quantizers", "scope", "takes_indices"]

QConfigFor = Callable[[str], Optional[QConfig]]

#: Layers whose input is row indices (integers), which no quantizer may touch.
INDEX_LAYERS = (Embedding, EmbeddingBag, nn.Embedding, nn.EmbeddingBag)


def scope(node: fx.Node) -> str:
    """The qualified name of the module whose ``forward`` holds ``node`` (``""`` for the
    model's own)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.keys())) if stack else ""


def _free_name(gm: fx.GraphModule, base: str) -> str:
    taken = {name for name, _ in gm.named_modules()}
    name, index = base, 1
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    return name


def _device(gm: fx.GraphModule):
    for tensor in list(gm.parameters()) + list(gm.buffers()):
        return tensor.device, tensor.dtype
    return None, None


def _add_module(gm: fx.GraphModule, base: str, module: nn.Module) -> str:
    name = _free_name(gm, base)
    device, dtype = _device(gm)
    if device is not None:
        module.to(device)
    gm.add_submodule(name, module)
    return name


def takes_indices(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether every user of ``node`` is an embedding layer (it holds row indices)."""
    users = list(node.users)
    return bool(users) and all(
        user.op == "call_module" and isinstance(gm.get_submodule(user.target), INDEX_LAYERS)
        for user in users
    )


def _combine(node: fx.Node, name: str, non_tensor: set):
    """``(module class, args, kwargs)`` for a node that combines tensors, else ``None``."""
    if name in ("add", "mul"):
        if len(node.args) != 2 or set(node.kwargs) - {"out"}:
            return None
        if node.kwargs.get("out") is not None:
            return None
        operands = [a for a in node.args if isinstance(a, fx.Node) and a.name not in non_tensor]
        if len(operands) != 2:
            return None
        return (Add if name == "add" else Mul), tuple(node.args), {}
    if name == "cat":
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return None
        return Cat, (list(tensors),), {"dim": dim}
    return None


def insert_quantizers(gm: fx.GraphModule, qconfig_for: QConfigFor) -> List[str]:
    """Insert input quantizers and ``Add``/``Mul``/``Cat`` modules into ``gm`` (in place).

    Each ``forward`` argument without a default gets an input quantizer (unless an
    :class:`~aquatic.nn.ActivationQuantizer` already takes it); arguments with a default
    (``state=None``) are left as they come, and so are arguments that only embedding
    layers take (row indices, integers).

    Args:
        gm: a traced model (:func:`aquatic.graph.trace`).
        qconfig_for: the QConfig of the module at a qualified name (``""`` for the model
            itself); its ``activation`` factory makes the new quantizers. Nothing is
            inserted where it returns ``None`` or a QConfig without ``activation``.

    Returns:
        The qualified names of the inserted modules.

    Example:
        >>> import torch, aquatic
        >>> from aquatic.graph import trace
        >>> class Residual(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 4)
        ...     def forward(self, x):
        ...         return self.fc(x) + x
        >>> gm = trace(Residual())
        >>> insert_quantizers(gm, lambda name: aquatic.qconfig.int8)
        ['input_quantizer', 'add']
    """
    inserted: List[str] = []
    graph = gm.graph
    non_tensor: set = set()
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    root = qconfig_for("")
    for node in placeholders:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            if isinstance(gm.get_submodule(users[0].target), ActivationQuantizer):
                continue
        if root is None or root.activation is None or not users or node.args:
            continue  # (an argument with a default, such as state=None, is left alone)
        if takes_indices(gm, node):
            continue
        required = [p for p in placeholders if not p.args]
        base = "input_quantizer" if len(required) == 1 else f"input_quantizer_{node.name}"
        name = _add_module(
            gm, base, ActivationQuantizer(qconfig=QConfig(activation=root.activation))
        )
        with graph.inserting_after(node):
            quant = graph.call_module(name, (node,))
        node.replace_all_uses_with(quant, delete_user_cb=lambda user: user is not quant)
        inserted.append(name)
    for node in list(graph.nodes):
        if node.op in ("call_function", "call_method") and not is_tensor_op(node, non_tensor):
            non_tensor.add(node.name)
            continue
        name = kind(node)
        found = _combine(node, name, non_tensor) if name else None
        if found is None:
            continue
        where = scope(node)
        qconfig = qconfig_for(where)
        if qconfig is None or qconfig.activation is None:
            continue
        cls, args, kwargs = found
        module = cls(**kwargs, qconfig=QConfig(activation=qconfig.activation))
        target = _add_module(gm, f"{where}.{name}" if where else name, module)
        with graph.inserting_before(node):
            new = graph.call_module(target, args)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        inserted.append(target)
    graph.lint()
    gm.recompile()
    return inserted
