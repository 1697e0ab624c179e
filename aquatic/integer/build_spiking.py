"""Building :class:`~aquatic.integer.spiking.IntegerNeuron` from a trained spiking layer."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.neuron_types import NeuronSpec
from aquatic.integer.base import QSpec
from aquatic.functional.grid import Grid
from aquatic.integer.reading import describe, grid_steps, read_grid
from aquatic.integer.requant import dyadic_exponent, is_power_of_two, quantize_multiplier
from aquatic.integer.spiking import IntegerNeuron
from aquatic.nn import LIFRecurrent
from aquatic.quantizers.decay import BitShiftDecay, UniformDecay

__all__ = ["build_neuron"]

#: Magnitude that every intermediate of the integer arithmetic must stay below.
_INT64_ROOM = 2**61
#: The largest spike count per step (spike_values counts exactly far beyond it, to 2**29).
_MAX_SPIKES = 2**22
#: Fractional bits of a decay (its float32 value) that int64 arithmetic can carry.
_MAX_DECAY_BITS = 40


def _dyadic(value, name: str, where: str) -> Tuple[Tensor, int]:
    """``(numerator, exponent)`` with ``value = numerator * 2**-exponent`` exactly (float32)."""
    value = torch.as_tensor(value, dtype=torch.float32).detach()
    exponent = max(dyadic_exponent(value), 0)
    if exponent > _MAX_DECAY_BITS:
        raise ValueError(
            f"{where}: {name} = {value.flatten()[0].item():g} needs {exponent} fractional "
            "bits; a decay this small cannot run in int64 (use 0, or a bit-shift decay)"
        )
    return torch.ldexp(value.double(), torch.tensor(exponent)).to(torch.int64), exponent


def _exponent(scale: Tensor) -> int:
    """``k`` with ``2**-k`` the smallest of the power-of-two ``scale``."""
    return int(-torch.log2(scale.min()).round())


def _ratio(ratio, bound: float) -> Tuple[Tensor, Tensor]:
    """A multiplier and shift for ``ratio``, small enough that ``bound * multiplier < 2**62``."""
    precision = int(min(31, max(8, 62 - math.ceil(math.log2(max(bound, 1.0) + 1)))))
    return quantize_multiplier(torch.as_tensor(ratio, dtype=torch.float64), precision)


def _in_units(
    value, unit: float, what: str, where: str, notes: List[str], grid: Optional[Grid] = None
) -> Tensor:
    """``value`` in units of ``unit`` (int64); from its codes when ``grid``'s quantizer made it.

    Codes times the ratio of the scales are exact where the float value is not (a
    quantized value ``k * s`` is ``k * s`` rounded to float32).
    """
    value = torch.as_tensor(value, dtype=torch.float32).detach()
    if grid is not None:
        steps = grid_steps(value, grid, f"{where}, {what!r}").double()
        scale = grid.scale if grid.scale.dim() == 0 else grid.scale.reshape(-1)
        steps = steps * (scale / unit)
    else:
        steps = value.double() / unit
    rounded = torch.round(steps)
    if rounded.numel() and float(rounded.abs().max()) >= 2**52:
        raise ValueError(
            f"{where}: the {what} is {float(value.abs().max()):g}, too large for the integer "
            f"unit {unit:.6g} of this layer"
        )
    if not torch.equal(rounded, steps):
        notes.append(f"{where}: the {what} is rounded to the integer unit {unit:.6g}")
    return rounded.to(torch.int64)


def _param_grid(layer, name: str, where: str) -> Optional[Grid]:
    quantizer = layer.quantizers[name] if name in layer.quantizers else None
    if quantizer is None:
        return None
    try:
        grid = read_grid(quantizer, f"{where}, quantizer {name!r}", [], rounds=False)
    except ValueError:
        return None  # not on a uniform grid: use the value itself
    if grid.scale.dim() != 0 or int(grid.zero_point.abs().max()) != 0:
        return None
    return grid


def _state(layer, state: str, where: str, notes: List[str]) -> Optional[Grid]:
    quantizer = layer.quantizers[state] if state in layer.quantizers else None
    if quantizer is None or not getattr(quantizer, "fake_quant_enabled", True):
        return None
    grid = read_grid(quantizer, f"{where}, state quantizer {state!r}", notes)
    if grid.scale.dim() != 0 or grid.zero_point.dim() != 0:
        raise ValueError(
            f"{where}: the {state} quantizer is per channel; the integer model needs one "
            "scale and zero point per state (ch_axis=None)"
        )
    return grid


def _decay_rule(layer, kind: str, neurons: NeuronSpec, affine: Optional[Grid], where: str):
    """``(rule, bits, codes)`` when the layer decays state ``kind`` by an integer rule."""
    alpha = neurons.alpha_mem if kind == "mem" else neurons.alpha_syn
    decay = neurons.state_ops.decay_v_mem if kind == "mem" else neurons.state_ops.decay_i_syn
    if affine is None or alpha is None or decay is None:
        return None
    quantizer = layer.decay_quantizer(kind)
    if not getattr(quantizer, "fake_quant_enabled", True):
        return None
    codes = quantizer.decay_codes(alpha)
    if isinstance(quantizer, BitShiftDecay):
        return "bitshift", 0, codes
    if isinstance(quantizer, UniformDecay):
        return "multiplicative", quantizer.bits, codes
    raise ValueError(
        f"{where}: the {kind} decay quantizer {type(quantizer).__name__} decays states by a "
        "rule of its own, which the integer model does not know"
    )


def _recurrent(layer, where: str):
    if "rec_weight" not in layer.quantizers:
        raise ValueError(
            f"{where}: rec_weight is not quantized, so it has no integer codes; give the "
            "layer a QConfig with a weight quantizer"
        )
    value = layer.quantize_params()["rec_weight"]  # first: it may record the scale
    grid = read_grid(layer.quantizers["rec_weight"], f"{where}, 'rec_weight'", [], rounds=False)
    if grid.scale.dim() == 1 and grid.ch_axis not in (0, -2):
        raise ValueError(
            f"{where}: rec_weight is quantized per input neuron (ch_axis={grid.ch_axis}); "
            "use ch_axis=0 or one scale"
        )
    return grid_steps(value, grid, f"{where}, 'rec_weight'"), grid.scale


@torch.no_grad()
def build_neuron(name: str, layer, spec: QSpec, state_frac_bits: int):
    """The integer module of spiking ``layer`` for input codes described by ``spec``.

    Returns:
        ``(module, output_spec)``.
    """
    where = describe(name, layer)
    neurons = layer.spec()
    spiking = neurons.spiking
    notes: List[str] = []
    max_spikes = neurons.max_spikes if spiking else 1
    if max_spikes > _MAX_SPIKES:
        raise ValueError(f"{where}: max_spikes={max_spikes} is above {_MAX_SPIKES}")
    if spiking and (neurons.strict_threshold or neurons.input_after_decay or neurons.input_delay):
        raise ValueError(
            f"{where}: the integer conversion does not run Loihi's neuron options "
            "(strict_threshold, input_after_decay, input_delay); run the model on "
            "aquatic.hw.loihi.simulate(aquatic.hw.loihi.export(model)) instead"
        )
    if layer.persistent_state:
        notes.append(f"{where}: persistent_state is ignored; the integer model starts from zero")
    vq = _state(layer, "v_mem", where, notes)
    iq = _state(layer, "i_syn", where, notes) if neurons.synaptic else None
    rules = {
        "v": _decay_rule(layer, "mem", neurons, vq, where),
        "i": _decay_rule(layer, "syn", neurons, iq, where),
    }
    rec = _recurrent(layer, where) if isinstance(layer, LIFRecurrent) else None
    threshold, bias = neurons.threshold, neurons.bias
    if spiking and bool((torch.as_tensor(threshold) <= 0).any()):
        raise ValueError(f"{where}: the quantized threshold is {threshold}; it must be > 0")
    min_v = neurons.min_v_mem
    min_v = None if min_v is None else torch.tensor(min_v, dtype=torch.float32)

    decays = {
        "mem": _dyadic(neurons.alpha_mem, "alpha_mem", where),
        "syn": (
            None if neurons.alpha_syn is None else _dyadic(neurons.alpha_syn, "alpha_syn", where)
        ),
    }
    norm = None
    if neurons.norm_input:
        norm = _dyadic(1 - torch.as_tensor(neurons.alpha_mem), "1 - alpha_mem", where)
    fine = max(decays["mem"][1], norm[1] if norm else 0, decays["syn"][1] if decays["syn"] else 0)

    unit_scales = [spec.scale] + [a.scale for a in (vq, iq) if a is not None]
    if rec is not None:
        unit_scales.append(rec[1])
    power_of_two = all(is_power_of_two(s) for s in unit_scales)
    if "activation" in layer.quantizers:
        act = read_grid(layer.quantizers["activation"], f"{where}, 'activation'", [])
        power_of_two = power_of_two and act.power_of_two
    exact = power_of_two
    if exact:
        needed = [_exponent(s) for s in unit_scales]
        for value in (threshold, bias, min_v):
            if value is not None:
                needed.append(dyadic_exponent(torch.as_tensor(value, dtype=torch.float32)))
        unit_exponent = max(needed) + (state_frac_bits if vq is None else 0)
        unit = 2.0**-unit_exponent
        room = _magnitude(spec, vq, iq, rec, threshold, bias, max_spikes, unit)
        if room is not None and room * 2.0 ** (fine + 2) >= _INT64_ROOM:
            exact = False
            notes.append(f"{where}: exact arithmetic would need more than 62 bits; rounding")
    if not exact:
        base = float(vq.scale) if vq is not None else float(spec.scale.min())
        unit = base * 2.0**-state_frac_bits
    if not power_of_two:
        notes.append(
            f"{where}: its scales are not all powers of two, so the integer model rounds "
            "where the float model does not; spikes may differ near the threshold"
        )
    if vq is None:
        notes.append(
            f"{where}: the membrane is not quantized (QConfig.state is None): the "
            f"quantization-aware model keeps it in float32, the integer model with "
            f"{state_frac_bits} fractional bits"
        )
    if neurons.synaptic and iq is None:
        notes.append(f"{where}: the synaptic current is not quantized (QConfig.state is None)")

    tensors: Dict[str, Optional[Tensor]] = {"input_zero_point": spec.zero_point}
    in_bound = float(spec.magnitude() or 2**31)
    tensors["input_multiplier"], tensors["input_shift"] = _ratio(spec.scale / unit, in_bound)
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
        grid = _param_grid(layer, "threshold", where)
        tensors["threshold"] = _in_units(threshold, unit, "threshold", where, notes, grid)
        if bool((tensors["threshold"] <= 0).any()):
            raise ValueError(f"{where}: the threshold rounds to 0 at the integer unit {unit:g}")
    if bias is not None:
        grid = _param_grid(layer, "bias", where)
        tensors["bias"] = _in_units(bias, unit, "bias", where, notes, grid)
    if min_v is not None:
        tensors["min_v"] = _in_units(min_v, unit, "min_v_mem", where, notes)

    config = dict(
        spiking=spiking,
        reset=neurons.reset,
        max_spikes=max_spikes,
        emulate_float32=exact,
        mem_exp=decays["mem"][1],
        syn_exp=decays["syn"][1] if decays["syn"] else 0,
        norm_exp=norm[1] if norm else 0,
        input_axis=spec.axis,
        state_limit=None,
    )
    for which, affine in (("v", vq), ("i", iq)):
        if affine is None:
            continue
        zero_point = int(affine.zero_point)
        steps = max(abs(affine.quant_min - zero_point), abs(affine.quant_max - zero_point))
        to_steps, back = float(unit / affine.scale), float(affine.scale / unit)
        bound = steps * back * 2.0**fine
        tensors[f"{which}_multiplier"], tensors[f"{which}_shift"] = _ratio(to_steps, bound)
        tensors[f"{which}_back_multiplier"], tensors[f"{which}_back_shift"] = _ratio(back, steps)
        config[f"{which}_low"], config[f"{which}_high"] = (
            affine.quant_min - zero_point,
            affine.quant_max - zero_point,
        )
        config[f"{which}_rounding"] = affine.rounding
        if rules[which] is not None:
            (
                config[f"{which}_rule"],
                config[f"{which}_rule_bits"],
                tensors[f"{which}_rule_codes"],
            ) = rules[which]
    if vq is None or (neurons.synaptic and iq is None):
        config["state_limit"] = int(_INT64_ROOM // 2 ** (fine + 4))
    module = IntegerNeuron(name=name, notes=notes, source=type(layer).__name__, **config, **tensors)

    if spiking:
        return module, QSpec(torch.tensor(1.0), torch.tensor(0), None, 0, max_spikes)
    high = None
    if vq is not None:
        zero_point = int(vq.zero_point)
        steps = max(abs(vq.quant_min - zero_point), abs(vq.quant_max - zero_point))
        high = int(math.ceil(steps * float(vq.scale) / unit))
    low = None if high is None else -high
    return module, QSpec(torch.tensor(unit), torch.tensor(0), None, low, high)


def _magnitude(spec, vq, iq, rec, threshold, bias, max_spikes, unit) -> Optional[float]:
    """The largest value (in units of ``unit``) one step can add up, or ``None`` if unbounded."""
    parts = []
    for affine in (vq, iq):
        if affine is not None:
            zero_point = int(affine.zero_point)
            steps = max(abs(affine.quant_min - zero_point), abs(affine.quant_max - zero_point))
            parts.append(steps * float(affine.scale) / unit)
    magnitude = spec.magnitude()
    if magnitude is None or vq is None:
        return None
    parts.append(magnitude * float(spec.scale.max()) / unit)
    if rec is not None:
        parts.append(max_spikes * float(rec[0].abs().sum(1).max()) * float(rec[1].max()) / unit)
    for value in (threshold, bias):
        if value is not None:
            parts.append(float(torch.as_tensor(value).abs().max()) * max_spikes / unit)
    return sum(parts)
