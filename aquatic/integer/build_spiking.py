"""Building :class:`~aquatic.integer.spiking.IntegerNeuron` from a trained spiking layer."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from aquatic.integer.base import QSpec
from aquatic.integer.inspect import Affine, affine_params, describe, grid_codes
from aquatic.integer.requant import (
    dyadic_exponent,
    is_power_of_two,
    quantize_multiplier,
)
from aquatic.integer.spiking import IntegerNeuron

__all__ = ["build_neuron"]

#: Magnitude that every intermediate of the exact arithmetic must stay below.
_INT64_ROOM = 2**61
#: The largest spike count per step whose float32 division is emulated.
_MAX_SPIKES = 2**22


def _dyadic(value, name: str, where: str) -> Tuple[Tensor, int]:
    """``(numerator, exponent)`` with ``value = numerator * 2**-exponent`` exactly (float32)."""
    value = torch.as_tensor(value, dtype=torch.float32).detach()
    exponent = max(dyadic_exponent(value), 0)
    if exponent > 40:
        raise ValueError(
            f"{where}: {name} = {value.flatten()[0].item():g} needs {exponent} fractional "
            "bits; decays this small cannot run in int64 (use 0, or a bit-shift decay)"
        )
    numerator = torch.ldexp(value.double(), torch.tensor(exponent)).to(torch.int64)
    return numerator, exponent


def _exponent(scale: Tensor) -> int:
    """``k`` with ``scale == 2**-k`` (the smallest scale's ``k``, for per-channel scales)."""
    return int(-torch.log2(scale.min()).round())


def _in_units(value: Tensor, unit: float, exact: bool, what: str, where: str, notes: List[str]):
    steps = torch.as_tensor(value, dtype=torch.float32).double() / unit
    rounded = torch.round(steps)
    if exact and not torch.equal(rounded, steps):
        raise AssertionError(f"{where}: {what} is not a whole number of units")  # a bug
    if not torch.equal(rounded, steps) and not any(what in note for note in notes):
        notes.append(f"{where}: {what} rounded to the integer unit")
    return rounded.to(torch.int64)


def _ratio(ratio: Tensor, bound: float) -> Tuple[Tensor, Tensor]:
    """A multiplier and shift for ``ratio``, small enough that ``bound * multiplier < 2**62``."""
    precision = int(min(31, max(8, 62 - math.ceil(math.log2(max(bound, 1.0) + 1)))))
    return quantize_multiplier(torch.as_tensor(ratio, dtype=torch.float64), precision)


def _state_quantizer(layer, state: str, where: str) -> Optional[Affine]:
    if state not in layer.quantizers:
        return None
    affine = affine_params(layer.quantizers[state], f"{where}, state quantizer {state!r}")
    if affine.scale.dim() != 0 or affine.zero_point.dim() != 0:
        raise ValueError(
            f"{where}: the {state} quantizer is per channel; the integer model needs one "
            "scale and zero point per state (use ch_axis=None)"
        )
    return affine


@torch.no_grad()
def build_neuron(name: str, layer, spec: QSpec, state_frac_bits: int):
    """The integer twin of ``layer`` for input codes described by ``spec``.

    Returns:
        ``(module, output_spec)``.
    """
    from aquatic.nn import ExpLeak, LIFRecurrent

    where = describe(name, layer)
    params = layer.neuron_params()
    spiking = not isinstance(layer, ExpLeak)
    notes: List[str] = []
    max_spikes = getattr(layer, "max_spikes", 1) if spiking else 1
    if max_spikes > _MAX_SPIKES:
        raise ValueError(f"{where}: max_spikes={max_spikes} is above {_MAX_SPIKES}")
    if getattr(layer, "persistent_state", False):
        notes.append(f"{where}: persistent_state is ignored; the integer twin starts from zero")
    vq = _state_quantizer(layer, "v_mem", where)
    iq = _state_quantizer(layer, "i_syn", where) if layer.synaptic else None
    for affine in (vq, iq):
        if affine is not None:
            notes += affine.notes
    if spec.scale.dim() == 1 and spec.axis is None:
        raise ValueError(f"{where}: per-channel input scale without an axis")

    rec = None
    if isinstance(layer, LIFRecurrent):
        if "rec_weight" not in layer.quantizers:
            raise ValueError(
                f"{where}: rec_weight is not quantized, so it has no integer codes; give "
                "the layer a QConfig with a weight quantizer"
            )
        value = layer.quantize_params()["rec_weight"]  # first: it sets a recorded scale
        rec_affine = affine_params(layer.quantizers["rec_weight"], f"{where}, 'rec_weight'")
        if rec_affine.scale.dim() == 1 and rec_affine.ch_axis not in (0, -2):
            raise ValueError(
                f"{where}: rec_weight is quantized per input neuron (ch_axis="
                f"{rec_affine.ch_axis}); use ch_axis=0 or one scale"
            )
        rec = (grid_codes(value, rec_affine, 0, f"{where}, 'rec_weight'"), rec_affine.scale)

    unit_scales = [spec.scale] + [a.scale for a in (vq, iq) if a is not None]
    if rec is not None:
        unit_scales.append(rec[1])
    scales = list(unit_scales)
    if "activation" in layer.quantizers:
        scales.append(affine_params(layer.quantizers["activation"], where).scale)
    exact = all(is_power_of_two(s) for s in scales)
    alphas = {"mem": params["alpha_mem"], "syn": params["alpha_syn"]}
    decays = {k: None if a is None else _dyadic(a, f"alpha_{k}", where) for k, a in alphas.items()}
    norm = None
    if getattr(layer, "norm_input", False):
        norm = _dyadic(1 - torch.as_tensor(params["alpha_mem"]), "1 - alpha_mem", where)
    fine = max(decays["mem"][1], norm[1] if norm else 0, decays["syn"][1] if decays["syn"] else 0)

    threshold, bias = params["threshold"], params["bias"]
    if spiking and bool((torch.as_tensor(threshold) <= 0).any()):
        raise ValueError(f"{where}: the quantized threshold is {threshold}; it must be > 0")
    unit_exponent = None
    if exact:
        needed = [_exponent(s) for s in unit_scales]
        for value in (threshold, bias):
            if value is not None:
                needed.append(dyadic_exponent(torch.as_tensor(value, dtype=torch.float32)))
        unit_exponent = max(needed)
        if vq is None:
            unit_exponent += state_frac_bits
        unit = 2.0**-unit_exponent
    if vq is None:
        notes.append(
            f"{where}: the membrane is not quantized (QConfig.state is None): the "
            f"quantization-aware model keeps it in float32, the integer twin with "
            f"{state_frac_bits} fractional bits"
        )
    if layer.synaptic and iq is None:
        notes.append(f"{where}: the synaptic current is not quantized (QConfig.state is None)")

    # Magnitudes in units of u, to keep int64 arithmetic exact.
    def bound_of(affine: Optional[Affine], scale_unit: float) -> Optional[float]:
        if affine is None:
            return None
        worst = max(
            abs(affine.low - int(affine.zero_point)), abs(affine.high - int(affine.zero_point))
        )
        return worst * float(affine.scale) / scale_unit

    def layout(unit: float) -> Optional[float]:
        spec_mag = spec.magnitude()
        parts = [bound_of(vq, unit), bound_of(iq, unit) if layer.synaptic else 0.0]
        parts.append(None if spec_mag is None else spec_mag * float(spec.scale.max()) / unit)
        if rec is not None:
            parts.append(max_spikes * float(rec[0].abs().sum(1).max()) * float(rec[1].max()) / unit)
        for value in (threshold, bias):
            if value is not None:
                parts.append(float(torch.as_tensor(value).abs().max()) * max_spikes / unit)
        if any(p is None for p in parts):
            return None
        return sum(parts) * 2.0 ** (fine + 2)

    if exact:
        total = layout(unit)
        if total is not None and total >= _INT64_ROOM:
            exact = False
            notes.append(f"{where}: exact arithmetic would need more than 62 bits; rounding")
    if not exact:
        if vq is not None:
            base = float(vq.scale)
        else:
            base = float(spec.scale.min())
        unit = base * 2.0**-state_frac_bits
        notes.append(
            f"{where}: scales are not all powers of two (or too fine), so the integer twin "
            "rounds where the float model does not; spikes may differ near the threshold"
        )
    state_limit = int(_INT64_ROOM // 2 ** (fine + 4))

    tensors = {"input_zero_point": spec.zero_point}
    in_ratio = spec.scale / unit
    in_bound = float(spec.magnitude() or 2**31)
    tensors["input_multiplier"], tensors["input_shift"] = _ratio(in_ratio, in_bound)
    if rec is not None:
        codes, rec_scale = rec
        tensors["rec_weight"] = codes
        rec_bound = max_spikes * float(codes.abs().sum(1).max())
        tensors["rec_multiplier"], tensors["rec_shift"] = _ratio(rec_scale / unit, rec_bound)
    tensors["mem_num"] = decays["mem"][0]
    if decays["syn"] is not None:
        tensors["syn_num"] = decays["syn"][0]
    if norm is not None:
        tensors["norm_num"] = norm[0]
    if spiking:
        tensors["threshold"] = _in_units(threshold, unit, exact, "threshold", where, notes)
        if bool((tensors["threshold"] <= 0).any()):
            raise ValueError(f"{where}: the threshold rounds to 0 at the integer unit {unit:g}")
    if bias is not None:
        tensors["bias"] = _in_units(bias, unit, exact, "bias", where, notes)

    config = dict(
        spiking=spiking,
        reset=getattr(layer, "reset", "subtract"),
        max_spikes=max_spikes,
        emulate_float32=exact,
        mem_exp=decays["mem"][1],
        syn_exp=decays["syn"][1] if decays["syn"] else 0,
        norm_exp=norm[1] if norm else 0,
        input_axis=spec.axis,
        state_limit=None,
    )
    min_v = getattr(layer, "min_v_mem", None)
    for which, affine in (("v", vq), ("i", iq)):
        if affine is None:
            continue
        state_bound = bound_of(affine, unit) * 2.0**fine
        to_code, back = float(unit / affine.scale), float(affine.scale / unit)
        tensors[f"{which}_multiplier"], tensors[f"{which}_shift"] = _ratio(to_code, state_bound)
        tensors[f"{which}_back_multiplier"], tensors[f"{which}_back_shift"] = _ratio(back, 2**17)
        tensors[f"{which}_zero_point"] = affine.zero_point
        config[f"{which}_low"], config[f"{which}_high"] = affine.low, affine.high
        config[f"{which}_rounding"] = affine.rounding
    if vq is None or (layer.synaptic and iq is None):
        config["state_limit"] = state_limit
    if min_v is not None:
        if vq is not None:
            # The state quantizer's own float32 arithmetic on the bound: round(m * (1/s)).
            inv = torch.reciprocal(vq.scale.float())
            code = torch.round(torch.tensor(min_v, dtype=torch.float32) * inv).to(torch.int64)
            zp = int(vq.zero_point)
            tensors["min_v"] = (code + zp).clamp(vq.low, vq.high) - zp
        else:
            tensors["min_v"] = torch.round(torch.tensor(min_v / unit)).to(torch.int64)
    module = IntegerNeuron(name=name, notes=notes, **config, **tensors)

    if spiking:
        return module, QSpec(torch.tensor(1.0), torch.tensor(0), None, 0, max_spikes)
    high = None
    if vq is not None:
        high = int(math.ceil(bound_of(vq, unit)))
    return module, QSpec(
        torch.tensor(unit), torch.tensor(0), None, None if high is None else -high, high
    )
