"""Building the integer models of quantization-aware GRU and LSTM layers
(:class:`~aquatic.integer.recurrent.IntegerGRU`, :class:`~aquatic.integer.recurrent.IntegerLSTM`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from aquatic.integer.base import QSpec
from aquatic.integer.reading import describe, grid_steps, read_grid
from aquatic.integer.recurrent import TANH_BITS, IntegerGRU, IntegerLSTM
from aquatic.nn import GRU, LSTM
from aquatic.nn.base import eval_mode

__all__ = ["build_gru", "build_lstm"]


def _read(
    name: str, layer: nn.Module, spec: QSpec, signals: Tuple[str, ...], index: Optional[int]
) -> Dict[str, Any]:
    """Weight codes, biases, scales and grids of layer ``index`` (one direction)."""
    where = describe(name, layer)
    stacked = index is None and layer.num_layers != 1
    if stacked or layer.bidirectional or getattr(layer, "proj_size", 0):
        raise ValueError(
            f"{where} has {layer.num_layers} layer(s), bidirectional={layer.bidirectional}, "
            f"proj_size={getattr(layer, 'proj_size', 0)}; the integer model runs layers in "
            "one direction without projection, and in an nn.Sequential one layer each: "
            "stack one layer per aquatic.nn layer there (a model with a forward of its own "
            "converts num_layers > 1)"
        )
    index = 0 if index is None else index
    if not 0 <= index < layer.num_layers:
        raise ValueError(f"{where} has no layer {index} (num_layers={layer.num_layers})")
    suffix = f"_l{index}"
    if spec.scale.dim() != 0 or spec.zero_point.dim() != 0 or not spec.bounded:
        raise ValueError(
            f"{where}: the input codes need one scale and a range; quantize the input per "
            "tensor (an aquatic.nn.ActivationQuantizer before the layer)"
        )
    quantizers = layer.quantizers
    needed = ("weight_ih", "weight_hh") + signals
    missing = [key + suffix for key in needed if key + suffix not in quantizers]
    if missing:
        raise ValueError(
            f"{where} has no quantizer {', '.join(missing)}; the integer model needs "
            "QConfig.weight and QConfig.activation (e.g. aquatic.qconfig.int8)"
            + (" and QConfig.state for the cell state" if "cell" in signals else "")
        )
    notes: List[str] = []
    values = layer.quantize_params()
    scales = {"input": spec.scale}
    grids = {"input": (int(spec.zero_point), spec.low, spec.high)}
    codes = {}
    for key in ("weight_ih", "weight_hh"):
        grid = read_grid(
            quantizers[key + suffix], f"{where}, quantizer {key}{suffix}", notes, False
        )
        if grid.per_channel and grid.ch_axis % 2 != 0:
            raise ValueError(f"{where}: {key}{suffix} is quantized per channel along an input axis")
        codes[key] = grid_steps(values[key + suffix], grid, f"{where}, {key}{suffix}")
        scales[key] = grid.scale
    for key in signals:
        grid = read_grid(quantizers[key + suffix], f"{where}, quantizer {key}{suffix}", notes)
        if grid.scale.dim() != 0:
            raise ValueError(f"{where}: quantizer {key}{suffix} is per channel; use one scale")
        scales[key] = grid.scale
        grids[key] = (int(grid.zero_point), grid.quant_min, grid.quant_max)
    bias_ih, bias_hh = (
        values.get(k, getattr(layer, k)) for k in ("bias_ih" + suffix, "bias_hh" + suffix)
    )
    # The tables: every gates code through the float function and the quantizer, as
    # the quantization-aware layer computes them.
    outputs = quantizers["gate_outputs" + suffix]
    tables = []
    with eval_mode([outputs]):
        grid = read_grid(outputs, where, [])
        for function in (torch.sigmoid, torch.tanh):
            real = _reals(scales["gates"], grids["gates"])
            tables.append(grid_steps(outputs(function(real)), grid, where) + grid.zero_point)
    return dict(
        weight_ih=codes["weight_ih"],
        weight_hh=codes["weight_hh"],
        bias_ih=None if bias_ih is None else bias_ih.detach(),
        bias_hh=None if bias_hh is None else bias_hh.detach(),
        scales=scales,
        grids=grids,
        sigmoid=tables[0],
        tanh=tables[1],
        batch_first=layer.batch_first,
        name=name,
        notes=notes,
        source=type(layer).__name__,
    )


def _reals(scale: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
    """The float32 value of every code of a grid, low to high."""
    zero, low, high = grid
    return ((torch.arange(low, high + 1) - zero).double() * scale).float()


@torch.no_grad()
def build_gru(
    name: str, layer: GRU, spec: QSpec, index: Optional[int] = None
) -> Tuple[IntegerGRU, QSpec]:
    """The integer model of an aquatic ``GRU`` whose input codes ``spec`` describes.

    The layer needs one layer and direction, per-tensor input codes, weight quantizers
    (per tensor or per output row) and the ``gates``, ``gate_outputs`` and ``hidden``
    quantizers (``QConfig.activation``), each per tensor and with a range.

    Args:
        name: the layer's qualified name (for messages).
        layer: the trained layer.
        spec: the meaning of its input codes.
        index: the layer of a stack (``num_layers > 1``) to build, whose input is the
            previous layer's hidden codes; ``None`` for a layer of one.

    Returns:
        ``(module, spec)``: the integer GRU and the meaning of its hidden codes.

    Raises:
        TypeError: ``layer`` is not an :class:`aquatic.nn.GRU`.
        ValueError: a quantizer it needs is missing, per channel, or has no range; the
            layer has more than one layer or direction; the input is per channel.
    """
    if not isinstance(layer, GRU):
        raise TypeError(f"build_gru takes an aquatic.nn.GRU, got {type(layer).__name__}")
    args = _read(name, layer, spec, ("gates", "gate_outputs", "hidden"), index)
    zero, low, high = args["grids"]["hidden"]
    return IntegerGRU(**args), QSpec(args["scales"]["hidden"], zero, None, low, high)


@torch.no_grad()
def build_lstm(
    name: str, layer: LSTM, spec: QSpec, index: Optional[int] = None
) -> Tuple[IntegerLSTM, QSpec]:
    """The integer model of an aquatic ``LSTM`` whose input codes ``spec`` describes.

    As :func:`build_gru`, and the layer also needs a ``cell`` quantizer
    (``QConfig.state``) and no projection (``proj_size=0``).

    Returns:
        ``(module, spec)``: the integer LSTM and the meaning of its hidden codes.
    """
    if not isinstance(layer, LSTM):
        raise TypeError(f"build_lstm takes an aquatic.nn.LSTM, got {type(layer).__name__}")
    args = _read(name, layer, spec, ("gates", "gate_outputs", "cell", "hidden"), index)
    cells = _reals(args["scales"]["cell"], args["grids"]["cell"])
    cell_tanh = torch.round(torch.tanh(cells.double()) * 2**TANH_BITS).to(torch.int64)
    zero, low, high = args["grids"]["hidden"]
    module = IntegerLSTM(**args, cell_tanh=cell_tanh)
    return module, QSpec(args["scales"]["hidden"], zero, None, low, high)
