"""Building the integer models of quantization-aware GRU and LSTM layers
(:class:`~aquatic.integer.recurrent.IntegerGRU`, :class:`~aquatic.integer.recurrent.IntegerLSTM`,
and :class:`~aquatic.integer.recurrent_stack.IntegerRecurrentStack` of them for stacked
and bidirectional layers).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from aquatic.integer.base import QSpec
from aquatic.integer.reading import describe, grid_steps, read_grid
from aquatic.integer.recurrent import TANH_BITS, IntegerGRU, IntegerLSTM, IntegerRNN
from aquatic.integer.recurrent_stack import IntegerRecurrentStack
from aquatic.nn import GRU, LSTM, RNN
from aquatic.nn.base import eval_mode

__all__ = ["build_rnn", "build_gru", "build_lstm"]


def _read(
    name: str, layer: nn.Module, spec: QSpec, signals: Tuple[str, ...], suffix: str
) -> Dict[str, Any]:
    """Weight codes, biases, scales and grids of one layer and direction (``suffix``:
    ``_l0``, ``_l1_reverse`` ...)."""
    where = describe(name, layer)
    if spec.scale.dim() != 0 or spec.zero_point.dim() != 0 or not spec.bounded:
        raise ValueError(
            f"{where}: the input codes need one scale and a range; quantize the input per "
            "tensor (an aquatic.nn.ActivationQuantizer before the layer)"
        )
    quantizers = layer.quantizers
    weights = ("weight_ih", "weight_hh") + (("weight_hr",) if _projects(layer) else ())
    missing = [key + suffix for key in weights + signals if key + suffix not in quantizers]
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
    for key in weights:
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
    args = dict(
        weight_ih=codes["weight_ih"],
        weight_hh=codes["weight_hh"],
        bias_ih=None if bias_ih is None else bias_ih.detach(),
        bias_hh=None if bias_hh is None else bias_hh.detach(),
        scales=scales,
        grids=grids,
        **_tables(where, layer, quantizers, suffix, scales, grids),
        batch_first=layer.batch_first,
        reverse=suffix.endswith("_reverse"),
        name=name,
        notes=notes,
        source=type(layer).__name__,
    )
    if "weight_hr" in codes:
        args["weight_hr"] = codes["weight_hr"]
    return args


def _tables(where, layer, quantizers, suffix, scales, grids) -> Dict[str, torch.Tensor]:
    """The lookup tables: every ``gates`` code through the float function and the
    quantizer after it, as the quantization-aware layer computes them (sigmoid and tanh
    onto ``gate_outputs``; an RNN's nonlinearity onto ``hidden``)."""
    real = _reals(scales["gates"], grids["gates"])
    if "gate_outputs" in grids:
        functions = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}
        after = quantizers["gate_outputs" + suffix]
    else:
        functions = {"activation": torch.tanh if layer.nonlinearity == "tanh" else torch.relu}
        after = quantizers["hidden" + suffix]
    with eval_mode([after]):
        grid = read_grid(after, where, [])
        return {
            key: grid_steps(after(function(real)), grid, where) + grid.zero_point
            for key, function in functions.items()
        }


def _projects(layer: nn.Module) -> bool:
    return getattr(layer, "proj_size", 0) > 0


def _given(where: str, state: Any, keys: Tuple[str, ...]) -> Tuple[Optional[dict], Optional[dict]]:
    """``(state_scales, state_grids)`` of given initial states described by ``state``
    (a QSpec, or one per key), or ``(None, None)``."""
    if state is None:
        return None, None
    specs = tuple(state) if isinstance(state, (tuple, list)) else (state,)
    if len(specs) != len(keys):
        raise ValueError(f"{where}: the initial state needs {len(keys)} spec(s), got {len(specs)}")
    scales, grids = {}, {}
    for key, spec in zip(keys, specs):
        if not isinstance(spec, QSpec) or spec.per_channel or not spec.bounded:
            raise ValueError(
                f"{where}: the initial {key} state must be codes with one scale and a range "
                f"(quantize it per tensor, e.g. an aquatic.nn.ActivationQuantizer), got {spec!r}"
            )
        scales[key] = float(spec.scale)
        grids[key] = (int(spec.zero_point), spec.low, spec.high)
    return scales, grids


def _build(
    name: str,
    layer: nn.Module,
    spec: QSpec,
    index: Optional[int],
    state: Any,
    make: Callable[[Dict[str, Any]], Any],
    signals: Tuple[str, ...],
):
    """The integer layer(s) of ``layer``: one module for one layer in one direction (or
    layer ``index`` of a stack, forwards), an :class:`IntegerRecurrentStack` otherwise."""
    where = describe(name, layer)
    keys = ("hidden", "cell") if "cell" in signals else ("hidden",)
    state_scales, state_grids = _given(where, state, keys)
    given = dict(state_scales=state_scales, state_grids=state_grids)
    if index is not None:
        if not 0 <= index < layer.num_layers:
            raise ValueError(f"{where} has no layer {index} (num_layers={layer.num_layers})")
        module = make(dict(_read(name, layer, spec, signals, f"_l{index}"), **given))
        return module, module.state_specs()["hidden"]
    if layer.num_layers == 1 and not layer.bidirectional:
        module = make(dict(_read(name, layer, spec, signals, "_l0"), **given))
        return module, module.state_specs()["hidden"]
    layers = []
    directions = 2 if layer.bidirectional else 1
    for k, suffix in enumerate(layer._suffixes()):
        args = _read(f"{name}{suffix}", layer, spec, signals, suffix)
        layers.append(make(dict(args, **given)))
        if k % directions == directions - 1:  # the next layer reads these hidden codes
            spec = layers[-1].state_specs()["hidden"]
    stack = IntegerRecurrentStack(
        layers,
        layer.num_layers,
        layer.bidirectional,
        layer.batch_first,
        name=name,
        notes=[note for module in layers for note in module.notes],
        source=type(layer).__name__,
    )
    return stack, spec


def _reals(scale: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
    """The float32 value of every code of a grid, low to high."""
    zero, low, high = grid
    return ((torch.arange(low, high + 1) - zero).double() * scale).float()


@torch.no_grad()
def build_rnn(
    name: str, layer: RNN, spec: QSpec, index: Optional[int] = None, state: Any = None
) -> Tuple[Union[IntegerRNN, IntegerRecurrentStack], QSpec]:
    """The integer model of an aquatic ``RNN`` (tanh or ReLU) whose input codes ``spec``
    describes: as :func:`build_gru`, with the ``gates`` and ``hidden`` quantizers
    (``QConfig.activation``).

    Returns:
        ``(module, spec)``: the integer RNN (or a stack of them) and the meaning of its
        output codes.
    """
    if not isinstance(layer, RNN):
        raise TypeError(f"build_rnn takes an aquatic.nn.RNN, got {type(layer).__name__}")
    return _build(name, layer, spec, index, state, lambda a: IntegerRNN(**a), ("gates", "hidden"))


@torch.no_grad()
def build_gru(
    name: str, layer: GRU, spec: QSpec, index: Optional[int] = None, state: Any = None
) -> Tuple[Union[IntegerGRU, IntegerRecurrentStack], QSpec]:
    """The integer model of an aquatic ``GRU`` whose input codes ``spec`` describes.

    The layer needs per-tensor input codes, weight quantizers (per tensor or per output
    row) and the ``gates``, ``gate_outputs`` and ``hidden`` quantizers
    (``QConfig.activation``), each per tensor and with a range.

    Args:
        name: the layer's qualified name (for messages).
        layer: the trained layer.
        spec: the meaning of its input codes.
        index: build only layer ``index`` of a stack (forwards), whose input is the
            previous layer's hidden codes; ``None`` for the whole layer.
        state: the meaning (a :class:`~aquatic.integer.base.QSpec`) of the initial
            hidden codes that will be given to ``forward``, which the integer layer
            requantizes onto its own grids as the quantization-aware layer quantizes a
            given state; ``None`` when the layer always starts from zeros (or is given
            codes on its own grid).

    Returns:
        ``(module, spec)``: the integer GRU (an
        :class:`~aquatic.integer.recurrent_stack.IntegerRecurrentStack` of them for
        ``num_layers > 1`` or ``bidirectional=True``) and the meaning of its output
        codes (the last layer's hidden grid).

    Raises:
        TypeError: ``layer`` is not an :class:`aquatic.nn.GRU`.
        ValueError: a quantizer it needs is missing, per channel, or has no range; the
            input or the given state is per channel; ``index`` is out of range.
    """
    if not isinstance(layer, GRU):
        raise TypeError(f"build_gru takes an aquatic.nn.GRU, got {type(layer).__name__}")
    return _build(
        name,
        layer,
        spec,
        index,
        state,
        lambda a: IntegerGRU(**a),
        ("gates", "gate_outputs", "hidden"),
    )


@torch.no_grad()
def build_lstm(
    name: str, layer: LSTM, spec: QSpec, index: Optional[int] = None, state: Any = None
) -> Tuple[Union[IntegerLSTM, IntegerRecurrentStack], QSpec]:
    """The integer model of an aquatic ``LSTM`` whose input codes ``spec`` describes.

    As :func:`build_gru`; the layer also needs a ``cell`` quantizer (``QConfig.state``),
    and with a projection (``proj_size > 0``) the ``weight_hr`` quantizers
    (``QConfig.weight``). ``state`` is ``(h_spec, c_spec)``.

    Returns:
        ``(module, spec)``: the integer LSTM (or a stack of them) and the meaning of
        its output codes.
    """
    if not isinstance(layer, LSTM):
        raise TypeError(f"build_lstm takes an aquatic.nn.LSTM, got {type(layer).__name__}")
    signals = ("gates", "gate_outputs", "cell", "hidden")
    return _build(name, layer, spec, index, state, _lstm, signals)


def _lstm(args: Dict[str, Any]) -> IntegerLSTM:
    cells = _reals(args["scales"]["cell"], args["grids"]["cell"])
    cell_tanh = torch.round(torch.tanh(cells.double()) * 2**TANH_BITS).to(torch.int64)
    return IntegerLSTM(**args, cell_tanh=cell_tanh)
