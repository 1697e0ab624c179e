r"""The integer modules of the spiking layers (``LIF``, ``LIFRecurrent``, ``IAF``, ``ExpLeak``).

:class:`IntegerNeuron` runs the step of :mod:`aquatic.functional.neurons` on integers:
the synaptic current :math:`i = Q_i(\alpha_{syn} \odot (i + x))`, the membrane
:math:`v = Q_v(\alpha_{mem} \odot v + d)` with the drive :math:`d` (input, bias), the
spikes decided on the quantized membrane, then the reset and the ``min_v_mem`` floor.

Every value is an ``int64`` numerator :math:`N` of a fixed unit :math:`u` of the layer
(:math:`N u` is the real value). The decay :math:`\alpha \odot y` is either

- the chip's integer rule on the state's grid, when the layer uses one (a
  ``BitShiftDecay`` or ``UniformDecay`` on a quantized state):
  :func:`~aquatic.functional.integer.bitshift_decay` (``y - (y >> dash)``, at least 1
  toward zero) or :func:`~aquatic.functional.integer.multiplicative_decay`, applied to
  the state's codes, which is integer arithmetic in the float model too; or
- the product with :math:`\alpha`, whose float32 value is a dyadic rational
  :math:`A\, 2^{-P}`: :math:`\alpha y = (A N) 2^{-P} u` exactly, then rounded as the
  float model rounds it.

Exact mode (every scale a power of two, and ``QConfig.state`` quantizing the membrane
and the synaptic current): :math:`u = 2^{-K}` holds every input, threshold, bias and
bound exactly. The float model computes each step in float32, which rounds a result to
24 significant bits; the integer model rounds each exact intermediate the same way
(:func:`~aquatic.integer.requant.round_to_float32`), rounds to the state grid as the
state quantizer does, and counts the spikes of ``max_spikes > 1`` by the float model's
rule (:func:`~aquatic.functional.surrogate.spike_values`,
:math:`\lfloor v / \vartheta \rfloor` of the grid values) on its exact values: spikes
and states agree bit for bit. Otherwise the count is the integer division
:func:`~aquatic.functional.integer.spike_count`.

Otherwise (scales that are not powers of two, or a state left in float): the unit is
the state scale (or the input scale) divided by :math:`2^F` (``state_frac_bits``),
intermediates are rounded to it half to even, and spikes can differ from the float
model's where its membrane lies within about :math:`2^{-F}` steps of the threshold.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from aquatic.functional.fake_quant import broadcast_along
from aquatic.functional.surrogate import spike_values
from aquatic.functional.integer import (
    bitshift_decay,
    check_integer,
    multiplicative_decay,
    spike_count,
)
from aquatic.integer.base import IntegerModule, IntegerOverflowError
from aquatic.integer.requant import (
    multiply_shift,
    round_to_float32,
    rounding_right_shift,
)

__all__ = ["IntegerNeuron"]


class IntegerNeuron(IntegerModule):
    """Integer LIF / IAF / leaky-integrator layer (see the module docstring).

    Built by :func:`aquatic.convert`; the arguments are its integer parameters, values
    in units of :math:`u`:

    - ``input_zero_point``, ``input_multiplier``, ``input_shift``: input codes to
      :math:`u` (``input_axis``: the channel axis of per-channel values);
    - ``rec_weight``, ``rec_multiplier``, ``rec_shift``: recurrent weights and the
      conversion of their products to :math:`u`;
    - ``mem_num`` / ``mem_exp``: :math:`\\alpha_{mem} = A 2^{-P}`; ``syn_*`` likewise,
      ``norm_*`` for :math:`1 - \\alpha_{mem}` (``norm_input``);
    - ``threshold``, ``bias``, ``min_v``;
    - ``v_*`` / ``i_*``, when the state is quantized: ``multiplier`` and ``shift`` from
      :math:`u` to the state's step, ``back_multiplier`` and ``back_shift`` back,
      ``low`` / ``high`` the range of value / step (code less zero point),
      ``rounding``, and the integer decay ``rule`` (``"bitshift"``,
      ``"multiplicative"`` with ``rule_bits``, or ``None``) with its ``rule_codes``.

    Shape:
        - Input: ``(N, T, *)`` integer codes (batch, time, neurons).
        - Output: spike counts ``(N, T, *)`` (int32), or for a leaky integrator the
          membrane in units of :math:`u` (int64).

    Example:
        >>> one, zero = torch.tensor(1), torch.tensor(0)
        >>> iaf = IntegerNeuron(input_multiplier=one, input_shift=zero, mem_num=one,
        ...                     threshold=torch.tensor(3))
        >>> iaf(torch.tensor([[[2], [2], [2]]])).flatten()  # v: 2, 4 -> 1, 3 -> 0
        tensor([0, 1, 1], dtype=torch.int32)
    """

    kind = "neuron"
    _config_keys = (
        "spiking",
        "reset",
        "max_spikes",
        "emulate_float32",
        "mem_exp",
        "syn_exp",
        "norm_exp",
        "input_axis",
        "state_limit",
        "v_low",
        "v_high",
        "v_rounding",
        "v_rule",
        "v_rule_bits",
        "i_low",
        "i_high",
        "i_rounding",
        "i_rule",
        "i_rule_bits",
    )
    _tensor_keys = (
        "input_zero_point",
        "input_multiplier",
        "input_shift",
        "rec_weight",
        "rec_multiplier",
        "rec_shift",
        "mem_num",
        "syn_num",
        "norm_num",
        "threshold",
        "bias",
        "min_v",
        "v_multiplier",
        "v_shift",
        "v_back_multiplier",
        "v_back_shift",
        "v_rule_codes",
        "i_multiplier",
        "i_shift",
        "i_back_multiplier",
        "i_back_shift",
        "i_rule_codes",
    )

    def __init__(
        self,
        spiking: bool = True,
        reset: str = "subtract",
        max_spikes: int = 1,
        emulate_float32: bool = False,
        mem_exp: int = 0,
        syn_exp: int = 0,
        norm_exp: int = 0,
        input_axis: Optional[int] = None,
        state_limit: Optional[int] = None,
        v_low: Optional[int] = None,
        v_high: Optional[int] = None,
        v_rounding: str = "nearest",
        v_rule: Optional[str] = None,
        v_rule_bits: int = 0,
        i_low: Optional[int] = None,
        i_high: Optional[int] = None,
        i_rounding: str = "nearest",
        i_rule: Optional[str] = None,
        i_rule_bits: int = 0,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
        **tensors: Optional[Tensor],
    ) -> None:
        super().__init__(name, notes, source)
        unknown = set(tensors) - set(self._tensor_keys)
        if unknown:
            raise TypeError(f"IntegerNeuron got unknown arguments {sorted(unknown)}")
        if reset not in ("subtract", "zero"):
            raise ValueError(f"reset must be 'subtract' or 'zero', got {reset!r}")
        for rule in (v_rule, i_rule):
            if rule not in (None, "bitshift", "multiplicative"):
                raise ValueError(f"a decay rule is 'bitshift' or 'multiplicative', got {rule!r}")
        if tensors.get("input_zero_point") is None:
            tensors["input_zero_point"] = torch.tensor(0)
        self._set_tensors(
            {
                key: None if value is None else torch.as_tensor(value, dtype=torch.int64)
                for key, value in tensors.items()
            }
        )
        if spiking and self.threshold is None:
            raise ValueError("a spiking IntegerNeuron needs a threshold")
        self.spiking, self.reset, self.max_spikes = bool(spiking), reset, int(max_spikes)
        self.emulate_float32 = bool(emulate_float32)
        self.mem_exp, self.syn_exp, self.norm_exp = int(mem_exp), int(syn_exp), int(norm_exp)
        self.input_axis, self.state_limit = input_axis, state_limit
        self.v_low, self.v_high, self.v_rounding = v_low, v_high, v_rounding
        self.v_rule, self.v_rule_bits = v_rule, int(v_rule_bits)
        self.i_low, self.i_high, self.i_rounding = i_low, i_high, i_rounding
        self.i_rule, self.i_rule_bits = i_rule, int(i_rule_bits)

    # -- arithmetic ------------------------------------------------------------------
    def _f32(self, x: Tensor) -> Tensor:
        return round_to_float32(x) if self.emulate_float32 else x

    def _grid(self, x: Tensor, fine: int, which: str, rounding: str = "nearest") -> Tensor:
        """``clamp(round(value / step))`` of state ``x`` given in units of ``u * 2**-fine``."""
        multiplier = getattr(self, f"{which}_multiplier")
        shift = getattr(self, f"{which}_shift")
        if bool((multiplier == 1).all()):
            steps = multiply_shift(x, 1, shift + fine, rounding)
        else:  # not a power-of-two ratio: round to u first, then requantize
            steps = multiply_shift(rounding_right_shift(x, fine), multiplier, shift, rounding)
        return torch.clamp(steps, getattr(self, f"{which}_low"), getattr(self, f"{which}_high"))

    def _from_grid(self, steps: Tensor, which: str) -> Tensor:
        multiplier = getattr(self, f"{which}_back_multiplier")
        return multiply_shift(steps, multiplier, getattr(self, f"{which}_back_shift"))

    def _decay_rule(self, x: Tensor, which: str) -> Tensor:
        """The chip's decay of state ``x`` (units of u) on its grid, back in units of u."""
        steps = self._grid(x, 0, which)  # decay_state rounds half to even, then saturates
        codes = getattr(self, f"{which}_rule_codes")
        if getattr(self, f"{which}_rule") == "bitshift":
            decayed = bitshift_decay(steps, codes)
        else:
            decayed = multiplicative_decay(steps, codes, getattr(self, f"{which}_rule_bits"))
        return self._from_grid(decayed, which)

    def _check(self, x: Tensor, what: str) -> None:
        if self.state_limit is not None and x.numel() and int(x.abs().max()) > self.state_limit:
            raise IntegerOverflowError(
                f"{self._where()}: the {what} reached {int(x.abs().max())} units, beyond the "
                f"{self.state_limit} that int64 arithmetic allows here; quantize the state "
                "(QConfig.state) so that it saturates"
            )

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or input.dim() < 3:
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"{self._where()} expects codes of shape (N, T, *), got {shape}")
        codes = check_integer(input, f"the input of {self._where()}").to(torch.int64)
        codes = codes - broadcast_along(self.input_zero_point, self.input_axis)
        batch_shape = (codes.shape[0],) + tuple(codes.shape[2:])
        v = torch.zeros(batch_shape, dtype=torch.int64)
        i = torch.zeros(batch_shape, dtype=torch.int64) if self.syn_num is not None else None
        spikes = torch.zeros(batch_shape, dtype=torch.int64)
        in_multiplier = broadcast_along(self.input_multiplier, self.input_axis)
        in_shift = broadcast_along(self.input_shift, self.input_axis)
        outputs = []
        for x in codes.unbind(1):
            x = multiply_shift(x, in_multiplier, in_shift)
            if self.rec_weight is not None:
                recurrent = torch.matmul(spikes, self.rec_weight.T)
                x = self._f32(x + multiply_shift(recurrent, self.rec_multiplier, self.rec_shift))
            current = x if i is None else self._synapse(i, x)
            if i is not None:
                i = current
            v, spikes = self._membrane(v, current)
            outputs.append(spikes if self.spiking else v)
        dtype = torch.int32 if self.spiking else torch.int64
        return torch.stack(outputs, 1).to(dtype)

    def _synapse(self, i: Tensor, x: Tensor) -> Tensor:
        total = self._f32(i + x)
        if self.i_rule is not None:
            value, exp = self._decay_rule(total, "i"), 0
        else:
            value, exp = self._f32(total * self.syn_num), self.syn_exp
        if self.i_multiplier is not None:
            return self._from_grid(self._grid(value, exp, "i", self.i_rounding), "i")
        i = rounding_right_shift(value, exp)
        self._check(i, "synaptic current")
        return i

    def _membrane(self, v: Tensor, current: Tensor):
        drive, drive_exp = current, 0
        if self.norm_num is not None:
            drive, drive_exp = self._f32(current * self.norm_num), self.norm_exp
        if self.bias is not None:
            drive = self._f32(drive + torch.bitwise_left_shift(self.bias, drive_exp))
        if self.v_rule is not None:
            decayed, decay_exp = self._decay_rule(v, "v"), 0
        else:
            decayed, decay_exp = self._f32(v * self.mem_num), self.mem_exp
        fine = max(decay_exp, drive_exp)
        v = self._f32(
            torch.bitwise_left_shift(decayed, fine - decay_exp)
            + torch.bitwise_left_shift(drive, fine - drive_exp)
        )
        if self.v_multiplier is not None:
            # Quantized before the spike decision, which sees the quantized membrane.
            v, fine = self._from_grid(self._grid(v, fine, "v", self.v_rounding), "v"), 0
        spikes = None
        if self.spiking:
            threshold = torch.bitwise_left_shift(self.threshold, fine)
            fired = v >= threshold
            if self.max_spikes == 1:
                spikes = fired.to(torch.int64)
            elif self.emulate_float32:
                # v and threshold are float32 values times a power of two: the float
                # model's rule (spike_values) on them gives the float model's count.
                counts = spike_values(
                    v.to(torch.float32), threshold.to(torch.float32), self.max_spikes
                )
                spikes = counts.to(torch.int64)
            else:
                spikes = spike_count(v, threshold, self.max_spikes)
            if self.reset == "subtract":
                reset = torch.bitwise_left_shift(self._f32(self.threshold * spikes), fine)
                v = self._f32(v - reset)
            else:
                v = torch.where(fired, torch.zeros_like(v), v)
        if self.min_v is not None:
            v = torch.maximum(v, torch.bitwise_left_shift(self.min_v, fine))
        if fine:  # a membrane in float: keep it in units of u
            v = rounding_right_shift(v, fine)
        if self.v_multiplier is None:
            self._check(v, "membrane")
        return v, spikes
