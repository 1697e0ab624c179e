"""Bit-exact simulation of the SynSense Xylo SNN core (Xylo Audio 2, xylosim v2).

The arithmetic follows the C++ reference simulator ``xylosim`` (package on PyPI,
``src/v2/cpp/XyloIAFNeuron.cpp`` and ``XyloLayer.cpp``) and rockpool's documentation of
the Xylo neuron (``rockpool.ai/devices/xylo-overview``). All states are 16-bit signed
integers that saturate; weights are 8-bit. One time step:

1. *Delivery.* Each input channel with :math:`c \\le 15` events adds its weight
   ``w << weight_shift_in`` :math:`c` times to the synaptic currents of its targets
   (two synapses per hidden neuron), one saturating add at a time, channels in index
   order. Then the hidden spikes of the *previous* step (:math:`c \\le 31`) are
   delivered the same way, through ``weights_rec`` to the hidden neurons and through
   ``weights_out`` to the readout neurons. So the readout sees the hidden layer one
   step late.
2. *Hidden neurons.* Each synaptic current decays, :math:`i \\leftarrow i - \\delta(i,
   dash_{syn})` with :math:`\\delta(x, d) = x \\gg d`, or :math:`\\mathrm{sign}(x)` where
   that is 0 (:func:`aquatic.functional.integer.bitshift_decrement`). Then
   :math:`\\Delta = \\mathrm{sat}(-\\delta(v, dash_{mem}) + i_1 + i_2)`,
   :math:`\\Delta = \\mathrm{sat}(\\Delta + b)`, :math:`v = \\mathrm{sat}(v + \\Delta)`,
   saturating to 16 bits after each addition, in that order.
3. *Spikes.* While :math:`v \\ge \\vartheta` and fewer than 31 spikes were emitted,
   emit one and subtract :math:`\\vartheta` (so :math:`n = \\min(\\lfloor v /
   \\vartheta \\rfloor, 31)` for :math:`v \\ge \\vartheta > 0`).
4. *Readout neurons*: the same with one synapse and at most one spike per step.

Aliases (copying a neuron's spikes to another) and hibernation are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from aquatic.functional.integer import bitshift_decrement, int_range
from aquatic.hw._common import DoesNotFitError, as_int_tensor, check_range, check_spikes

__all__ = ["XyloLimits", "XYLO_AUDIO_2", "check_spec", "simulate", "SPEC_KEYS"]

STATE_BITS = 16
WEIGHT_BITS = 8
DASH_MAX = 15
MAX_INPUT_SPIKES = 15
MAX_HIDDEN_SPIKES = 31
MAX_OUTPUT_SPIKES = 1
_LOW, _HIGH = int_range(STATE_BITS)

#: Keys of a specification, as ``rockpool``'s ``XyloSim.from_specification`` takes them.
SPEC_KEYS = (
    "weights_in",
    "weights_rec",
    "weights_out",
    "dash_mem",
    "dash_mem_out",
    "dash_syn",
    "dash_syn_2",
    "dash_syn_out",
    "threshold",
    "threshold_out",
    "bias",
    "bias_out",
    "weight_shift_in",
    "weight_shift_rec",
    "weight_shift_out",
)
# Keys rockpool's mapper adds that carry nothing for the arithmetic.
_IGNORED_KEYS = ("dt", "mapped_graph")


@dataclass(frozen=True)
class XyloLimits:
    """Size limits of a Xylo SNN core.

    Defaults are Xylo Audio 2 (SYNS61201), from rockpool's Xylo family table: 16
    input channels, 1000 hidden neurons, 8 readout neurons and a fan-out of at most 64
    synapses per hidden neuron (recurrent and readout synapses together).

    Args:
        max_inputs: input channels.
        max_hidden: hidden neurons.
        max_outputs: readout neurons.
        max_fan_out: non-zero outgoing synapses per hidden neuron; ``None`` for no limit.
    """

    max_inputs: int = 16
    max_hidden: int = 1000
    max_outputs: int = 8
    max_fan_out: Optional[int] = 64


#: The limits of Xylo Audio 2, the default everywhere.
XYLO_AUDIO_2 = XyloLimits()


def _two_synapses(weights: Tensor, name: str, rows: int, cols: int) -> Tensor:
    if weights.dim() == 2:
        weights = torch.stack([weights, torch.zeros_like(weights)], dim=-1)
    if weights.dim() != 3 or tuple(weights.shape) != (rows, cols, 2):
        raise ValueError(
            f"{name} must have shape ({rows}, {cols}, 2) (or ({rows}, {cols}) for synapse "
            f"1 only), got {tuple(weights.shape)}"
        )
    return weights


def check_spec(
    spec: Mapping[str, Any], limits: Optional[XyloLimits] = XYLO_AUDIO_2
) -> Dict[str, Union[Tensor, int]]:
    """Validate a Xylo specification and return it normalised (``int64`` tensors).

    Args:
        spec: mapping with the keys of :data:`SPEC_KEYS`. ``weights_in``,
            ``weights_out``, ``dash_mem``, ``dash_mem_out``, ``dash_syn``,
            ``dash_syn_out``, ``threshold`` and ``threshold_out`` are required;
            ``weights_rec``, ``bias`` and ``bias_out`` default to zeros,
            ``weight_shift_*`` to 0, and ``dash_syn_2`` is required only when some
            synapse-2 weight is non-zero. ``dt``, ``mapped_graph`` and empty
            ``aliases`` are accepted and ignored.
        limits: sizes to enforce, or ``None`` to check only what the arithmetic needs.

    Returns:
        dict: weights as ``(Nin, Nhid, 2)``, ``(Nhid, Nhid, 2)`` and ``(Nhid, Nout)``;
        per-neuron vectors; weight shifts as ints.

    Raises:
        TypeError: a value that is not an integer array.
        ValueError: a missing or unknown key, or a wrong shape.
        DoesNotFitError: a value out of the chip's range, or a size over ``limits``.
    """
    if not isinstance(spec, Mapping):
        raise TypeError(f"spec must be a mapping (dict) of Xylo parameters, got {type(spec)}")
    unknown = set(spec) - set(SPEC_KEYS) - set(_IGNORED_KEYS) - {"aliases"}
    if unknown:
        raise ValueError(
            f"unknown Xylo specification keys {sorted(unknown)}; the keys are {list(SPEC_KEYS)}"
        )
    aliases = spec.get("aliases")
    if aliases is not None and any(len(a) for a in aliases):
        raise ValueError("aliases are not supported by aquatic's Xylo simulator; remove them")
    required = ("weights_in", "weights_out", "dash_mem", "dash_mem_out", "dash_syn")
    required += ("dash_syn_out", "threshold", "threshold_out")
    missing = [key for key in required if spec.get(key) is None]
    if missing:
        raise ValueError(f"the Xylo specification lacks {missing}")

    w_in = as_int_tensor(spec["weights_in"], "weights_in")
    w_out = as_int_tensor(spec["weights_out"], "weights_out")
    if w_in.dim() not in (2, 3) or w_out.dim() != 2:
        raise ValueError(
            "weights_in must be (Nin, Nhidden, 2) and weights_out (Nhidden, Nout); got "
            f"{tuple(w_in.shape)} and {tuple(w_out.shape)}"
        )
    n_in, n_hid = w_in.shape[:2]
    n_out = w_out.shape[1]
    if w_out.shape[0] != n_hid:
        raise ValueError(
            f"weights_out must have one row per hidden neuron ({n_hid}), got {tuple(w_out.shape)}"
        )
    w_in = _two_synapses(w_in, "weights_in", n_in, n_hid)
    if spec.get("weights_rec") is None:
        w_rec = torch.zeros(n_hid, n_hid, 2, dtype=torch.int64)
    else:
        w_rec = as_int_tensor(spec["weights_rec"], "weights_rec")
        w_rec = _two_synapses(w_rec, "weights_rec", n_hid, n_hid)
    weight_low, weight_high = int_range(WEIGHT_BITS)
    for name, weights in (("weights_in", w_in), ("weights_rec", w_rec), ("weights_out", w_out)):
        check_range(weights, name, weight_low, weight_high, "Xylo weights are int8")

    def vector(key: str, size: int, low: int, high: int, what: str, default=None) -> Tensor:
        value = spec.get(key)
        if value is None:
            if default is None:
                raise ValueError(f"the Xylo specification lacks {key!r}")
            return torch.full((size,), default, dtype=torch.int64)
        tensor = as_int_tensor(value, key, (size,))
        return check_range(tensor, key, low, high, what)

    dash = "dash is a 4-bit shift"
    uses_syn_2 = bool((w_in[..., 1] != 0).any() or (w_rec[..., 1] != 0).any())
    result: Dict[str, Union[Tensor, int]] = {
        "weights_in": w_in,
        "weights_rec": w_rec,
        "weights_out": w_out,
        "dash_mem": vector("dash_mem", n_hid, 0, DASH_MAX, dash),
        "dash_mem_out": vector("dash_mem_out", n_out, 0, DASH_MAX, dash),
        "dash_syn": vector("dash_syn", n_hid, 0, DASH_MAX, dash),
        "dash_syn_2": vector("dash_syn_2", n_hid, 0, DASH_MAX, dash, None if uses_syn_2 else 0),
        "dash_syn_out": vector("dash_syn_out", n_out, 0, DASH_MAX, dash),
        "threshold": vector("threshold", n_hid, 0, _HIGH, "thresholds are int16 >= 0"),
        "threshold_out": vector("threshold_out", n_out, 0, _HIGH, "thresholds are int16 >= 0"),
        "bias": vector("bias", n_hid, _LOW, _HIGH, "biases are int16", 0),
        "bias_out": vector("bias_out", n_out, _LOW, _HIGH, "biases are int16", 0),
    }
    for key, weights in (("in", w_in), ("rec", w_rec), ("out", w_out)):
        name = f"weight_shift_{key}"
        shift = spec.get(name, 0)
        shift = int(as_int_tensor(0 if shift is None else shift, name, ()))
        check_range(torch.tensor(shift), name, 0, 15, "a 4-bit left shift")
        # xylosim passes (w << shift) to the neuron as an int16; larger values would wrap.
        largest = int(weights.abs().max()) if weights.numel() else 0
        if largest and (largest << shift) > 2**15:
            raise DoesNotFitError(
                f"{name}={shift} shifts a weight of magnitude {largest} out of the 16-bit "
                "synaptic state; use a smaller shift"
            )
        result[name] = shift
    if limits is not None:
        _check_limits(result, limits)
    return result


def _check_limits(spec: Dict[str, Any], limits: XyloLimits) -> None:
    n_in, n_hid, _ = spec["weights_in"].shape
    n_out = spec["weights_out"].shape[1]
    for what, size, limit in (
        ("input channels", n_in, limits.max_inputs),
        ("hidden neurons", n_hid, limits.max_hidden),
        ("readout neurons", n_out, limits.max_outputs),
    ):
        if size > limit:
            raise DoesNotFitError(f"the network has {size} {what}; Xylo has at most {limit}")
    if limits.max_fan_out is not None and n_hid:
        fan_out = (spec["weights_rec"] != 0).sum(dim=(1, 2)) + (spec["weights_out"] != 0).sum(1)
        worst = int(fan_out.argmax())
        if int(fan_out[worst]) > limits.max_fan_out:
            raise DoesNotFitError(
                f"hidden neuron {worst} has {int(fan_out[worst])} outgoing synapses; Xylo "
                f"allows at most {limits.max_fan_out} per neuron (prune its weights)"
            )


def _deliver(state: Tensor, counts: Tensor, weights: Tensor) -> Tensor:
    """Add ``counts[n, p]`` times ``weights[p, m]`` to ``state[n, m]``, one event at a time.

    Every single addition saturates to 16 bits, in presynaptic order, as on the chip.
    Repeated additions of one weight from inside the range saturate monotonically, so
    ``c`` events of weight ``w`` are ``clamp(x + c * w)``; and when neither the sum of
    all positive nor of all negative contributions can leave the range, no partial sum
    can, and one matrix product gives the exact result. Only the rows where that bound
    fails are replayed presynaptic neuron by presynaptic neuron.
    """
    if counts.numel() == 0 or not bool(counts.any()):
        return state
    total = state + counts @ weights
    upper = state + counts @ weights.clamp(min=0)
    lower = state + counts @ weights.clamp(max=0)
    unsafe = ((upper > _HIGH) | (lower < _LOW)).any(dim=1)
    if not bool(unsafe.any()):
        return total
    rows = unsafe.nonzero().flatten()
    exact = state[rows]
    sub_counts = counts[rows]
    for pre in sub_counts.any(dim=0).nonzero().flatten().tolist():
        exact = torch.clamp(exact + sub_counts[:, pre : pre + 1] * weights[pre], _LOW, _HIGH)
    total[rows] = exact
    return total


def _evolve(
    i_syn: Tensor,
    v_mem: Tensor,
    dash_syn: Tensor,
    dash_mem: Tensor,
    bias: Tensor,
    threshold: Tensor,
    max_spikes: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One neuron update (decay, integrate, spike, reset); ``i_syn`` is ``(N, M, S)``."""
    i_syn = i_syn - bitshift_decrement(i_syn, dash_syn)
    leak = -bitshift_decrement(v_mem, dash_mem)
    # xylosim negates the leak in 16 bits: -(-32768) wraps to -32768 (only dash 0 at -32768).
    leak = torch.where(leak > _HIGH, leak - 2**16, leak)
    delta = torch.clamp(leak + i_syn.sum(dim=-1), _LOW, _HIGH)
    delta = torch.clamp(delta + bias, _LOW, _HIGH)
    v_mem = torch.clamp(v_mem + delta, _LOW, _HIGH)
    safe_threshold = torch.where(threshold > 0, threshold, torch.ones_like(threshold))
    count = torch.div(v_mem, safe_threshold, rounding_mode="floor")
    count = torch.where(threshold > 0, count, torch.full_like(count, max_spikes))
    count = torch.where(v_mem >= threshold, count.clamp(0, max_spikes), torch.zeros_like(count))
    v_mem = v_mem - count * threshold
    return i_syn, v_mem, count


def simulate(
    spec: Mapping[str, Any],
    spikes: Any,
    record: bool = False,
    limits: Optional[XyloLimits] = XYLO_AUDIO_2,
) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
    """Run a Xylo specification on input spike counts, bit-exact with xylosim.

    Each sequence of the batch starts from zero state. See the module docstring for
    the arithmetic; note that the readout layer receives the hidden spikes one step late.

    Args:
        spec: a Xylo specification (:func:`check_spec`), e.g. from
            :func:`aquatic.hw.xylo.export`.
        spikes: input event counts, non-negative integers ``(N, T, Nin)``; counts above
            15 per step are cut to 15, as the chip does.
        record: also return the states after each step.
        limits: size limits checked on ``spec`` (``None``: none).

    Returns:
        Tensor: readout spikes ``(N, T, Nout)`` (``int64``, 0 or 1); with ``record``,
        also a dict of ``"spikes"`` (hidden, ``(N, T, Nhid)``), ``"v_mem"``,
        ``"i_syn"`` (``(N, T, Nhid, 2)``), ``"v_mem_out"`` and ``"i_syn_out"``.

    Shape:
        - spikes: ``(N, T, Nin)``. Output: ``(N, T, Nout)``.
    """
    spec = check_spec(spec, limits)
    w_in, w_rec, w_out = spec["weights_in"], spec["weights_rec"], spec["weights_out"]
    n_in, n_hid, _ = w_in.shape
    n_out = w_out.shape[1]
    counts = check_spikes(spikes, n_in).clamp(max=MAX_INPUT_SPIKES)
    n_batch, n_steps, _ = counts.shape
    w_in = (w_in << spec["weight_shift_in"]).reshape(n_in, n_hid * 2)
    w_rec = (w_rec << spec["weight_shift_rec"]).reshape(n_hid, n_hid * 2)
    w_out = w_out << spec["weight_shift_out"]
    dash_syn = torch.stack([spec["dash_syn"], spec["dash_syn_2"]], dim=-1)
    dash_syn_out = spec["dash_syn_out"].unsqueeze(-1)

    i_syn = torch.zeros(n_batch, n_hid * 2, dtype=torch.int64)
    v_mem = torch.zeros(n_batch, n_hid, dtype=torch.int64)
    hidden = torch.zeros(n_batch, n_hid, dtype=torch.int64)
    i_out = torch.zeros(n_batch, n_out, dtype=torch.int64)
    v_out = torch.zeros(n_batch, n_out, dtype=torch.int64)
    trace = {key: [] for key in ("spikes", "v_mem", "i_syn", "v_mem_out", "i_syn_out")}
    outputs = []
    for t in range(n_steps):
        i_syn = _deliver(i_syn, counts[:, t], w_in)
        i_syn = _deliver(i_syn, hidden, w_rec)
        i_out = _deliver(i_out, hidden, w_out)
        i_two, v_mem, hidden = _evolve(
            i_syn.reshape(n_batch, n_hid, 2),
            v_mem,
            dash_syn,
            spec["dash_mem"],
            spec["bias"],
            spec["threshold"],
            MAX_HIDDEN_SPIKES,
        )
        i_syn = i_two.reshape(n_batch, n_hid * 2)
        i_one, v_out, fired = _evolve(
            i_out.unsqueeze(-1),
            v_out,
            dash_syn_out,
            spec["dash_mem_out"],
            spec["bias_out"],
            spec["threshold_out"],
            MAX_OUTPUT_SPIKES,
        )
        i_out = i_one.squeeze(-1)
        outputs.append(fired)
        if record:
            for key, value in (
                ("spikes", hidden),
                ("v_mem", v_mem),
                ("i_syn", i_two),
                ("v_mem_out", v_out),
                ("i_syn_out", i_out),
            ):
                trace[key].append(value)
    empty = torch.zeros(n_batch, 0, n_out, dtype=torch.int64)
    output = torch.stack(outputs, dim=1) if outputs else empty
    if not record:
        return output
    recorded = {
        key: torch.stack(values, dim=1) if values else None for key, values in trace.items()
    }
    return output, recorded
