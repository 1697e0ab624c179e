r"""Quantized neuron states on fixed grids, as the fused sequence runs them.

A state quantizer with a fixed grid (scale :math:`s`, zero point :math:`z`, codes in
:math:`q_{min}..q_{max}`, nearest rounding; Jacob et al. 2018, eq. 1) and a chip's
integer decay rule on that grid are plain arithmetic: the fused sequence
(:mod:`aquatic.functional.neurons_grid_fused`) can run them without autograd when it
knows them as numbers. :class:`StateGrid` holds them for one state and
:class:`GridRules` for a neuron, with Loihi's two orderings (``strict_threshold``,
``input_after_decay``).

The state operations of a :class:`~aquatic.functional.neuron_types.StateOps` describe
themselves through two optional methods (duck typing; anything else runs step by step):

- a state transform's ``fixed_grid()`` returns the
  :class:`~aquatic.functional.grid.Grid` it quantizes to (per tensor, nearest rounding,
  with torch's fake quantization) when that grid stays fixed for a whole sequence, else
  ``None``;
- a decay function's ``fixed_rule(alpha)`` returns ``(rule, bits, codes)``: ``rule``
  ``"bitshift"`` (Xylo, :func:`~aquatic.functional.integer.bitshift_decay`) or
  ``"multiplicative"`` (Loihi, :func:`~aquatic.functional.integer.multiplicative_decay`
  with ``bits``), ``codes`` the integer ``dash`` or ``d`` of ``alpha``; or ``None``.

:func:`decay_on_grid` computes what those decays compute, bit for bit (the same torch
operations); :mod:`aquatic.functional.neurons_grid_kernel` has the forms that the fused
loop runs.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.integer import bitshift_decay, multiplicative_decay
from aquatic.functional.neuron_types import StateOps

__all__ = ["StateGrid", "GridRules", "grid_rules", "grid_runs", "decay_on_grid", "delayed"]

#: The decay rules a grid may carry (``""``: the product ``alpha * state``).
RULES = ("", "bitshift", "multiplicative")


class StateGrid(NamedTuple):
    """A state's fixed grid and the integer rule that decays it.

    Attributes:
        scale: float32 0-dim step :math:`s` of the grid.
        zero_point: int32 0-dim zero point :math:`z`.
        quant_min, quant_max: the range of the codes.
        rule: ``""`` (decay by the product), ``"bitshift"`` or ``"multiplicative"``.
        bits: the precision of a multiplicative rule (0 otherwise).
        codes: int64 codes of the decay (``dash`` or ``d``) for a rule, else ``None``.
    """

    scale: Tensor
    zero_point: Tensor
    quant_min: int
    quant_max: int
    rule: str = ""
    bits: int = 0
    codes: Optional[Tensor] = None


class GridRules(NamedTuple):
    """What the fused sequence runs besides the float neuron: grids and Loihi's orderings.

    Attributes:
        v_mem: the membrane's :class:`StateGrid`, or ``None`` (float membrane).
        i_syn: the synaptic current's :class:`StateGrid`, or ``None``.
        strict: spike on :math:`v > \\vartheta` (``strict_threshold``).
        after_decay: add the input after the current's decay (``input_after_decay``).
        delay: the input arrives one step late (``input_delay``): step ``t`` reads
            ``x[:, t - 1]``, zeros at step 0.
    """

    v_mem: Optional[StateGrid] = None
    i_syn: Optional[StateGrid] = None
    strict: bool = False
    after_decay: bool = False
    delay: bool = False


def _state_grid(quantize, decay, alpha) -> Tuple[bool, Optional[StateGrid]]:
    """``(known, grid)`` for one state: ``known`` False when the loop must run it."""
    if quantize is None:
        return decay is None, None
    describe = getattr(quantize, "fixed_grid", None)
    grid = describe() if describe is not None else None
    if grid is None or grid.scale.numel() != 1 or grid.rounding != "nearest":
        return False, None
    rule, bits, codes = "", 0, None
    if decay is not None:
        describe = getattr(decay, "fixed_rule", None)
        found = describe(alpha) if describe is not None and alpha is not None else None
        if found is None:
            return False, None
        rule, bits, codes = found
        if rule not in RULES[1:]:
            return False, None
    state_grid = StateGrid(
        grid.scale.detach().reshape(()).to(torch.float32),
        grid.zero_point.detach().reshape(()).to(torch.int32),
        int(grid.quant_min),
        int(grid.quant_max),
        rule,
        int(bits),
        None if codes is None else codes.detach().to(torch.int64),
    )
    return True, state_grid


def grid_rules(
    ops: StateOps, alpha_mem, alpha_syn, strict: bool, after_decay: bool
) -> Optional[GridRules]:
    """The :class:`GridRules` of a neuron's state operations, or ``None`` when one of
    them does not describe itself (then the step-by-step loop runs them).

    Example:
        >>> grid_rules(StateOps(), 0.9, None, strict=True, after_decay=False)
        GridRules(v_mem=None, i_syn=None, strict=True, after_decay=False, delay=False)
        >>> print(grid_rules(StateOps(quantize_v_mem=torch.round), 0.9, None, False, False))
        None
    """
    known_v, v_grid = _state_grid(ops.quantize_v_mem, ops.decay_v_mem, alpha_mem)
    known_i, i_grid = _state_grid(ops.quantize_i_syn, ops.decay_i_syn, alpha_syn)
    if not (known_v and known_i):
        return None
    return GridRules(v_grid, i_grid, bool(strict), bool(after_decay))


def grid_runs(input: Tensor) -> bool:
    """Whether the fused sequence runs ``input`` on its grids: a CPU tensor of float32 or
    float64 (its loop works on NumPy views of the buffers). Other inputs run step by step.

    Example:
        >>> grid_runs(torch.zeros(2, 3, 4)), grid_runs(torch.zeros(2, 3, 4, dtype=torch.float16))
        (True, False)
    """
    return input.device.type == "cpu" and input.dtype in (torch.float32, torch.float64)


def decay_on_grid(state: Tensor, alpha: Tensor, grid: StateGrid) -> Tensor:
    """A state decayed as the layers decay it (no gradient): the rule on the grid, or
    ``alpha * state`` without one.

    With a rule this is :meth:`aquatic.quantizers.DecayQuantizer.decay_state`'s value:
    :math:`s\\, \\mathrm{rule}(\\mathrm{clamp}(\\mathrm{round}(v / s), q_{min} - z,
    q_{max} - z))`.

    Example:
        >>> codes = torch.tensor(3)  # dash 3: x - max(x >> 3, 1)
        >>> grid = StateGrid(torch.tensor(0.25), torch.tensor(0, dtype=torch.int32), -64, 63,
        ...                  "bitshift", 0, codes)
        >>> decay_on_grid(torch.tensor([0.75, 12.5]), torch.tensor(0.875), grid)
        tensor([ 0.5000, 11.0000])
    """
    if not grid.rule:
        return alpha * state
    zero_point = grid.zero_point.to(torch.int64)
    low, high = grid.quant_min - zero_point, grid.quant_max - zero_point
    codes = torch.round(state / grid.scale).clamp_(low, high).to(torch.int64)
    if grid.rule == "bitshift":
        decayed = bitshift_decay(codes, grid.codes)
    else:
        decayed = multiplicative_decay(codes, grid.codes, grid.bits)
    return decayed.to(state.dtype) * grid.scale


def delayed(input: Tensor) -> Tensor:
    """``input`` one step late along time (dim 1): zeros at step 0, the last step dropped.

    Example:
        >>> delayed(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[0., 1., 2.]])
    """
    return torch.cat([torch.zeros_like(input[:, :1]), input[:, :-1]], 1)
