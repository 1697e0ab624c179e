"""What a node of a traced graph computes, by kind: the tables that :func:`aquatic.quantize`
and :func:`aquatic.convert` share to read a ``torch.fx`` graph."""

from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx

__all__ = ["kind", "is_tensor_op", "SIZE_OPS"]

_FUNCTIONS = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    operator.mul: "mul",
    operator.imul: "mul",
    torch.mul: "mul",
    torch.cat: "cat",
    torch.concat: "cat",
    torch.concatenate: "cat",
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    F.hardtanh: "hardtanh",
    torch.clamp: "clamp",
    torch.clip: "clamp",
    torch.flatten: "flatten",
    torch.reshape: "reshape",
    torch.permute: "permute",
    torch.transpose: "transpose",
    torch.squeeze: "squeeze",
    torch.unsqueeze: "unsqueeze",
    operator.getitem: "getitem",
    getattr: "getattr",
    F.max_pool1d: "max_pool1d",
    F.max_pool2d: "max_pool2d",
    F.avg_pool1d: "avg_pool1d",
    F.avg_pool2d: "avg_pool2d",
    F.adaptive_avg_pool1d: "adaptive_avg_pool1d",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d",
    torch.mean: "mean",
    torch.sum: "sum",
    F.dropout: "dropout",
}

_METHODS = {
    "add": "add",
    "add_": "add",
    "mul": "mul",
    "mul_": "mul",
    "relu": "relu",
    "relu_": "relu",
    "clamp": "clamp",
    "clamp_": "clamp",
    "clip": "clamp",
    "flatten": "flatten",
    "view": "reshape",
    "reshape": "reshape",
    "permute": "permute",
    "transpose": "transpose",
    "squeeze": "squeeze",
    "unsqueeze": "unsqueeze",
    "contiguous": "contiguous",
    "mean": "mean",
    "sum": "sum",
    "size": "size",
    "dim": "size",
}

#: Kinds whose result is a shape or a number, never a tensor of codes.
SIZE_OPS = ("size",)


def kind(node: fx.Node) -> Optional[str]:
    """The kind of a ``call_function`` or ``call_method`` node (``"add"``, ``"cat"``,
    ``"relu"``, ``"reshape"``, ...), or ``None`` for anything else."""
    if node.op == "call_function":
        return _FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return _METHODS.get(node.target)
    return None


def is_tensor_op(node: fx.Node, non_tensor: set) -> bool:
    """Whether ``node`` (probably) yields a tensor: it is no size query (``x.size(0)``,
    ``x.shape``) and not arithmetic on such values; ``non_tensor`` holds the names of
    the nodes already known to yield numbers or shapes."""
    if node.op in ("placeholder", "call_module", "get_attr"):
        return True
    if node.op == "output":
        return False
    name = kind(node)
    if name in SIZE_OPS or (name == "getattr" and node.args[1] in ("shape", "ndim", "dtype")):
        return False
    inputs = [arg for arg in node.all_input_nodes]
    return any(arg.name not in non_tensor for arg in inputs) if inputs else False
