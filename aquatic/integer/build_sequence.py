"""Building the integer models of sequence layers for :func:`aquatic.convert`: embeddings
(:mod:`aquatic.integer.embedding`), GRU and LSTM (:mod:`aquatic.integer.recurrent`), and
the modules that place a recurrent layer in a ``Sequential``
(:class:`aquatic.nn.SelectOutput`, :class:`aquatic.nn.LastStep`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.functional.grid import Grid
from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.build_recurrent import build_gru, build_lstm, build_rnn
from aquatic.integer.embedding import IntegerEmbedding, IntegerEmbeddingBag
from aquatic.integer.reading import describe, grid_steps, read_grid
from aquatic.integer.sequence import IntegerLastStep, IntegerSelectOutput
from aquatic.nn import GRU, LSTM, RNN, Embedding, EmbeddingBag, LastStep, SelectOutput
from aquatic.nn.base import eval_mode

__all__ = [
    "SEQUENCE_LAYERS",
    "build_embedding",
    "build_sequence_layer",
    "index_spec",
]

#: The layer types :func:`build_sequence_layer` converts.
SEQUENCE_LAYERS = (RNN, GRU, LSTM, Embedding, EmbeddingBag, SelectOutput, LastStep)

#: The largest |weight step * multiplier| of a bag table: 2**22 rows per bag stay in int64.
_TABLE_LIMIT = 2**40


def index_spec(layer: nn.Module) -> QSpec:
    """The input of a model that starts with an embedding: its row indices."""
    return QSpec(torch.tensor(1.0), torch.tensor(0), None, 0, layer.num_embeddings - 1)


def _spec(grid: Grid) -> QSpec:
    return QSpec(grid.scale, grid.zero_point, None, grid.quant_min, grid.quant_max)


def _rows(layer: nn.Module, where: str) -> Tuple[Tensor, Grid, List[str]]:
    """The quantized table as the layer uses it, and the weight grid."""
    if "weight" not in layer.quantizers:
        raise ValueError(
            f"{where} has no weight quantizer; the integer model needs QConfig.weight "
            "(e.g. aquatic.qconfig.int8)"
        )
    notes: List[str] = []
    quantizer = layer.quantizers["weight"]
    weight = layer.weight.detach().clone()
    if layer.max_norm is not None:  # every row as the layer renormalizes it when read
        rows = torch.arange(weight.shape[0], device=weight.device)
        torch.embedding_renorm_(weight, rows, layer.max_norm, layer.norm_type)
    with eval_mode([quantizer]):
        values = quantizer(weight)
    grid = read_grid(quantizer, f"{where}, quantizer 'weight'", notes, False)
    if grid.per_channel and grid.ch_axis % 2 != 0:
        raise ValueError(f"{where}: the weight is quantized per column; use ch_axis=0 (per row)")
    return values, grid, notes


def _code_table(layer: nn.Module, where: str) -> Tuple[Tensor, QSpec, List[str]]:
    """The output codes of every row: through the activation quantizer, if any."""
    values, grid, notes = _rows(layer, where)
    output = layer.quantizers["activation"] if "activation" in layer.quantizers else None
    if output is None:
        if grid.per_channel:
            raise ValueError(
                f"{where}: rows with scales of their own need one output grid; set "
                "QConfig.activation, or quantize the weight per tensor"
            )
        return grid_steps(values, grid, where) + grid.zero_point, _spec(grid), notes
    out_grid = read_grid(output, f"{where}, quantizer 'activation'", notes)
    if out_grid.per_channel:
        raise ValueError(f"{where}: the activation quantizer is per channel; use one scale")
    with eval_mode([output]):
        codes = grid_steps(output(values), out_grid, where) + out_grid.zero_point
    return codes, _spec(out_grid), notes


@torch.no_grad()
def build_embedding(name: str, layer: nn.Module) -> Tuple[IntegerModule, QSpec]:
    """The integer model of an aquatic ``Embedding`` or ``EmbeddingBag``.

    The layer needs a weight quantizer (per tensor, or per row), and for per-row scales,
    or bags with ``mode`` ``"sum"`` or ``"mean"``, an activation quantizer (one output
    grid). Lookups and ``"max"`` bags are bit-exact; ``"sum"`` and ``"mean"`` bags are
    too where the scale ratios are powers of two, and are otherwise at most one step
    apart (``notes`` says so).

    Returns:
        ``(module, spec)``: the integer module and the meaning of its output codes.

    Raises:
        TypeError: ``layer`` is neither.
        ValueError: a quantizer it needs is missing, has no range, or is per channel
            where one scale is needed.
    """
    where = describe(name, layer)
    source = type(layer).__name__
    if isinstance(layer, Embedding):
        table, spec, notes = _code_table(layer, where)
        return IntegerEmbedding(table, name=name, notes=notes, source=source), spec
    if not isinstance(layer, EmbeddingBag):
        raise TypeError(f"build_embedding takes an aquatic.nn Embedding(Bag), got {source}")
    options = dict(include_last_offset=layer.include_last_offset, padding_idx=layer.padding_idx)
    if layer.mode == "max":
        table, spec, notes = _code_table(layer, where)
        zero = int(spec.zero_point)
        module = IntegerEmbeddingBag(table, "max", 0, zero, spec.low, spec.high, **options)
    else:
        values, grid, notes = _rows(layer, where)
        if "activation" not in layer.quantizers:
            raise ValueError(
                f"{where} {layer.mode}s rows into values off the weight grid; the integer "
                "model needs an output grid: set QConfig.activation"
            )
        out_grid = read_grid(layer.quantizers["activation"], f"{where}, 'activation'", notes)
        if out_grid.per_channel:
            raise ValueError(f"{where}: the activation quantizer is per channel; use one scale")
        steps = grid_steps(values, grid, where)
        scale = grid.scale.reshape(-1, 1) if grid.per_channel else grid.scale
        ratio = scale.double() / out_grid.scale.double()
        largest = float(steps.abs().max().clamp(min=1)) * float(ratio.max())
        shift = max(0, min(48, math.floor(math.log2(_TABLE_LIMIT / largest))))
        multiplier = torch.round(ratio * 2.0**shift).to(torch.int64)
        if not torch.equal(multiplier.double(), ratio * 2.0**shift):
            notes.append(f"{where}: the scale ratios are not powers of two; one step apart")
        if layer.mode == "mean":
            notes.append(f"{where}: the mean is rounded halves up; one step apart at ties")
        spec = _spec(out_grid)
        zero = int(spec.zero_point)
        module = IntegerEmbeddingBag(
            steps * multiplier, layer.mode, shift, zero, spec.low, spec.high, **options
        )
    module.name, module.notes, module.source = name, notes, source
    return module, spec


#: The builder of each recurrent layer type.
RECURRENT_BUILDERS = {RNN: build_rnn, GRU: build_gru, LSTM: build_lstm}


@dataclass
class TupleSpec(QSpec):
    """The meaning of a tuple of codes in a chain (a recurrent layer's ``(output, h_n)``,
    an LSTM's ``(h_n, c_n)``): ``parts`` holds the spec of each element, a list for
    stacked final states (one spec per layer and direction); the inherited fields are
    those of the first element's codes."""

    parts: tuple = ()

    @classmethod
    def of(cls, parts: tuple) -> "TupleSpec":
        first = parts[0][0] if isinstance(parts[0], list) else parts[0]
        return cls(
            first.scale, first.zero_point, first.axis, first.low, first.high, [], parts=parts
        )

    def select(self, index: int, where: str) -> QSpec:
        """The spec of element ``index``."""
        if not -len(self.parts) <= index < len(self.parts):
            raise ValueError(f"{where} selects element {index} of a {len(self.parts)}-tuple")
        part = self.parts[index]
        if not isinstance(part, list):
            return part
        shared = one_grid(part)
        if shared is None:
            raise ValueError(
                f"{where} selects the final states of a stacked or bidirectional recurrent "
                "layer, which hold each layer and direction's codes on its own grid; in an "
                "nn.Sequential select the output (SelectOutput(0)) and its last step "
                "(LastStep), or convert a model with a forward of its own that indexes one "
                "layer and direction (h[-1])"
            )
        return shared


def one_grid(specs: List[QSpec]) -> Optional[QSpec]:
    """The spec of stacked final states that all lie on one grid (the first), or
    ``None`` where they lie on several."""
    grids = {(float(s.scale), int(s.zero_point), s.low, s.high) for s in specs}
    return specs[0] if len(grids) == 1 else None


def _recurrent_spec(module: IntegerModule, spec: QSpec) -> TupleSpec:
    """The :class:`TupleSpec` of what an integer recurrent layer returns."""
    states = module.state_specs()
    hidden = states["hidden"]
    finals = hidden if "cell" not in states else TupleSpec.of((hidden, states["cell"]))
    return TupleSpec.of((spec, finals))


def build_sequence_layer(name: str, layer: nn.Module, spec: QSpec):
    """``(modules, spec)`` for one layer of :data:`SEQUENCE_LAYERS` whose input ``spec``
    describes (an embedding ignores it: its input is row indices)."""
    source = type(layer).__name__
    if isinstance(layer, (Embedding, EmbeddingBag)):
        module, spec = build_embedding(name, layer)
    elif isinstance(layer, (RNN, GRU, LSTM)):
        module, spec = RECURRENT_BUILDERS[type(layer)](name, layer, spec)
        spec = _recurrent_spec(module, spec)
    elif isinstance(layer, SelectOutput):
        module = IntegerSelectOutput(layer.index, name=name, source=source)
        if isinstance(spec, TupleSpec):
            spec = spec.select(layer.index, describe(name, layer))
    elif isinstance(layer, LastStep):
        module = IntegerLastStep(layer.dim, name=name, source=source)
    else:
        raise TypeError(f"{describe(name, layer)} is not a sequence layer")
    return [module], spec
