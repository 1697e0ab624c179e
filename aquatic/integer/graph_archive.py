"""The file format of integer graphs (:class:`~aquatic.integer.IntegerGraph`).

Like a chain's (:mod:`aquatic.integer.archive`), a ``torch.save`` of
``{"header": str, "tensors": {name: Tensor}}`` that ``torch.load(weights_only=True)``
opens: the JSON header holds the inputs' and outputs' scales, each integer module's
``kind`` and configuration (checked with the chain's schema), and the steps, whose
arguments are JSON values with references to earlier values (``{"ref": name}``),
slices and tuples spelled out. Tensor ``"add_1.multipliers"`` is argument
``multipliers`` of module ``add_1``. Everything is checked before a module is built;
accumulators of a loaded graph check for int32 overflow as they run, since the chain's
range certification does not follow a graph.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Dict, List, Tuple

import torch

from aquatic.integer._schema import (
    COMMON,
    CONFIG,
    check_config,
    check_fields,
    check_spec,
    fail,
)
from aquatic.integer._schema_tensors import check_layer
from aquatic.integer.base import KINDS, IntegerModule, QSpec
from aquatic.integer.graph_steps import TENSOR_FUNCTIONS, Ref, Step

__all__ = ["FORMAT", "VERSION", "read_graph", "write_graph"]

FORMAT = "aquatic.integer.graph"
VERSION = 1


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, Ref):
        return {"ref": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, slice):
        return {"slice": [_encode(v, where) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, where) for k, v in value.items()}}
    if isinstance(value, QSpec):
        return {"spec": value.header()}
    raise TypeError(f"{where} holds {value!r}, which an integer graph file cannot store")


def _decode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    if not isinstance(value, dict) or len(value) != 1:
        raise fail(where, f"holds {value!r}, which is no encoded value")
    ((key, item),) = value.items()
    if key == "ref" and isinstance(item, str):
        return Ref(item)
    if key == "slice" and isinstance(item, list) and len(item) == 3:
        return slice(*(_decode(v, where) for v in item))
    if key == "ellipsis" and item is True:
        return Ellipsis
    if key == "tuple" and isinstance(item, list):
        return tuple(_decode(v, where) for v in item)
    if key == "dict" and isinstance(item, dict):
        return {k: _decode(v, where) for k, v in item.items()}
    if key == "spec":
        check_spec(where, item, is_input=False)
        return QSpec.from_header(item)
    raise fail(where, f"holds {value!r}, which is no encoded value")


def write_graph(ops, steps, inputs, output, output_specs, f) -> None:
    """Write the parts of an integer graph to ``f`` (a path or a writable binary file)."""
    tensors: Dict[str, torch.Tensor] = {}
    entries = []
    for key, module in ops.items():
        module.check_saveable()
        entries.append({"key": key, "kind": module.kind, "config": module.config()})
        for name, value in module.tensors().items():
            tensors[f"{key}.{name}"] = value.detach().cpu().clone()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "inputs": [
            {
                "name": name,
                **spec.header(),
                "rounding": rounding,
                "on_grid": on_grid,
                "notes": notes,
            }
            for name, spec, rounding, on_grid, notes in inputs
        ],
        "ops": entries,
        "steps": [
            {
                "name": step.name,
                "module": step.module,
                "function": step.function,
                "args": _encode(tuple(step.args), f"step {step.name!r}"),
                "kwargs": _encode(dict(step.kwargs), f"step {step.name!r}"),
            }
            for step in steps
        ],
        "output": _encode(output, "the output"),
        "output_specs": _encode(output_specs, "the output"),
    }
    torch.save({"header": json.dumps(header), "tensors": tensors}, f)


def _load(f) -> Dict[str, Any]:
    try:
        data = torch.load(f, weights_only=True)
    except OSError:
        raise
    except (EOFError, pickle.UnpicklingError, RuntimeError) as error:
        raise ValueError(
            f"not a readable integer graph file ({str(error).splitlines()[0] if str(error) else error!r})"
        ) from None
    if not isinstance(data, dict) or set(data) != {"header", "tensors"}:
        raise ValueError("not an aquatic integer graph file (no header and tensors)")
    if not isinstance(data["header"], str) or not isinstance(data["tensors"], dict):
        raise fail("the file", "must hold a JSON header string and a dict of tensors")
    try:
        header = json.loads(data["header"])
    except json.JSONDecodeError as error:
        raise fail("header", f"is not valid JSON ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise ValueError(
            f"not an aquatic integer graph file (format {found!r}); a chain's file loads "
            "with aquatic.integer.load"
        )
    return data


def _ops(entries: Any, tensors: Dict[str, Any]) -> Dict[str, IntegerModule]:
    if not isinstance(entries, list):
        raise fail("header.ops", "must be a list")
    own: Dict[str, Dict[str, Any]] = {}
    for name, value in tensors.items():
        key, _, argument = name.partition(".") if isinstance(name, str) else ("", "", "")
        own.setdefault(key, {})[argument] = value
    ops: Dict[str, IntegerModule] = {}
    for index, entry in enumerate(entries):
        field = f"header.ops[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"key", "kind", "config"}:
            raise fail(field, "must be an object with 'key', 'kind' and 'config'")
        key, kind, config = entry["key"], entry["kind"], entry["config"]
        if not isinstance(key, str) or not key.isidentifier() or key in ops:
            raise fail(f"{field}.key", f"must be a new identifier, got {key!r}")
        if kind not in KINDS:
            raise fail(f"{field}.kind", f"{kind!r} is not a known layer kind")
        checks = CONFIG.get(kind) or {k: (lambda v: None) for k in KINDS[kind]._config_keys}
        check_fields(f"{field}.config", config, {**COMMON, **checks}, False)
        check_config(f"{field}.config", kind, config)
        arguments = own.pop(key, {})
        check_layer(index, kind, config, arguments, KINDS[kind]._tensor_keys)
        try:
            module = KINDS[kind](**config, **arguments)
        except (TypeError, ValueError) as error:
            raise fail(field, f"does not build: {error}") from None
        if hasattr(module, "check_overflow"):
            module.check_overflow = True  # no range certification for a graph: check as it runs
        ops[key] = module
    if own:
        raise fail("tensors", f"name modules that do not exist: {sorted(own)}")
    return ops


def read_graph(f) -> Tuple[Dict[str, IntegerModule], List[Step], list, Any, Any]:
    """``(ops, steps, inputs, output, output_specs)`` of a file written by
    :func:`write_graph`, everything checked first."""
    data = _load(f)
    header = json.loads(data["header"])
    known = {"format", "version", "inputs", "ops", "steps", "output", "output_specs"}
    if set(header) != known:
        raise fail("header", f"must have exactly the keys {sorted(known)}")
    if header["version"] != VERSION:
        raise fail("header.version", f"must be {VERSION}, got {header['version']!r}")
    ops = _ops(header["ops"], data["tensors"])
    inputs, defined = [], set()
    for index, entry in enumerate(header["inputs"] if isinstance(header["inputs"], list) else []):
        field = f"header.inputs[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise fail(field, "must be an object with a 'name'")
        spec = {k: v for k, v in entry.items() if k != "name"}
        check_spec(field, spec, is_input=True)
        inputs.append(
            (
                entry["name"],
                QSpec.from_header(spec),
                spec["rounding"],
                spec["on_grid"],
                spec["notes"],
            )
        )
        defined.add(entry["name"])
    if not inputs:
        raise fail("header.inputs", "must list at least one input")
    steps = []
    for index, entry in enumerate(header["steps"] if isinstance(header["steps"], list) else []):
        field = f"header.steps[{index}]"
        if not isinstance(entry, dict) or set(entry) != {
            "name",
            "module",
            "function",
            "args",
            "kwargs",
        }:
            raise fail(field, "must be an object with name, module, function, args and kwargs")
        if (entry["module"] is None) == (entry["function"] is None):
            raise fail(field, "must name either a module or a function")
        if entry["module"] is not None and entry["module"] not in ops:
            raise fail(f"{field}.module", f"{entry['module']!r} is not in header.ops")
        if entry["function"] is not None and entry["function"] not in TENSOR_FUNCTIONS:
            raise fail(f"{field}.function", f"{entry['function']!r} is not an allowed function")
        args, kwargs = _decode(entry["args"], field), _decode(entry["kwargs"], field)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise fail(field, "args must be a tuple and kwargs an object")
        _check_refs((args, kwargs), defined, field)
        steps.append(Step(entry["name"], entry["module"], entry["function"], args, kwargs))
        defined.add(entry["name"])
    output = _decode(header["output"], "header.output")
    _check_refs(output, defined, "header.output")
    return ops, steps, inputs, output, _decode(header["output_specs"], "header.output_specs")


def _check_refs(value: Any, defined: set, field: str) -> None:
    if isinstance(value, Ref):
        if value not in defined:
            raise fail(field, f"refers to {str(value)!r} before it is computed")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_refs(item, defined, field)
    elif isinstance(value, dict):
        for item in value.values():
            _check_refs(item, defined, field)
