"""Checks of a NIR graph before :func:`aquatic.interop.nir.load` builds layers from it:
finite parameters, parameter shapes that agree within each node and along each edge,
and well-formed aquatic metadata. Each failure names the node (or the metadata key)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from aquatic.interop._nir_load import text

__all__ = ["check_graph", "check_metadata", "is_input_node", "topological_order"]

Shape = Optional[Tuple[Optional[int], ...]]  # None: unknown; a None entry: any size

#: Parameters of NIR's neuron nodes, one value per neuron (or one for all).
NEURON_PARAMS = ("tau", "tau_mem", "tau_syn", "r", "v_leak", "v_threshold", "v_reset", "w_in")


def _describe(name: str, node: Any) -> str:
    return f"node {name!r} ({type(node).__name__})"


def _numeric(value: Any) -> Optional[np.ndarray]:
    """``value`` as an array if it is numeric data (not a string, dict or None)."""
    if value is None or isinstance(value, (str, bytes, dict, bool)):
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return None
    return array if array.dtype.kind in "biufc" else None


def check_finite(name: str, node: Any) -> None:
    """Every numeric parameter of ``node`` is finite (NaN and inf refused)."""
    if not dataclasses.is_dataclass(node):
        return
    for field in dataclasses.fields(node):
        if field.name in ("input_type", "output_type", "metadata"):
            continue
        array = _numeric(getattr(node, field.name, None))
        if array is None or array.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(array)
        if bool(bad.any()):
            kinds = sorted({"NaN" if np.isnan(v) else "inf" for v in array[bad].ravel()})
            raise ValueError(
                f"{_describe(name, node)}: parameter {field.name!r} holds {' and '.join(kinds)} "
                f"({int(bad.sum())} of {array.size} values); NIR parameters must be finite: fix "
                "them in the graph (or in the model it was exported from)"
            )


def _shape(value: Any) -> Tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(value).shape)


def _type_shape(types: Any, key: str) -> Shape:
    if not isinstance(types, dict) or types.get(key) is None:
        return None
    array = np.atleast_1d(np.asarray(types[key]))
    if array.dtype.kind not in "iu" or array.size == 0:
        return None
    return tuple(int(v) for v in array)


def node_shapes(nir: Any, name: str, node: Any) -> Tuple[Shape, Shape]:
    """``(input shape, output shape)`` of one sample and step, where the node tells."""
    what = _describe(name, node)
    if isinstance(node, (nir.Affine, nir.Linear)):
        weight = _shape(node.weight)
        if len(weight) != 2:
            raise ValueError(f"{what}: only 2-D weights load, got shape {weight}")
        if isinstance(node, nir.Affine) and _shape(node.bias) not in ((weight[0],), ()):
            raise ValueError(
                f"{what}: bias has shape {_shape(node.bias)}, but the weight {weight} gives "
                f"{weight[0]} outputs"
            )
        return (weight[1],), (weight[0],)
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        weight = _shape(node.weight)
        dims = 1 if isinstance(node, nir.Conv1d) else 2
        if len(weight) != dims + 2:
            raise ValueError(f"{what}: the weight has {dims + 2} dims, got shape {weight}")
        bias = getattr(node, "bias", None)
        if bias is not None and _shape(bias) not in ((weight[0],), ()):
            raise ValueError(
                f"{what}: bias has shape {_shape(bias)}, but the weight {weight} gives "
                f"{weight[0]} output channels"
            )
        groups = int(np.asarray(node.groups))
        spatial = (None,) * dims
        return (weight[1] * groups,) + spatial, (weight[0],) + spatial
    if isinstance(node, tuple(getattr(nir, kind) for kind in ("LIF", "CubaLIF", "IF", "LI", "I"))):
        shapes = {
            param: _shape(getattr(node, param))
            for param in NEURON_PARAMS
            if getattr(node, param, None) is not None
        }
        try:
            shape = np.broadcast_shapes(*shapes.values())
        except ValueError:
            raise ValueError(
                f"{what}: its parameters have shapes {shapes}, which do not broadcast together; "
                "give every parameter one value per neuron (or one for all)"
            ) from None
        known = tuple(shape) if shape else None
        return known, known
    if isinstance(node, nir.Scale):
        shape = _shape(node.scale)
        return (shape, shape) if shape else (None, None)
    if isinstance(node, nir.Input):
        return None, _type_shape(node.input_type, "input")
    if isinstance(node, nir.Output):
        return _type_shape(node.output_type, "output"), None
    return (
        _type_shape(getattr(node, "input_type", None), "input"),
        _type_shape(getattr(node, "output_type", None), "output"),
    )


def _agree(out: Shape, into: Shape) -> bool:
    if out is None or into is None:
        return True
    if len(out) != len(into):
        if None in out or None in into:
            return True  # e.g. a convolution's channels against a flat shape: undecided
        return math.prod(out) == math.prod(into)  # the same values, laid out differently
    return all(a is None or b is None or a == b for a, b in zip(out, into))


def check_graph(nir: Any, graph: Any, sources: Dict[str, List[str]]) -> None:
    """Finite parameters, and shapes that agree within each node and along each edge."""
    shapes: Dict[str, Tuple[Shape, Shape]] = {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            continue
        check_finite(name, node)
        shapes[name] = node_shapes(nir, name, node)
    for target, incoming in sources.items():
        if target not in shapes:
            continue
        into = shapes[target][0]
        for source in incoming:
            if source not in shapes:
                continue
            out = shapes[source][1]
            if not _agree(out, into):
                raise ValueError(
                    f"{_describe(target, graph.nodes[target])} takes input of shape "
                    f"{_show(into)}, but the edge from node {source!r} brings shape "
                    f"{_show(out)}; fix the parameters of one of them, or the edge"
                )


def _show(shape: Shape) -> str:
    return "(" + ", ".join("*" if v is None else str(v) for v in shape) + ")"


# -- metadata -----------------------------------------------------------------------------------
def _key(*path: str) -> str:
    return "graph.metadata['aquatic']" + "".join(f"[{p!r}]" for p in path)


def _scalar(value: Any, key: str) -> float:
    array = _numeric(value)
    if array is None or array.size != 1 or array.dtype.kind == "c":
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(array.reshape(()))


def _integer(value: Any, key: str) -> int:
    number = _scalar(value, key)
    if not number.is_integer():
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return int(number)


#: Rounding modes of the activation quantizers that the aquatic metadata records.
_ROUNDINGS = ("nearest", "floor", "stochastic")


def check_metadata(graph: Any, text: Any) -> None:
    """The aquatic metadata :func:`~aquatic.interop.nir.export` writes, checked by key
    (other keys are left alone: they may come from a newer aquatic)."""
    meta = getattr(graph, "metadata", None)
    raw = meta.get("aquatic") if isinstance(meta, dict) else None
    nodes = graph.nodes
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ValueError(f"{_key()} must be a dict, got {type(raw).__name__}")
    if "dt" in raw:
        dt = _scalar(raw["dt"], _key("dt"))
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"{_key('dt')} must be positive and finite, got {dt!r}")
    if "discretization" in raw and text(raw["discretization"]) not in ("exact", "euler"):
        raise ValueError(
            f"{_key('discretization')} must be 'exact' or 'euler', got {raw['discretization']!r}"
        )
    for group in ("resets", "quantizers"):
        entries = raw.get(group)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ValueError(f"{_key(group)} must be a dict, got {type(entries).__name__}")
        for name, entry in entries.items():
            if name not in nodes:
                raise ValueError(f"{_key(group, name)} names a node the graph lacks")
            if group == "resets":
                if text(entry) not in ("subtract", "zero"):
                    raise ValueError(
                        f"{_key(group, name)} must be 'subtract' or 'zero', got {entry!r}"
                    )
            elif entry:
                _check_quantizer(entry, (group, name), text)
    for name, count in (raw.get("max_spikes") or {}).items():
        if name not in nodes or _integer(count, _key("max_spikes", name)) < 1:
            raise ValueError(f"{_key('max_spikes', name)} must be a positive int for a node")
    for group in ("params", "states"):
        entries = raw.get(group) or {}
        if not isinstance(entries, dict):
            raise ValueError(f"{_key(group)} must be a dict, got {type(entries).__name__}")
        for name, entry in entries.items():
            if name not in nodes or not isinstance(entry, dict):
                raise ValueError(f"{_key(group, name)} must be a dict for a node of the graph")
            for key, record in entry.items():
                if not key.startswith("decay_"):
                    _check_quantizer(record, (group, name, key), text)
                elif not isinstance(record, dict) or {"class", "bits"} - set(record):
                    raise ValueError(f"{_key(group, name, key)} must hold 'class' and 'bits'")


def _check_quantizer(entry: Any, path: Tuple[str, str], text: Any) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{_key(*path)} must be a dict, got {type(entry).__name__}")
    missing = [k for k in ("scale", "zero_point", "quant_min", "quant_max") if k not in entry]
    if missing:
        raise ValueError(f"{_key(*path)} lacks {missing}")
    scale = _scalar(entry["scale"], _key(*path, "scale"))
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"{_key(*path, 'scale')} must be positive and finite, got {scale!r}")
    low = _integer(entry["quant_min"], _key(*path, "quant_min"))
    high = _integer(entry["quant_max"], _key(*path, "quant_max"))
    zero_point = _integer(entry["zero_point"], _key(*path, "zero_point"))
    if low >= high:
        raise ValueError(f"{_key(*path)} has quant_min={low} >= quant_max={high}")
    if not low <= zero_point <= high:
        raise ValueError(
            f"{_key(*path, 'zero_point')}={zero_point} lies outside [quant_min, quant_max] = "
            f"[{low}, {high}]"
        )
    if "rounding" in entry and text(entry["rounding"]) not in _ROUNDINGS:
        raise ValueError(
            f"{_key(*path, 'rounding')} must be one of {', '.join(map(repr, _ROUNDINGS))}, "
            f"got {entry['rounding']!r}"
        )


def topological_order(graph: Any) -> Tuple[List[str], Dict[str, List[str]]]:
    """Node names with every node after its sources, and each node's sources."""
    sources: Dict[str, List[str]] = {name: [] for name in graph.nodes}
    for edge in graph.edges:
        source, target = (text(v) for v in edge)
        if source not in graph.nodes or target not in graph.nodes:
            raise ValueError(f"edge ({source!r}, {target!r}) names a node the graph lacks")
        sources[target].append(source)
    order: List[str] = []
    placed = set()
    remaining = list(graph.nodes)
    while remaining:
        ready = [name for name in remaining if all(s in placed for s in sources[name])]
        if not ready:
            raise ValueError(
                f"the graph has a cycle through {remaining}; load supports feed-forward graphs "
                "(no recurrent edges)"
            )
        for name in ready:
            order.append(name)
            placed.add(name)
        remaining = [name for name in remaining if name not in placed]
    for name in order:
        if not sources[name] and not is_input_node(graph.nodes[name]):
            raise ValueError(f"node {name!r} has no incoming edge")
    return order, sources


def is_input_node(node: Any) -> bool:
    """Whether ``node`` is a NIR ``Input`` node."""
    return type(node).__name__ == "Input"
