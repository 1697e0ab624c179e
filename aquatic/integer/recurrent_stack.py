"""Stacked and bidirectional integer recurrent layers: one
:class:`~aquatic.integer.recurrent.IntegerRNN`, :class:`~aquatic.integer.recurrent.IntegerGRU`
or :class:`~aquatic.integer.recurrent.IntegerLSTM` per layer and direction, run as
:func:`aquatic.functional.recurrent_sequence` runs the quantization-aware layers (and
as :class:`torch.nn.GRU` documents): layer :math:`k` reads the output of layer
:math:`k - 1`, the two directions of a layer read the same input, the second from the
last step, and their outputs are concatenated along the features. Both directions of
a layer write their hidden codes on one grid (the quantization-aware layer shares its
``hidden`` quantizer between them), so the concatenation is a plain concatenation of
codes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from aquatic.integer.base import KINDS, IntegerModule, QSpec
from aquatic.integer.recurrent import IntegerGRU, IntegerLSTM, IntegerRNN

__all__ = ["IntegerRecurrentStack"]

Layer = Union[IntegerRNN, IntegerGRU, IntegerLSTM]


class IntegerRecurrentStack(IntegerModule):
    """``num_layers`` integer RNN, GRU or LSTM layers, in one or two directions, as one module
    that takes and returns what the torch layer does.

    Args:
        layers: the layer of each layer and direction, in torch's order (``l0``,
            ``l0_reverse``, ``l1``, ...): integer modules, or, as a file holds them,
            ``{"kind": "rnn" | "gru" | "lstm", "config": {...}}`` whose tensors come in
            ``tensors`` as ``"<position>.<argument>"``.
        num_layers: the number of stacked layers.
        bidirectional: whether each layer runs in both directions.
        batch_first: as torch's layer (each layer's own must agree).
        tensors: the layers' tensors, when ``layers`` holds configurations.

    Shape:
        - Input: :math:`(L, N, H_{in})` codes (:math:`(N, L, H_{in})` with ``batch_first``).
        - Initial state ``hx`` (optional): :math:`(D \\cdot num\\_layers, N, H_{out})`
          codes (``(h_0, c_0)`` for an LSTM), each layer and direction's on the grid
          its layer takes (see ``state_scales`` of the layers).
        - Output: ``(output, h_n)`` or ``(output, (h_n, c_n))`` as torch's layer: the
          last layer's hidden codes, both directions concatenated, and the final states
          of every layer and direction, each on its own layer's grid.

    Raises:
        ValueError: the layers do not fit together (count, kind, order of directions,
            a layer's input grid that is not the previous layer's hidden grid, or two
            directions of a layer on different hidden grids).
    """

    kind = "recurrent_stack"

    def __init__(
        self,
        layers: Sequence[Any],
        num_layers: int,
        bidirectional: bool,
        batch_first: bool = False,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
        **tensors: Tensor,
    ) -> None:
        super().__init__(name, notes, source)
        self.num_layers, self.bidirectional = int(num_layers), bool(bidirectional)
        self.batch_first = bool(batch_first)
        self.directions = 2 if self.bidirectional else 1
        built = [self._layer(k, entry, tensors) for k, entry in enumerate(layers)]
        if tensors:
            raise ValueError(f"{self._where()}: tensors {sorted(tensors)} belong to no layer")
        self.layers = nn.ModuleList(built)
        self._check()

    def _layer(self, position: int, entry: Any, tensors: Dict[str, Tensor]) -> Layer:
        if isinstance(entry, (IntegerRNN, IntegerGRU, IntegerLSTM)):
            return entry
        if not isinstance(entry, dict) or entry.get("kind") not in ("rnn", "gru", "lstm"):
            raise ValueError(
                f"{self._where()}: layer {position} must be an IntegerRNN, IntegerGRU or "
                f"IntegerLSTM, or {{'kind': 'rnn' | 'gru' | 'lstm', 'config': {{...}}}}, got "
                f"{entry!r}"
            )
        prefix = f"{position}."
        own = {k[len(prefix) :]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        return KINDS[entry["kind"]](**entry["config"], **own)

    def _check(self) -> None:
        where = self._where()
        expected = self.num_layers * self.directions
        if self.num_layers < 1 or len(self.layers) != expected:
            raise ValueError(
                f"{where}: {self.num_layers} layer(s) x {self.directions} direction(s) need "
                f"{expected} integer layers, got {len(self.layers)}"
            )
        if len({type(layer) for layer in self.layers}) != 1:
            raise ValueError(f"{where}: the layers mix kinds of recurrent layer")
        for k, layer in enumerate(self.layers):
            if layer.reverse != (k % self.directions == 1):
                raise ValueError(f"{where}: layer {k} runs in the wrong direction")
            if layer.batch_first != self.batch_first:
                raise ValueError(f"{where}: layer {k} has batch_first={layer.batch_first}")
        for index in range(self.num_layers):
            group = self._group(index)
            if len({_grid(layer, "hidden") for layer in group}) != 1:
                raise ValueError(
                    f"{where}: the directions of layer {index} write their outputs on "
                    "different grids; share the hidden quantizer of both directions"
                )
            if index > 0:
                previous = _grid(self._group(index - 1)[0], "hidden")
                for layer in group:
                    if _grid(layer, "input") != previous:
                        raise ValueError(
                            f"{where}: layer {index} reads codes on another grid than "
                            f"layer {index - 1} writes"
                        )

    def _group(self, index: int) -> List[Layer]:
        """The directions of layer ``index``."""
        start = index * self.directions
        return list(self.layers[start : start + self.directions])

    def config(self) -> Dict[str, Any]:
        """The constructor's JSON arguments; the layers as ``{"kind", "config"}``."""
        result = super().config()
        result.update(
            layers=[{"kind": layer.kind, "config": layer.config()} for layer in self.layers],
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            batch_first=self.batch_first,
        )
        return result

    def tensors(self) -> Dict[str, Tensor]:
        """Every layer's tensors, named ``"<position>.<argument>"``."""
        return {
            f"{k}.{key}": value
            for k, layer in enumerate(self.layers)
            for key, value in layer.tensors().items()
        }

    def state_specs(self) -> Dict[str, List[QSpec]]:
        """The :class:`~aquatic.integer.base.QSpec` of each layer and direction's final
        ``hidden`` (and ``cell``) codes, in the order of ``h_n``."""
        specs: Dict[str, List[QSpec]] = {}
        for layer in self.layers:
            for key, spec in layer.state_specs().items():
                specs.setdefault(key, []).append(spec)
        return specs

    def forward(self, input: Tensor, hx: Any = None) -> Tuple[Tensor, Any]:
        lstm = isinstance(self.layers[0], IntegerLSTM)
        given = self._split(hx, lstm)
        x = input
        finals: List[Any] = []
        for index in range(self.num_layers):
            outputs = []
            for k in range(index * self.directions, (index + 1) * self.directions):
                output, final = self.layers[k](x, given[k])
                outputs.append(output)
                finals.append(final)
            x = outputs[0] if self.directions == 1 else torch.cat(outputs, -1)
        if lstm:
            return x, (torch.cat([f[0] for f in finals]), torch.cat([f[1] for f in finals]))
        return x, torch.cat(finals)

    def _split(self, hx: Any, lstm: bool) -> List[Any]:
        """The initial state of each layer and direction (``None``: zeros)."""
        count = len(self.layers)
        if hx is None:
            return [None] * count
        states = tuple(hx) if lstm else (hx,)
        if lstm and len(states) != 2:
            raise TypeError(f"{self._where()} takes (h_0, c_0), got {len(states)} states")
        for state in states:
            if not isinstance(state, Tensor) or state.dim() != 3 or state.shape[0] != count:
                shape = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
                raise ValueError(
                    f"{self._where()}: an initial state must be {count} stacked states "
                    f"(num_layers x directions, N, H), got {shape}"
                )
        if lstm:
            return [(states[0][k], states[1][k]) for k in range(count)]
        return [states[0][k] for k in range(count)]


def _grid(layer: Layer, key: str) -> Tuple[float, ...]:
    scale = layer.scales[key]
    return (float(scale),) + tuple(layer.grids[key])
