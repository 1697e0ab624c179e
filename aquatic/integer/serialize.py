"""Saving and loading integer models: plain tensors and a small JSON header.

The file is a ``torch.save`` of ``{"header": str, "tensors": {name: Tensor}}``. The
header is JSON: the format name and version, the input and output scales, and per
layer its ``kind`` and constructor configuration; tensor ``"3.weight"`` is argument
``weight`` of layer 3. Reading it needs no pickled code:
``torch.load(f, weights_only=True)`` opens it, and :func:`load` rebuilds the model.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Dict, List

import torch

from aquatic.integer._schema import check_header, fail
from aquatic.integer._schema_tensors import certify, check_layer
from aquatic.integer.base import KINDS, QSpec
from aquatic.integer.model import IntegerModel

__all__ = ["FORMAT", "VERSION", "save", "load"]

FORMAT = "aquatic.integer"
VERSION = 1


def save(model: IntegerModel, f) -> None:
    """Save ``model`` to ``f`` (a path or a writable binary file).

    Example:
        >>> import io
        >>> from aquatic.integer.layers import IntegerLinear
        >>> model = IntegerModel([IntegerLinear(torch.tensor([[2, -1]]))],
        ...                      QSpec(0.5, 0, low=-8, high=7), QSpec(0.25, 0))
        >>> buffer = io.BytesIO(); save(model, buffer); _ = buffer.seek(0)
        >>> sorted(torch.load(buffer, weights_only=True)["tensors"])
        ['0.input_zero_point', '0.pre_shift', '0.weight']
        >>> _ = buffer.seek(0); load(buffer)(torch.tensor([[3, -4]]))
        tensor([[10]], dtype=torch.int32)
    """
    if not isinstance(model, IntegerModel):
        raise TypeError(
            f"save takes an IntegerModel (from aquatic.convert), got {type(model).__name__}"
        )
    layers = []
    tensors: Dict[str, torch.Tensor] = {}
    for index, layer in enumerate(model.layers):
        layers.append({"kind": layer.kind, "config": layer.config()})
        for key, value in layer.tensors().items():
            tensors[f"{index}.{key}"] = value.detach().cpu().clone()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "input": {
            **model.input_spec.header(),
            "rounding": model.input_rounding,
            "on_grid": model.input_on_grid,
            "notes": model.input_notes,
        },
        "output": model.output_spec.header(),
        "layers": layers,
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


def load(f) -> IntegerModel:
    """Load an integer model saved by :func:`save` (``weights_only``: no code is unpickled).

    Everything in the file is checked before the model is rebuilt: the header's fields
    and their types, every layer's configuration (known rounding names, ``low <= high``,
    one entry per dimension...), every tensor (integer dtype, shape against the header,
    multipliers, shifts and decays in range, thresholds positive), and the range each
    integer accumulator can reach from the input range, which must stay in int32 as
    :func:`aquatic.convert` certified it (weights edited out of range are refused).

    Raises:
        ValueError: the file is empty, truncated, not an aquatic integer model, of a
            newer version, or malformed; the message names the field.
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
    return IntegerModel(
        layers,
        QSpec.from_header(spec),
        QSpec.from_header(header["output"]),
        input_rounding=spec["rounding"],
        input_on_grid=spec["on_grid"],
        input_notes=spec["notes"],
    )
