"""The file format of integer models: plain tensors and a small JSON header.

The file is a ``torch.save`` of ``{"header": str, "tensors": {name: Tensor}}``. The
header is JSON: the format name and version, the input and output scales, and per
layer its ``kind`` and constructor configuration; tensor ``"3.weight"`` is argument
``weight`` of layer 3. Reading it needs no pickled code:
``torch.load(f, weights_only=True)`` opens it. :meth:`aquatic.integer.IntegerModel.save`
and :meth:`~aquatic.integer.IntegerModel.load` use this module; it knows layers, not models.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Dict, List, Tuple

import torch

from aquatic.integer._schema import check_header, fail
from aquatic.integer._schema_tensors import certify, check_layer
from aquatic.integer.base import KINDS, IntegerModule

__all__ = ["FORMAT", "VERSION", "write", "read"]

FORMAT = "aquatic.integer"
VERSION = 1


def write(
    layers: List[IntegerModule], input_header: Dict[str, Any], output_header: Dict[str, Any], f
) -> None:
    """Write ``layers`` with the model's input and output headers to ``f`` (a path or a
    writable binary file)."""
    entries = []
    tensors: Dict[str, torch.Tensor] = {}
    for index, layer in enumerate(layers):
        layer.check_saveable()
        entries.append({"kind": layer.kind, "config": layer.config()})
        for key, value in layer.tensors().items():
            tensors[f"{index}.{key}"] = value.detach().cpu().clone()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "input": input_header,
        "output": output_header,
        "layers": entries,
    }
    torch.save({"header": json.dumps(header), "tensors": tensors}, f)


def _read(f) -> Dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (no code runs), its failures explained."""
    try:
        data = torch.load(f, weights_only=True)
    except OSError:  # a missing file, a directory...: not about the contents
        raise
    except EOFError:
        raise ValueError("aquatic.integer.load: the file is empty (or ends early)") from None
    except pickle.UnpicklingError as error:
        raise ValueError(
            "aquatic.integer.load: the file holds something other than tensors and plain "
            "values, which load refuses (it never runs code from a file): "
            f"{str(error).splitlines()[0]}"
        ) from None
    except Exception as error:  # the archive reader's own errors: RuntimeError, ValueError
        raise ValueError(
            "aquatic.integer.load: the file is truncated or not a torch.save archive "
            f"({str(error).splitlines()[0]})"
        ) from None
    if not isinstance(data, dict) or "header" not in data or "tensors" not in data:
        raise ValueError("not an aquatic integer model file (no header and tensors)")
    if set(data) != {"header", "tensors"}:
        raise fail("the file", f"has unknown entries {sorted(set(data) - {'header', 'tensors'})}")
    if not isinstance(data["header"], str):
        raise fail("header", f"must be a JSON string, got {type(data['header']).__name__}")
    if not isinstance(data["tensors"], dict):
        raise fail("tensors", f"must be a dict, got {type(data['tensors']).__name__}")
    return data


def _header(text: str) -> Dict[str, Any]:
    try:
        header = json.loads(text)
    except json.JSONDecodeError as error:
        raise fail("header", f"is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise fail("header", f"must be a JSON object, got {type(header).__name__}")
    if header.get("format") == "aquatic.integer.graph":
        raise ValueError(
            "the file holds an integer graph (of a model that is not nn.Sequential): load it "
            "with aquatic.integer.IntegerGraph.load"
        )
    if header.get("format") != FORMAT:
        raise ValueError(f"not an aquatic integer model file (format {header.get('format')!r})")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise fail("header.version", f"must be an int >= 1, got {version!r}")
    if version > VERSION:
        raise ValueError(
            f"the file has format version {version}, newer than this aquatic reads "
            f"({VERSION}); update aquatic"
        )
    check_header(header, KINDS, VERSION)
    return header


def _layer_tensors(tensors: Dict[Any, Any], count: int) -> List[Dict[str, Any]]:
    """The tensors of each layer, from names ``"<index>.<argument>"``."""
    result: List[Dict[str, Any]] = [{} for _ in range(count)]
    for key, value in tensors.items():
        index, _, name = key.partition(".") if isinstance(key, str) else ("", "", "")
        if not (index.isdigit() and name and int(index) < count):
            raise fail(
                f"tensors[{key!r}]",
                f"is not named '<layer index>.<argument>' with a layer index below {count}",
            )
        result[int(index)][name] = value
    return result


def read(f) -> Tuple[Dict[str, Any], List[IntegerModule]]:
    """The checked header and the rebuilt layers of a file written by :func:`write`.

    Everything is checked before a layer is built (see :func:`aquatic.integer.load`).
    """
    data = _read(f)
    header = _header(data["header"])
    entries = header["layers"]
    layers = []
    for index, (entry, own) in enumerate(
        zip(entries, _layer_tensors(data["tensors"], len(entries)))
    ):
        kind, config = entry["kind"], entry["config"]
        check_layer(index, kind, config, own, KINDS[kind]._tensor_keys)
        try:
            layers.append(KINDS[kind](**config, **own))
        except (TypeError, ValueError) as error:
            raise fail(f"header.layers[{index}] ({kind})", f"does not build: {error}") from None
    spec = header["input"]
    certify(layers, spec["low"], spec["high"])
    return header, layers
