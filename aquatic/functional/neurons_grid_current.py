r"""The synaptic current of the fused sequence with quantized states, a block at a time.

:class:`CurrentSteps` runs the current's part of the reference loop
(:func:`~aquatic.functional.neurons_spec.neuron_step`): :math:`i_t = D(i_{t-1} + x_t)`,
or :math:`i_t = Q(D(i_{t-1}) + x_t)` with ``input_after_decay`` (Loihi), with the decay
:math:`D` and the quantizer :math:`Q` of :mod:`aquatic.functional.neurons_grid_steps`.

After the first step the state the decay reads lies on the grid: it is given by its
codes :math:`I` (those of the decay, or the quantizer's clamped codes), exactly
(:attr:`~aquatic.functional.neurons_grid_steps.StepQuantizer.exact_codes`). On a grid
whose step is a power of two :math:`s = 2^{-k} \le 1`, scaling by :math:`2^{k}` is exact
and commutes with rounding to nearest (no result is subnormal: the scaling is upward),
so the codes the loop rounds,

.. math::

    \mathrm{fl}(\mathrm{fl}(I s) + x_t) / s = \mathrm{fl}(I + \mathrm{fl}(x_t / s)),

follow from the codes and the input scaled once per block, without the state's value:
three passes per step (add, round, clamp) before the rule. An input so large that
:math:`x_t / s` overflows gives an infinite code on both sides, clamped alike.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from aquatic.functional.neurons_grid import GridRules
from aquatic.functional.neurons_grid_steps import (
    StepDecay,
    StepQuantizer,
    as_array,
    clip,
    constant,
    power_of_two,
)

__all__ = ["CurrentSteps", "quantizer_after_decay_passes", "reads_codes"]


def quantizer_after_decay_passes(rules: GridRules, dtype: torch.dtype) -> bool:
    """Whether the current's quantizer passes its input unchanged (float32 states, no
    ``input_after_decay``, a decay rule on the quantizer's grid whose codes span fewer
    than :math:`2^{20}` values): then forward skips it and keeps no mask."""
    grid = rules.i_syn
    if grid is None or not grid.rule or rules.after_decay or dtype != torch.float32:
        return False
    return grid.quant_max - grid.quant_min < 2**20


def reads_codes(decay: StepDecay, quantize: Optional[StepQuantizer]) -> bool:
    """Whether ``decay`` can read the codes ``quantize`` wrote instead of its value."""
    return quantize is not None and quantize.exact_codes and bool(decay.rule) and decay.exact


class CurrentSteps:
    """The current of a sequence ``x`` ``(N, T, *)`` from ``i0``: :meth:`run` fills
    :attr:`current` (time major; with ``block``, the rows of the block run last) and the
    quantizer's boolean :attr:`mask` (where it passes the gradient; ``None`` without a
    quantizer or a gradient) a block of steps at a time. :meth:`steps` is the block's.

    :attr:`known` tells whether the codes of each step's current are known after
    :meth:`keep_codes`: then :meth:`run` writes them into :attr:`codes`, one row per
    step of the block (the membrane's quantizer sums them, see
    :mod:`aquatic.functional.neurons_grid_kernel`).
    """

    def __init__(
        self,
        x: Tensor,
        i0: Tensor,
        alpha: Tensor,
        rules: GridRules,
        need_grad: bool,
        block: Optional[int] = None,
    ) -> None:
        steps_first = (x.shape[1],) + tuple(i0.shape)
        self.after_decay = rules.after_decay
        self.decay = StepDecay(rules.i_syn, alpha, i0)
        self.quantize = None
        self.mask = None
        if rules.i_syn is not None and not quantizer_after_decay_passes(rules, x.dtype):
            self.quantize = StepQuantizer(rules.i_syn, x.dtype)
            self.mask = x.new_empty(steps_first, dtype=torch.bool) if need_grad else None
        # With ``block``, the currents of one block only (the last block's at the end).
        self.block = block
        self.current = x.new_empty(steps_first if block is None else (block,) + steps_first[1:])
        new = lambda: np.empty(tuple(i0.shape), as_array(x).dtype)  # noqa: E731
        self.z, self.scratch, self.decayed, self.buf = new(), new(), new(), new()
        # The codes of the state the decay reads, where the loop's rounding gives them.
        if self.after_decay:
            self.known = reads_codes(self.decay, self.quantize)
        else:
            self.known = self.decay.exact and bool(self.decay.rule) and self.quantize is None
        grid = rules.i_syn
        self.scaled = (
            self.known and power_of_two(grid.scale) and float(grid.scale) <= 1 and x.shape[1] > 1
        )
        if self.scaled:
            self.inverse = constant(torch.reciprocal(grid.scale.double()), self.z.dtype)
            self.inputs = np.empty((0,) + tuple(i0.shape), self.z.dtype)
        self.codes = None
        self.state, self.previous = as_array(i0), None
        self.delay = rules.delay  # step t reads x[:, t - 1], zeros at step 0
        self.zeros = np.zeros_like(self.z)

    @property
    def bound(self) -> float:
        """The largest magnitude of the codes :meth:`run` writes."""
        if self.after_decay:
            return float(self.quantize.bound)
        return max(abs(float(self.decay.low)), abs(float(self.decay.high)))

    def keep_codes(self, block: int) -> None:
        """Keep the codes of each step of a block (up to ``block`` steps) in :attr:`codes`."""
        self.codes = np.empty((block,) + self.z.shape, self.z.dtype)

    def run(self, x: np.ndarray, start: int, stop: int) -> None:
        """The steps ``start`` to ``stop`` of the input ``x`` (``(N, T, *)``; read one step
        late with the rules' ``delay``)."""
        currents = as_array(self.current)
        masks = as_array(self.mask) if self.mask is not None else None
        late = int(self.delay)
        if self.scaled:
            if len(self.inputs) < stop - start:
                self.inputs = np.empty((stop - start,) + self.z.shape, self.z.dtype)
            # (step 0 with a delay reads zeros, and runs unscaled: no code is known yet)
            begin = 1 if late and start == 0 else 0
            source = x[:, start + begin - late : stop - late].swapaxes(0, 1)
            np.multiply(source, self.inverse, out=self.inputs[begin : stop - start])
        first = 0 if self.block is not None else start
        for k in range(stop - start):
            t = start + k
            mask = masks[t] if masks is not None else None
            codes = self.codes[k] if self.codes is not None else self.scratch
            if self.scaled and self.previous is not None:
                self._scaled_step(self.inputs[k], currents[first + k], codes, mask)
            else:
                x_t = self.zeros if late and t == 0 else x[:, t - late]
                self._step(x_t, currents[first + k], codes, mask)
            self.state = currents[first + k]

    def steps(self, start: int, stop: int) -> Tensor:
        """The currents of the steps ``start`` to ``stop`` that :meth:`run` ran last."""
        first = 0 if self.block is not None else start
        return self.current[first : first + stop - start]

    def _scaled_step(self, x_t, i_t, codes, mask) -> None:
        z, decay = self.z, self.decay
        if self.after_decay:
            np.add(decay.rule_codes(self.previous, self.decayed), x_t, out=z)
            np.rint(z, out=z)
            self.quantize.finish(z, codes, i_t, mask)
        else:
            np.add(self.previous, x_t, out=z)
            np.rint(z, out=z)
            clip(z, decay.low, decay.high, out=codes)
            np.multiply(decay.rule_codes(codes, codes), decay.scale, out=i_t)
        self.previous = codes

    def _step(self, x_t, i_t, codes, mask) -> None:
        decay, quantize, buf = self.decay, self.quantize, self.buf
        if self.after_decay:
            if self.previous is not None:
                decay.from_codes(self.previous, self.decayed, buf)
            else:
                decay(self.state, self.decayed, buf)
            np.add(buf, x_t, out=i_t)
            quantize_codes = codes
        else:
            decay(np.add(self.state, x_t, out=buf), codes, i_t)
            quantize_codes = self.scratch if codes is not self.scratch else self.decayed
        if quantize is not None:
            quantize(i_t, self.z, quantize_codes, i_t, mask)
        self.previous = codes if self.known else None
