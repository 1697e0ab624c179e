"""Saving and loading integer models: plain tensors and a small JSON header.

The file is a ``torch.save`` of ``{"header": str, "tensors": {name: Tensor}}``. The
header is JSON: the format name and version, the input and output scales, and per
layer its ``kind`` and constructor configuration; tensor ``"3.weight"`` is argument
``weight`` of layer 3. Reading it needs no pickled code:
``torch.load(f, weights_only=True)`` opens it, and :func:`load` rebuilds the model.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import torch

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


def load(f) -> IntegerModel:
    """Load an integer model saved by :func:`save` (``weights_only``: no code is unpickled).

    Raises:
        ValueError: the file is not an aquatic integer model, or of a newer version.
    """
    data = torch.load(f, weights_only=True)
    if not isinstance(data, dict) or "header" not in data or "tensors" not in data:
        raise ValueError("not an aquatic integer model file (no header and tensors)")
    header: Dict[str, Any] = json.loads(data["header"])
    if header.get("format") != FORMAT:
        raise ValueError(f"not an aquatic integer model file (format {header.get('format')!r})")
    if header.get("version", 0) > VERSION:
        raise ValueError(
            f"the file has format version {header['version']}, newer than this aquatic "
            f"reads ({VERSION}); update aquatic"
        )
    tensors = data["tensors"]
    layers = []
    for index, entry in enumerate(header["layers"]):
        kind = entry["kind"]
        if kind not in KINDS:
            raise ValueError(f"layer {index} has unknown kind {kind!r}")
        prefix = f"{index}."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        layers.append(KINDS[kind](**entry["config"], **own))
    spec = header["input"]
    return IntegerModel(
        layers,
        QSpec.from_header(spec),
        QSpec.from_header(header["output"]),
        input_rounding=spec["rounding"],
        input_on_grid=spec["on_grid"],
        input_notes=spec["notes"],
    )
