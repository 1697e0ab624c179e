"""The quantizers of a layer as NIR metadata, and back: NIR nodes hold real values only.

:func:`aquatic.interop.nir.export` writes each quantized layer's per-tensor parameter
grids (``weight``, ``bias``, ``threshold``, ``rec_weight``) under
``graph.metadata["aquatic"]["params"][node]``, and each spiking layer's state
quantizers (``v_mem``, ``i_syn``) with the integer decay rule they run under (a
:class:`~aquatic.quantizers.BitShiftDecay` or :class:`~aquatic.quantizers.UniformDecay`
decides the decay; see :mod:`aquatic.nn.grid_decay`) under ``["states"][node]``.
:func:`aquatic.interop.nir.load` rebuilds them as fixed-scale quantizers, so the loaded
layer computes on the same integer grids (a Xylo model loads as a model Xylo's export
takes). Other NIR tools read the nodes' real values and ignore the metadata.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from torch import nn

from aquatic.interop._common import active, export_grid
from aquatic.qconfig import QConfig
from aquatic.quantizers import BitShiftDecay, UniformDecay, UniformQuantizer

__all__ = ["grid_record", "layer_qconfig", "param_records", "set_state_grids", "state_records"]

#: The parameters whose grids are recorded, and the QConfig field each loads into.
PARAMS = {"weight": "weight", "bias": "bias", "threshold": "threshold", "rec_weight": "weight"}
#: Decay quantizers with an integer rule on a quantized state, by name.
DECAYS = {"BitShiftDecay": BitShiftDecay, "UniformDecay": UniformDecay}


def grid_record(quantizer: nn.Module, where: str) -> Dict[str, Any]:
    """A per-tensor quantizer's grid as plain values; a ``ValueError`` for per-channel ones."""
    grid = export_grid(quantizer, where)
    if grid.ch_axis is not None or grid.scale.numel() != 1:
        raise ValueError(f"{where} is per channel; NIR metadata records per-tensor grids")
    return {
        "scale": float(grid.scale),
        "zero_point": int(grid.zero_point),
        "quant_min": int(grid.quant_min),
        "quant_max": int(grid.quant_max),
        "rounding": str(getattr(quantizer, "rounding", "nearest")),
    }


def param_records(module: nn.Module) -> Dict[str, Dict[str, Any]]:
    """The per-tensor grids of ``module``'s quantized parameters (per-channel and
    non-uniform ones are left out: the loaded layer keeps their values in float)."""
    records = {}
    for name in PARAMS:
        quantizer = active(module, name)
        if quantizer is None:
            continue
        try:
            records[name] = grid_record(quantizer, name)
        except ValueError:
            continue
    return records


def state_records(module: nn.Module, name: str, states: Any) -> Optional[Dict[str, Any]]:
    """The grids of a spiking layer's state quantizers and the decay rule they run
    under, or ``None`` without state quantizers; a ``ValueError`` naming the layer when
    NIR's metadata cannot carry them."""
    records: Dict[str, Any] = {}
    for state in states:
        quantizer = active(module, state)
        if quantizer is not None:
            where = f"layer {name!r}: the state quantizer of {state!r}"
            records[state] = grid_record(quantizer, where)
    if not records:
        return None
    for part in ("mem", "syn"):
        decay = active(module, f"alpha_{part}") or active(module, f"tau_{part}")
        if decay is None or f"{'v' if part == 'mem' else 'i'}_{part}" not in records:
            continue
        if type(decay).__name__ not in DECAYS:
            raise ValueError(
                f"layer {name!r}: its {part} decay is quantized by {type(decay).__name__}, "
                f"whose rule on the quantized state NIR metadata cannot name; use one of "
                f"{', '.join(DECAYS)}"
            )
        records[f"decay_{part}"] = {"class": type(decay).__name__, "bits": int(decay.bits)}
    return records


def _text(value: Any) -> str:
    """A string from the metadata (NIR files hold bytes or 0-d arrays)."""
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _uniform(record: Dict[str, Any]):
    return UniformQuantizer.with_args(
        scale=float(np.asarray(record["scale"])),
        zero_point=int(np.asarray(record["zero_point"])),
        quant_min=int(np.asarray(record["quant_min"])),
        quant_max=int(np.asarray(record["quant_max"])),
        rounding=_text(record.get("rounding", "nearest")),
    )


def layer_qconfig(
    activation: Optional[Dict[str, Any]],
    params: Optional[Dict[str, Any]],
    states: Optional[Dict[str, Any]],
) -> Optional[QConfig]:
    """The QConfig that rebuilds a node's recorded quantizers (``None``: none recorded).
    The state quantizers load from ``v_mem``'s grid (an ``i_syn`` grid that differs is
    set on the layer afterwards, see :func:`set_state_grids`)."""
    fields: Dict[str, Any] = {}
    if activation:
        fields["activation"] = _uniform(activation)
    for param, record in (params or {}).items():
        if param in PARAMS:
            fields[PARAMS[param]] = _uniform(record)
    if states:
        first = states.get("v_mem") or states.get("i_syn")
        fields["state"] = _uniform(first)
        decay = states.get("decay_mem") or states.get("decay_syn")
        if decay:
            kind = DECAYS.get(_text(decay["class"]))
            if kind is None:
                raise ValueError(f"unknown decay quantizer {decay['class']!r} in the metadata")
            fields["alpha"] = kind.with_args(bits=int(np.asarray(decay["bits"])), param="alpha")
    return QConfig(**fields) if fields else None


def set_state_grids(layer: nn.Module, states: Optional[Dict[str, Any]]) -> None:
    """Give ``i_syn`` its own recorded grid where it differs from ``v_mem``'s."""
    if not states or "i_syn" not in states or "i_syn" not in layer.quantizers:
        return
    if "v_mem" not in states or float(states["i_syn"]["scale"]) != float(states["v_mem"]["scale"]):
        layer.quantizers["i_syn"] = _uniform(states["i_syn"])()
