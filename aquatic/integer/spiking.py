r"""The integer twin of the spiking layers (``LIF``, ``LIFRecurrent``, ``IAF``, ``ExpLeak``).

:class:`IntegerNeuron` runs the equations of :mod:`aquatic.functional.neurons` on
integers. Every value is an ``int64`` numerator :math:`N` of a fixed unit :math:`u` of
the layer (:math:`N u` is the real value); a decay :math:`\alpha` is the dyadic
rational :math:`A\, 2^{-P}` that its float32 value is exactly, so
:math:`\alpha v = (A N) 2^{-P} u` is computed without error and then rounded the way
the quantization-aware model rounds it.

Exact mode (all scales powers of two, ``QConfig.state`` quantizing the membrane and the
synaptic current): :math:`u = 2^{-K}` is fine enough to hold every input, threshold and
bias exactly. The quantization-aware model computes each step in float32, which rounds
a result to 24 significant bits; the integer twin reproduces that rounding of each
exact intermediate (:func:`~aquatic.integer.requant.round_to_float32`) and rounds to
the state grid as the state quantizer does (half to even). Since every state starts
the step on its grid, this gives the same spikes and states bit for bit, including the
spike count :math:`\lfloor v / \vartheta \rfloor` of neurons with ``max_spikes > 1``,
whose float32 division is emulated too.

Otherwise (scales that are not powers of two, or a membrane left in float): the unit is
the state scale (or the input scale) divided by :math:`2^F` (``state_frac_bits``), the
products are rounded to it half to even, and the results can differ from the float
model's where its membrane lies within about :math:`2^{-F}` steps of the threshold.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from aquatic.functional.integer import check_integer
from aquatic.integer.base import IntegerModule, IntegerOverflowError, along
from aquatic.integer.requant import (
    bit_length,
    multiply_shift,
    round_to_float32,
    rounding_right_shift,
)

__all__ = ["IntegerNeuron"]


def _spike_count_float32(v: Tensor, threshold: Tensor, max_spikes: int) -> Tensor:
    """``clamp(floor(fl32(v / threshold)), 0, max_spikes)`` for integer ``v``, ``threshold > 0``.

    The quotient :math:`q = v / \\vartheta` lies in :math:`[r, r + 1)` with
    :math:`r = \\lfloor q \\rfloor`; its float32 rounding reaches :math:`m = r + 1` when
    :math:`m - q` is at most half the gap below :math:`m`, :math:`2^{-J}` (ties go to
    :math:`m`, whose significand is even for :math:`m < 2^{23}`).
    """
    r = torch.div(v, threshold, rounding_mode="floor")
    remainder = v - r * threshold
    m = (r + 1).clamp(min=1, max=2**22)
    j = bit_length(m) - 1
    power = torch.bitwise_and(m, m - 1) == 0
    half_gap = torch.where(power, 25 - j, 24 - j)  # J
    rounds_up = (threshold - remainder) <= torch.bitwise_right_shift(threshold, half_gap)
    count = r + (rounds_up & (r >= 0) & (r < max_spikes)).to(torch.int64)
    return count.clamp(0, max_spikes)


class IntegerNeuron(IntegerModule):
    """Integer LIF / IAF / leaky-integrator layer (see the module docstring).

    Built by :func:`aquatic.convert`; the arguments are its integer parameters:
    ``input_*`` converts input codes to the unit :math:`u`; ``rec_*`` the recurrent
    weights and their conversion; ``mem_num`` / ``mem_exp`` the membrane decay
    :math:`A 2^{-P}`, ``syn_*`` the synaptic one and ``norm_*`` :math:`1 - \\alpha_{mem}`;
    ``threshold``, ``bias``, ``min_v`` in units of :math:`u` (``min_v`` as a state code
    offset when the membrane is quantized); ``v_*`` / ``i_*`` the state quantizers
    (conversion from :math:`u`, zero point, range, rounding, and back).

    Shape:
        - Input: ``(N, T, *)`` integer codes (batch, time, neurons).
        - Output: spike counts ``(N, T, *)`` (int32), or for a leaky integrator the
          membrane in units of :math:`u` (int64).

    Example:
        >>> one = torch.tensor(1)
        >>> iaf = IntegerNeuron(input_multiplier=one, input_shift=torch.tensor(0),
        ...                     mem_num=one, threshold=torch.tensor(3))
        >>> iaf(torch.tensor([[[2], [2], [2]]])).flatten()
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
        "i_low",
        "i_high",
        "i_rounding",
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
        "v_zero_point",
        "v_back_multiplier",
        "v_back_shift",
        "i_multiplier",
        "i_shift",
        "i_zero_point",
        "i_back_multiplier",
        "i_back_shift",
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
        v_low: int = 0,
        v_high: int = 0,
        v_rounding: str = "nearest",
        i_low: int = 0,
        i_high: int = 0,
        i_rounding: str = "nearest",
        name: str = "",
        notes: Optional[List[str]] = None,
        **tensors: Optional[Tensor],
    ) -> None:
        super().__init__(name, notes)
        unknown = set(tensors) - set(self._tensor_keys)
        if unknown:
            raise TypeError(f"IntegerNeuron got unknown arguments {sorted(unknown)}")
        if reset not in ("subtract", "zero"):
            raise ValueError(f"reset must be 'subtract' or 'zero', got {reset!r}")
        if tensors.get("input_zero_point") is None:
            tensors["input_zero_point"] = torch.tensor(0)
        self._set_tensors(
            {
                k: None if v is None else torch.as_tensor(v, dtype=torch.int64)
                for k, v in tensors.items()
            }
        )
        if spiking and self.threshold is None:
            raise ValueError("a spiking IntegerNeuron needs a threshold")
        self.spiking, self.reset, self.max_spikes = bool(spiking), reset, int(max_spikes)
        self.emulate_float32 = bool(emulate_float32)
        self.mem_exp, self.syn_exp, self.norm_exp = int(mem_exp), int(syn_exp), int(norm_exp)
        self.input_axis, self.state_limit = input_axis, state_limit
        self.v_low, self.v_high, self.v_rounding = v_low, v_high, v_rounding
        self.i_low, self.i_high, self.i_rounding = i_low, i_high, i_rounding

    # -- arithmetic ------------------------------------------------------------------
    def _f32(self, x: Tensor) -> Tensor:
        return round_to_float32(x) if self.emulate_float32 else x

    def _quantize(self, x: Tensor, fine: int, which: str) -> Tensor:
        """State ``x`` (units of ``u * 2**-fine``) on its quantizer's grid, back in units of u."""
        mult, shift = getattr(self, f"{which}_multiplier"), getattr(self, f"{which}_shift")
        zp = getattr(self, f"{which}_zero_point")
        rounding = getattr(self, f"{which}_rounding")
        if bool((mult == 1).all()):
            code = multiply_shift(x, 1, shift + fine, rounding)
        else:  # not a power-of-two ratio: round to u first, then requantize
            code = multiply_shift(rounding_right_shift(x, fine), mult, shift, rounding)
        low, high = getattr(self, f"{which}_low"), getattr(self, f"{which}_high")
        code = torch.clamp(code + zp, low, high) - zp
        if which == "v" and self.min_v is not None:
            # clamp then quantize equals quantize then clamp: both are non-decreasing.
            code = torch.maximum(code, self.min_v)
        back = multiply_shift(
            code, getattr(self, f"{which}_back_multiplier"), getattr(self, f"{which}_back_shift")
        )
        return back

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
        codes = codes - along(self.input_zero_point, self.input_axis)
        batch_shape = (codes.shape[0],) + tuple(codes.shape[2:])
        v = torch.zeros(batch_shape, dtype=torch.int64)
        i = torch.zeros(batch_shape, dtype=torch.int64) if self.syn_num is not None else None
        spikes = torch.zeros(batch_shape, dtype=torch.int64)
        in_mult = along(self.input_multiplier, self.input_axis)
        in_shift = along(self.input_shift, self.input_axis)
        outputs = []
        for x in codes.unbind(1):
            x = multiply_shift(x, in_mult, in_shift)
            if self.rec_weight is not None:
                recurrent = torch.matmul(spikes, self.rec_weight.T)
                x = self._f32(x + multiply_shift(recurrent, self.rec_multiplier, self.rec_shift))
            if i is not None:
                product = self._f32(self._f32(i + x) * self.syn_num)
                if self.i_multiplier is not None:
                    i = self._quantize(product, self.syn_exp, "i")
                else:
                    i = rounding_right_shift(product, self.syn_exp)
                    self._check(i, "synaptic current")
                current = i
            else:
                current = x
            v, spikes = self._membrane(v, current)
            outputs.append(spikes if self.spiking else v)
        dtype = torch.int32 if self.spiking else torch.int64
        return torch.stack(outputs, 1).to(dtype)

    def _membrane(self, v: Tensor, current: Tensor):
        drive, drive_exp = current, 0
        if self.norm_num is not None:
            drive, drive_exp = self._f32(current * self.norm_num), self.norm_exp
        if self.bias is not None:
            drive = self._f32(drive + torch.bitwise_left_shift(self.bias, drive_exp))
        decayed = self._f32(v * self.mem_num)
        fine = max(self.mem_exp, drive_exp)
        v = self._f32(
            torch.bitwise_left_shift(decayed, fine - self.mem_exp)
            + torch.bitwise_left_shift(drive, fine - drive_exp)
        )
        spikes = None
        if self.spiking:
            threshold = torch.bitwise_left_shift(self.threshold, fine)
            fired = v >= threshold
            if self.max_spikes == 1:
                spikes = fired.to(torch.int64)
            elif self.emulate_float32:
                spikes = _spike_count_float32(v, threshold, self.max_spikes)
            else:
                spikes = torch.div(v, threshold, rounding_mode="floor").clamp(0, self.max_spikes)
            if self.reset == "subtract":
                reset = torch.bitwise_left_shift(self._f32(self.threshold * spikes), fine)
                v = self._f32(v - reset)
            else:
                v = torch.where(fired, torch.zeros_like(v), v)
        if self.v_multiplier is not None:
            v = self._quantize(v, fine, "v")
        else:
            v = rounding_right_shift(v, fine)
            if self.min_v is not None:
                v = torch.maximum(v, self.min_v)
            self._check(v, "membrane")
        return v, spikes
