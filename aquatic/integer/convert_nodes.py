"""The function and method nodes of a traced graph, converted one by one.

Each handler reads the :class:`~aquatic.integer.base.QSpec` of its inputs and adds a
step to the integer graph: an integer module (``add``, ``relu``, ``clamp``, pooling,
``mean``) or a function that moves codes without computing (``flatten``, ``view``,
``permute``, ``h[:, -1]``...), which keeps the input's meaning.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional

import torch
from torch import fx

from aquatic.integer.base import QSpec
from aquatic.integer.build_activation import build_clamp
from aquatic.integer.build_graph import build_combine
from aquatic.integer.graph import Step, TENSOR_FUNCTIONS
from aquatic.integer.graph_ops import IntegerReduceSum
from aquatic.integer.layers import IntegerReLU
from aquatic.integer.pooling import IntegerMaxPool, IntegerSumPool
from aquatic.integer.requant import is_power_of_two

__all__ = ["NodeContext", "convert_node", "SUPPORTED"]

SUPPORTED = (
    "x + y / torch.add, x * y / torch.mul, torch.cat, F.relu / torch.relu, F.relu6, "
    "F.hardtanh, torch.clamp, torch.flatten, .view, .reshape, .permute, .transpose, "
    ".squeeze, .unsqueeze, .contiguous, indexing (h[:, -1]), .size(), .shape, "
    "F.max_pool1d/2d, F.avg_pool1d/2d, F.adaptive_avg_pool1d/2d to size 1, .mean(dims), "
    ".sum(dims), F.dropout"
)

_SHAPE_KINDS = ("flatten", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "getitem")
_FUNCTION_KEYS = {
    torch.flatten: "torch.flatten",
    torch.reshape: "torch.reshape",
    torch.permute: "torch.permute",
    torch.transpose: "torch.transpose",
    torch.squeeze: "torch.squeeze",
    torch.unsqueeze: "torch.unsqueeze",
}


class NodeContext:
    """What the handlers need of the graph builder (see ``convert_graph``)."""

    def __init__(self, builder) -> None:
        self.builder = builder

    def where(self, node: fx.Node) -> str:
        return (
            f"operation {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})"
        )

    def module(self, node: fx.Node, module, spec: Optional[QSpec], inputs: List[Any]) -> None:
        self.builder.ops[node.name] = module
        self.builder.steps.append(
            Step(node.name, node.name, None, tuple(self.builder.refs(inputs)), {})
        )
        self.builder.specs[node.name] = spec

    def function(self, node: fx.Node, key: str, spec: Optional[QSpec]) -> None:
        args, kwargs = self.builder.refs(node.args), self.builder.refs(dict(node.kwargs))
        self.builder.steps.append(Step(node.name, None, key, tuple(args), kwargs))
        self.builder.specs[node.name] = spec

    def arguments(self, node: fx.Node):
        """Positional and keyword arguments of a function node, normalised to keywords."""
        found = node.normalized_arguments(self.builder.gm, normalize_to_only_use_kwargs=True)
        return dict(found.kwargs) if found is not None else None

    def shape(self, node: fx.Node) -> torch.Size:
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise ValueError(f"no shape is known for {node.name!r}; pass example_input")
        return meta.shape


def _function_key(node: fx.Node, name: str) -> str:
    if node.op == "call_method":
        return node.target
    if node.target in _FUNCTION_KEYS:
        return _FUNCTION_KEYS[node.target]
    return name


def _per_tensor(spec: QSpec, where: str) -> None:
    if spec.scale.dim() != 0 or spec.zero_point.dim() != 0:
        raise ValueError(
            f"{where} moves codes that have one scale per channel; quantize them per tensor "
            "before it (QConfig.activation or an aquatic.nn.ActivationQuantizer)"
        )


def _tensor_args(context: NodeContext, node: fx.Node) -> List[fx.Node]:
    return [a for a in node.args if isinstance(a, fx.Node) and context.builder.specs.get(a.name)]


def convert_node(context: NodeContext, node: fx.Node, name: Optional[str], is_meta: bool) -> None:
    """Add the integer step(s) of one ``call_function``/``call_method`` node."""
    builder = context.builder
    where = context.where(node)
    if is_meta:
        key = _function_key(node, name) if name else None
        if key not in TENSOR_FUNCTIONS:
            raise TypeError(
                f"{where} computes with shapes in a way the integer graph cannot replay"
            )
        context.function(node, key, None)
        return
    if name is None:
        raise TypeError(f"{where} has no integer counterpart. Supported: {SUPPORTED}")
    first = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    if name == "getitem" and isinstance(first, fx.Node):
        found = builder.specs.get(first.name)
        if isinstance(found, (tuple, list)):  # the (output, state) tuple of a recurrent layer
            index = node.args[1]
            if not isinstance(index, int) or isinstance(index, bool):
                raise TypeError(f"{where} indexes a tuple with {index!r}; use a constant int")
            context.function(node, "getitem", found[index])
            return
    if name in ("add", "mul"):
        tensors = _tensor_args(context, node)
        if len(tensors) != 2 or len(node.args) != 2 or node.kwargs:
            raise TypeError(
                f"{where} combines a tensor with a constant (or takes alpha=); the integer graph "
                "adds and multiplies two tensors only"
            )
        specs = [builder.spec(t, where) for t in tensors]
        module, spec = build_combine(name, node.name, specs, None, where)
        context.module(node, module, spec, tensors)
        return
    if name == "cat":
        kwargs = context.arguments(node) or {}
        tensors = list(kwargs.get("tensors", node.args[0]))
        dim = kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        specs = [builder.spec(t, where) for t in tensors]
        module, spec = build_combine("cat", node.name, specs, None, where, dim)
        context.module(node, module, spec, tensors)
        return
    spec = builder.spec(first, where)
    if name in ("dropout", "contiguous"):
        builder.alias[node.name] = first.name
        builder.specs[node.name] = spec
        return
    if name == "relu":
        module = IntegerReLU(spec.zero_point, spec.axis, name=node.name, source="relu")
        low = None if spec.low is None else max(spec.low, int(spec.zero_point.min()))
        context.module(
            node, module, QSpec(spec.scale, spec.zero_point, spec.axis, low, spec.high), [first]
        )
        return
    if name in ("relu6", "hardtanh", "clamp"):
        low, high = _clamp_bounds(context, node, name)
        (module,), out = build_clamp(node.name, spec, low, high, where, source=name)
        context.module(node, module, out, [first])
        return
    if name in _SHAPE_KINDS or name == "getattr":
        if name == "getattr":
            context.function(node, "getattr", None)
            return
        _per_tensor(spec, where)
        context.function(node, _function_key(node, name), spec)
        return
    if name.startswith("max_pool") or name.startswith("avg_pool"):
        _pool(context, node, name, spec, where, first)
        return
    if name.startswith("adaptive_avg_pool"):
        dim = int(name[-2])
        size = (context.arguments(node) or {}).get(
            "output_size", node.args[1] if len(node.args) > 1 else None
        )
        if size not in (1, (1,) * dim, [1] * dim):
            raise TypeError(
                f"{where}: the integer graph pools adaptively to size 1 only (global pooling)"
            )
        dims = list(range(-dim, 0))
        _reduce(context, node, spec, where, first, dims, True, mean=True)
        return
    if name in ("mean", "sum"):
        kwargs = context.arguments(node) if node.op == "call_function" else None
        args = list(node.args[1:])
        dims = (kwargs or {}).get("dim", node.kwargs.get("dim", args[0] if args else None))
        keepdim = (kwargs or {}).get(
            "keepdim", node.kwargs.get("keepdim", args[1] if len(args) > 1 else False)
        )
        if dims is None:
            dims = list(range(len(context.shape(first))))
        dims = [dims] if isinstance(dims, int) else list(dims)
        _reduce(context, node, spec, where, first, dims, bool(keepdim), mean=name == "mean")
        return
    raise TypeError(f"{where} has no integer counterpart. Supported: {SUPPORTED}")


def _clamp_bounds(context: NodeContext, node: fx.Node, name: str):
    if name == "relu6":
        return 0.0, 6.0
    if name == "hardtanh":
        kwargs = context.arguments(node) or {}
        return float(kwargs.get("min_val", -1.0)), float(kwargs.get("max_val", 1.0))
    args = list(node.args[1:])
    low = node.kwargs.get("min", args[0] if args else None)
    high = node.kwargs.get("max", args[1] if len(args) > 1 else None)
    for value in (low, high):
        if value is not None and not isinstance(value, (int, float)):
            raise TypeError(f"{context.where(node)}: clamp bounds must be numbers, got {value!r}")
    return low, high


def _tuple(value, dim: int) -> List[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * dim


def _pool(context, node, name, spec, where, first) -> None:
    dim = int(name[-2])
    kwargs = context.arguments(node)
    if kwargs is None:
        raise TypeError(f"{where}: its arguments cannot be read")
    kernel = _tuple(kwargs["kernel_size"], dim)
    stride = _tuple(kwargs.get("stride") or kwargs["kernel_size"], dim)
    padding = _tuple(kwargs.get("padding", 0), dim)
    if name.startswith("max_pool"):
        if kwargs.get("return_indices"):
            raise ValueError(
                f"{where} returns indices; the integer graph needs return_indices=False"
            )
        dilation = _tuple(kwargs.get("dilation", 1), dim)
        pool = IntegerMaxPool(
            dim,
            kernel,
            stride,
            padding,
            dilation,
            bool(kwargs.get("ceil_mode", False)),
            name=node.name,
            source=name,
        )
        context.module(node, pool, spec, [first])
        return
    divisor = kwargs.get("divisor_override") or math.prod(kernel)
    if kwargs.get("ceil_mode") or (any(padding) and not kwargs.get("count_include_pad", True)):
        raise ValueError(
            f"{where} averages windows of different sizes; use ceil_mode=False and "
            "count_include_pad=True"
        )
    _per_tensor(spec, where)
    notes = []
    if not (is_power_of_two(spec.scale) and is_power_of_two(torch.tensor(float(divisor)))):
        notes.append(f"{where}: the float model rounds the average; it may be one step apart")
    pool = IntegerSumPool(
        dim, kernel, stride, padding, spec.zero_point, name=node.name, notes=notes, source=name
    )
    magnitude = spec.magnitude()
    bound = None if magnitude is None else magnitude * math.prod(kernel)
    out = QSpec(
        spec.scale / divisor, torch.tensor(0), None, None if bound is None else -bound, bound
    )
    context.module(node, pool, out, [first])


def _reduce(context, node, spec, where, first, dims, keepdim, mean) -> None:
    _per_tensor(spec, where)
    shape = context.shape(first)
    count = math.prod(int(shape[d]) for d in dims)
    notes = []
    if mean and not (is_power_of_two(spec.scale) and is_power_of_two(torch.tensor(float(count)))):
        notes.append(
            f"{where}: the float model rounds the mean of {count} values; outputs may differ by a step"
        )
    module = IntegerReduceSum(
        dims, keepdim, int(spec.zero_point), name=node.name, notes=notes, source=node.name
    )
    magnitude = spec.magnitude()
    bound = None if magnitude is None else magnitude * count
    scale = spec.scale / count if mean else spec.scale
    out = QSpec(scale, torch.tensor(0), None, None if bound is None else -bound, bound)
    context.module(node, module, out, [first])
