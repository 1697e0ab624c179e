"""The dataflow of an :class:`~aquatic.integer.IntegerGraph` written as ONNX.

The graph's steps run once on the example codes: a step that runs an integer module is
written by that module's emitter (:mod:`aquatic.interop.onnx_graph`); a step that moves
codes is written with the ONNX operator that moves them the same way:

- ``flatten``, ``reshape``, ``view``, ``squeeze``, ``unsqueeze``: ``Reshape`` to the
  shape the step produced (its first axis copied from the input where the step kept the
  batch axis first, so that the batch may vary);
- ``permute``, ``transpose``: ``Transpose``;
- indexing with integers, slices, ``None`` and ``...``: ``Gather``, ``Slice`` and
  ``Unsqueeze``;
- ``contiguous`` and identities: nothing.

Steps that compute plain Python values (``size``, ``dim``, arithmetic on sizes) are
evaluated at export, for the example's shapes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from aquatic.integer.graph import IntegerGraph, Step, TENSOR_FUNCTIONS
from aquatic.integer.graph_steps import fill_refs
from aquatic.interop.onnx_graph import GraphBuilder, Value, emit

__all__ = ["write_dataflow", "flat_values"]

_RESHAPES = {
    "flatten",
    "reshape",
    "view",
    "squeeze",
    "unsqueeze",
    "torch.flatten",
    "torch.reshape",
    "torch.squeeze",
    "torch.unsqueeze",
}
_TRANSPOSES = {"permute", "transpose", "torch.permute", "torch.transpose"}
_IDENTITIES = {"contiguous", "identity"}
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min


def flat_values(structure: Any) -> List[Any]:
    """The leaves of a nested tuple/list structure, in order."""
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in flat_values(item)]
    return [structure]


def _reshape(builder: GraphBuilder, x: Value, out: Tensor, other: Any, hint: str) -> str:
    """``Reshape`` to ``out``'s shape; ``other`` is the step's shape for one more batch
    row (``None`` for a fixed batch): the one axis that differs is written as ``-1``."""
    shape = list(out.shape)
    if other is not None:
        varying = [i for i, (a, b) in enumerate(zip(shape, other)) if a != b]
        if len(varying) > 1:
            raise ValueError(
                f"step {hint!r} reshapes codes so that the batch spreads over several axes; "
                "export with dynamic_batch=False"
            )
        for i in varying:
            shape[i] = -1
    target = builder.constant(np.array(shape, np.int64), f"{hint}_shape")
    return builder.node("Reshape", [x.name, target], hint)


def _run(graph: IntegerGraph, codes: Sequence[Tensor]) -> Dict[str, Any]:
    """Every value the graph computes for ``codes``, by step name."""
    tensors: Dict[str, Any] = dict(zip(graph.input_names, codes))
    with torch.no_grad():
        for step in graph.steps:
            args, kwargs = fill_refs(step.args, tensors), fill_refs(step.kwargs, tensors)
            if step.module is not None:
                tensors[step.name] = graph.ops[step.module](*args, **kwargs)
            else:
                tensors[step.name] = TENSOR_FUNCTIONS[step.function](*args, **kwargs)
    return tensors


def _permutation(function: str, args: Tuple[Any, ...], rank: int) -> List[int]:
    if function.endswith("transpose"):
        perm = list(range(rank))
        a, b = args[0] % rank, args[1] % rank
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    return [int(d) % rank for d in dims]


def _index(builder: GraphBuilder, x: Value, index: Any, hint: str) -> str:
    """``x[index]`` for integers, slices, ``None`` and one ``...``."""
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(item is Ellipsis for item in items) > 1:
        raise ValueError(f"step {hint!r}: an index with more than one '...'")
    for item in items:
        if not (item is None or item is Ellipsis or isinstance(item, (int, slice))):
            raise TypeError(
                f"step {hint!r}: indexing with {type(item).__name__} has no ONNX form in the "
                "integer export; index with integers, slices, None and '...'"
            )
    used = sum(1 for item in items if item is not None and item is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (len(x.shape) - used)
    name, axis = x.name, 0
    for item in items:
        if item is None:
            axes = builder.constant(np.array([axis], np.int64), f"{hint}_axes")
            name = builder.node("Unsqueeze", [name, axes], hint)
            axis += 1
        elif isinstance(item, slice):
            if item != slice(None):
                step = 1 if item.step is None else int(item.step)
                default = (_INT64_MAX, _INT64_MIN) if step < 0 else (0, _INT64_MAX)
                start = default[0] if item.start is None else int(item.start)
                stop = default[1] if item.stop is None else int(item.stop)
                inputs = [name] + [
                    builder.constant(np.array([v], np.int64), f"{hint}_{label}")
                    for label, v in (
                        ("start", start),
                        ("stop", stop),
                        ("axis", axis),
                        ("step", step),
                    )
                ]
                name = builder.node("Slice", inputs, hint)
            axis += 1
        else:  # an integer: Gather drops the axis
            position = builder.constant(np.array(int(item), np.int64), f"{hint}_index")
            name = builder.node("Gather", [name, position], hint, axis=axis)
    return name


def _move(builder: GraphBuilder, step: Step, args: Tuple[Any, ...], out: Any, other: Any) -> Any:
    """The ONNX value (or Python value) of a step that runs a function."""
    function = step.function
    tensors = [a for a in flat_values(list(args)) if isinstance(a, Value)]
    if not tensors:
        return out  # arithmetic on sizes, size and dim queries: constants
    x = args[0]
    if not isinstance(x, Value) or len(tensors) != 1:
        raise TypeError(
            f"step {step.name!r} ({function}) combines tensors outside an integer module; "
            "the integer ONNX export writes moves of one tensor"
        )
    if not isinstance(out, Tensor):  # x.size(), x.dim(), x.shape
        return out
    if function in _IDENTITIES:
        name = x.name
    elif function in _RESHAPES:
        name = _reshape(builder, x, out, other, step.name)
    elif function in _TRANSPOSES:
        perm = _permutation(function, args[1:], len(x.shape))
        name = builder.node("Transpose", [x.name], step.name, perm=perm)
    elif function == "getitem":
        name = _index(builder, x, args[1], step.name)
    else:
        raise TypeError(
            f"step {step.name!r} applies {function!r} to codes, which has no ONNX form in "
            "the integer export"
        )
    return Value(name, x.dtype, tuple(out.shape), x.low, x.high)


def write_dataflow(
    builder: GraphBuilder,
    graph: IntegerGraph,
    inputs: Sequence[Value],
    codes: Sequence[Tensor],
    batch: bool,
) -> Tuple[Any, Any]:
    """Write every step of ``graph``; returns the output structure as ONNX :class:`Value`
    s and as the tensors the graph computed for ``codes``."""
    tensors = _run(graph, codes)
    grown: Dict[str, Any] = {}
    if batch:
        try:
            grown = _run(graph, [torch.cat([x, x[:1]]) for x in codes])
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"the integer graph does not run with one more batch row ({error}); its "
                "forward fixes the batch size: export with dynamic_batch=False"
            ) from None
    values: Dict[str, Any] = dict(zip(graph.input_names, inputs))
    for step in graph.steps:
        args = fill_refs(step.args, values)
        out = tensors[step.name]
        if step.module is not None:
            module = graph.ops[step.module]
            operands = flat_values(list(args))
            if step.kwargs or not all(isinstance(a, Value) for a in operands):
                raise TypeError(
                    f"step {step.name!r} passes values other than tensors of codes to "
                    f"{type(module).__name__}, which the integer ONNX export cannot write"
                )
            values[step.name] = emit(builder, module, operands, tuple(out.shape))
        else:
            if any(
                isinstance(v, Value)
                for v in flat_values(list(fill_refs(step.kwargs, values).values()))
            ):
                raise TypeError(f"step {step.name!r} passes a tensor by keyword")
            other = grown.get(step.name)
            other = tuple(other.shape) if isinstance(other, Tensor) else None
            kwargs = tuple(fill_refs(step.kwargs, values).values())
            values[step.name] = _move(builder, step, tuple(args) + kwargs, out, other)
    return fill_refs(graph.output, values), fill_refs(graph.output, tensors)
