"""Building the integer model of a quantization-aware GRU (:class:`IntegerGRU`)."""

from __future__ import annotations

from typing import List, Tuple

import torch

from aquatic.integer.base import QSpec
from aquatic.integer.reading import describe, grid_steps, read_grid
from aquatic.integer.recurrent import IntegerGRU
from aquatic.nn import GRU
from aquatic.nn.base import eval_mode

__all__ = ["build_gru"]


@torch.no_grad()
def build_gru(name: str, layer: GRU, spec: QSpec) -> Tuple[IntegerGRU, QSpec]:
    """The integer model of an aquatic ``GRU`` whose input codes ``spec`` describes.

    The layer needs one layer and direction, per-tensor input codes, weight quantizers
    (per tensor or per output row) and the ``gates``, ``gate_outputs`` and ``hidden``
    quantizers (``QConfig.activation``), each per tensor and with a range.

    Returns:
        ``(module, spec)``: the integer GRU and the meaning of its hidden codes.

    Raises:
        TypeError: ``layer`` is not an :class:`aquatic.nn.GRU`.
        ValueError: a quantizer it needs is missing, per channel, or has no range; the
            layer has more than one layer or direction; the input is per channel.
    """
    if not isinstance(layer, GRU):
        raise TypeError(f"build_gru takes an aquatic.nn.GRU, got {type(layer).__name__}")
    where = describe(name, layer)
    if layer.num_layers != 1 or layer.bidirectional:
        raise ValueError(
            f"{where} has {layer.num_layers} layer(s), bidirectional={layer.bidirectional}; "
            "the integer GRU runs one layer in one direction: stack one GRU per layer"
        )
    if spec.scale.dim() != 0 or spec.zero_point.dim() != 0 or not spec.bounded:
        raise ValueError(
            f"{where}: the input codes need one scale and a range; quantize the input per "
            "tensor (an aquatic.nn.ActivationQuantizer before the GRU)"
        )
    quantizers = layer.quantizers
    needed = ("weight_ih_l0", "weight_hh_l0", "gates_l0", "gate_outputs_l0", "hidden_l0")
    missing = [key for key in needed if key not in quantizers]
    if missing:
        raise ValueError(
            f"{where} has no quantizer {', '.join(missing)}; the integer GRU needs "
            "QConfig.weight and QConfig.activation (e.g. aquatic.qconfig.int8)"
        )
    notes: List[str] = []
    values = layer.quantize_params()
    scales, grids = {"input": spec.scale}, {"input": (int(spec.zero_point), spec.low, spec.high)}
    codes = {}
    for key in ("weight_ih", "weight_hh"):
        grid = read_grid(quantizers[key + "_l0"], f"{where}, quantizer {key}_l0", notes, False)
        if grid.per_channel and grid.ch_axis % 2 != 0:
            raise ValueError(f"{where}: {key}_l0 is quantized per channel along an input axis")
        codes[key] = grid_steps(values[key + "_l0"], grid, f"{where}, {key}_l0")
        scales[key] = grid.scale
    for key in ("gates", "gate_outputs", "hidden"):
        grid = read_grid(quantizers[key + "_l0"], f"{where}, quantizer {key}_l0", notes)
        if grid.scale.dim() != 0:
            raise ValueError(f"{where}: quantizer {key}_l0 is per channel; use one scale")
        scales[key] = grid.scale
        grids[key] = (int(grid.zero_point), grid.quant_min, grid.quant_max)
    biases = [values.get(k, getattr(layer, k)) for k in ("bias_ih_l0", "bias_hh_l0")]
    # The tables: every gates code through the float function and the quantizer, as
    # the quantization-aware layer computes them.
    zero, low, high = grids["gates"]
    real = ((torch.arange(low, high + 1) - zero).double() * scales["gates"]).float()
    outputs = quantizers["gate_outputs_l0"]
    tables = []
    with eval_mode([outputs]):
        for function in (torch.sigmoid, torch.tanh):
            table = read_grid(outputs, where, [])
            tables.append(grid_steps(outputs(function(real)), table, where) + table.zero_point)
    module = IntegerGRU(
        codes["weight_ih"],
        codes["weight_hh"],
        None if biases[0] is None else biases[0].detach(),
        None if biases[1] is None else biases[1].detach(),
        scales,
        grids,
        tables[0],
        tables[1],
        batch_first=layer.batch_first,
        name=name,
        notes=notes,
        source=type(layer).__name__,
    )
    zero, low, high = grids["hidden"]
    return module, QSpec(scales["hidden"], zero, None, low, high)
