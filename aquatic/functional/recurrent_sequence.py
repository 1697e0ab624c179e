"""A stack of recurrent layers run over a sequence, one explicit step at a time.

:func:`recurrent_sequence` is what :class:`torch.nn.RNN`, :class:`torch.nn.LSTM` and
:class:`torch.nn.GRU` compute (layers, directions, dropout between layers, sequences of
different lengths as in a :class:`torch.nn.utils.rnn.PackedSequence`), written as a
loop over the steps of :mod:`aquatic.functional.recurrent`, so that every step can
quantize its signals.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from aquatic.functional.recurrent import CellQuantizers, CellWeights

__all__ = ["recurrent_sequence"]

#: A cell's state: ``h``, or ``(h, c)`` for an LSTM.
State = Union[Tensor, Tuple[Tensor, ...]]
#: One step: ``(input, state, weights, quantizers) -> new state``.
Step = Callable[[Tensor, State, CellWeights, CellQuantizers], State]


def _rows(state: State, start: int, stop: int) -> State:
    if isinstance(state, tuple):
        return tuple(s[start:stop] for s in state)
    return state[start:stop]


def _stack_rows(top: State, bottom: State) -> State:
    if isinstance(top, tuple):
        return tuple(torch.cat(pair) for pair in zip(top, bottom))
    return torch.cat((top, bottom))


def _batch(state: State) -> int:
    return (state[0] if isinstance(state, tuple) else state).shape[0]


def _output(state: State) -> Tensor:
    return state[0] if isinstance(state, tuple) else state


def _direction(
    step: Step,
    inputs: Sequence[Tensor],
    state0: State,
    weights: CellWeights,
    quantizers: CellQuantizers,
    reverse: bool,
) -> Tuple[List[Tensor], State]:
    """One layer in one direction. Row ``b`` of ``inputs[t]`` exists while sequence ``b``
    lasts (the rows of a packed sequence: batch sizes never grow with ``t``)."""
    outputs: List[Tensor] = [inputs[0]] * len(inputs)
    if not reverse:
        state = state0
        for t, x in enumerate(inputs):
            active = x.shape[0]
            new = step(x, _rows(state, 0, active), weights, quantizers)
            outputs[t] = _output(new)
            # Sequences that have ended keep their last state.
            state = new if active == _batch(state) else _stack_rows(new, _rows(state, active, None))
        return outputs, state
    # Backwards, a sequence starts (from its initial state) at its own last step.
    state = _rows(state0, 0, inputs[-1].shape[0])
    for t in range(len(inputs) - 1, -1, -1):
        x = inputs[t]
        if _batch(state) < x.shape[0]:
            state = _stack_rows(state, _rows(state0, _batch(state), x.shape[0]))
        state = step(x, state, weights, quantizers)
        outputs[t] = _output(state)
    return outputs, state


def recurrent_sequence(
    step: Step,
    inputs: Sequence[Tensor],
    states: Sequence[State],
    weights: Sequence[CellWeights],
    quantizers: Sequence[CellQuantizers],
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
) -> Tuple[List[Tensor], List[State]]:
    """Run ``num_layers`` recurrent layers over a sequence, step by step.

    Layer :math:`k > 0` reads the outputs of layer :math:`k - 1` (both directions
    concatenated), after dropout with probability ``dropout`` in training, as
    :class:`torch.nn.LSTM` and its kin do.

    Args:
        step: one time step, e.g. ``functools.partial(rnn_cell, nonlinearity="relu")``,
            :func:`~aquatic.functional.recurrent.lstm_cell` or
            :func:`~aquatic.functional.recurrent.gru_cell`.
        inputs: one tensor :math:`(N_t, H_{in})` per time step; the :math:`N_t` rows
            are the sequences that last until step :math:`t`, the longest first
            (:math:`N_t` never grows, as in a packed sequence).
        states: the initial state of each layer and direction (order ``l0``,
            ``l0_reverse``, ``l1``, ...), :math:`(N_0, H)` each (a tuple for an LSTM).
        weights: the parameters of each layer and direction, in the same order.
        quantizers: the quantizers of each layer and direction, in the same order.
        num_layers: number of stacked layers.
        bidirectional: whether each layer also runs backwards in time.
        dropout: dropout probability on the outputs of every layer but the last.
        training: apply dropout (in training only, as torch does).

    Returns:
        ``(outputs, final_states)``: the last layer's output at each step,
        :math:`(N_t, D \\cdot H_{out})`, and the final state of each layer and direction
        (a sequence's final state is the one after its own last step).

    Example:
        >>> from aquatic.functional.recurrent import CellWeights, rnn_cell
        >>> w = CellWeights(torch.ones(1, 1), torch.ones(1, 1))
        >>> steps = [torch.tensor([[1.0]])] * 3
        >>> outputs, finals = recurrent_sequence(
        ...     lambda x, h, w, q: rnn_cell(x, h, w, q, "relu"), steps, [torch.zeros(1, 1)],
        ...     [w], [CellQuantizers()])
        >>> torch.cat(outputs).flatten().tolist(), finals[0].item()
        ([1.0, 2.0, 3.0], 3.0)
    """
    directions = 2 if bidirectional else 1
    expected = num_layers * directions
    for name, given in (("states", states), ("weights", weights), ("quantizers", quantizers)):
        if len(given) != expected:
            raise ValueError(
                f"recurrent_sequence: {name} has {len(given)} entries, but {num_layers} "
                f"layer(s) x {directions} direction(s) need {expected}"
            )
    if not inputs:
        raise ValueError("recurrent_sequence: the sequence has no time steps")
    layer_inputs = list(inputs)
    finals: List[State] = []
    for layer in range(num_layers):
        per_direction = []
        for direction in range(directions):
            index = layer * directions + direction
            outputs, final = _direction(
                step,
                layer_inputs,
                states[index],
                weights[index],
                quantizers[index],
                reverse=direction == 1,
            )
            per_direction.append(outputs)
            finals.append(final)
        if directions == 1:
            layer_inputs = per_direction[0]
        else:
            layer_inputs = [torch.cat(pair, -1) for pair in zip(*per_direction)]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_inputs = [F.dropout(x, dropout, True) for x in layer_inputs]
    return layer_inputs, finals
