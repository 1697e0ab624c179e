"""SynSense Xylo: QAT preset, bit-exact simulator and export.

Xylo (Xylo Audio 2 by default) computes with int8 weights, int16 saturating synaptic
currents and membranes, bit-shift leaks ``x -= x >> dash`` (at least 1 toward zero,
``dash`` in 0..15) and one unit per neuron population shared by weights, biases and
thresholds; hidden neurons emit up to 31 spikes per step, readout neurons one. See
:mod:`aquatic.hw._xylo_sim` for the exact arithmetic of :func:`simulate`.

Workflow: build ``input Linear -> LIF (or LIFRecurrent) -> output Linear -> LIF`` with
``qconfig=xylo.qconfig()``, train, then ``spec = xylo.export(model)``; the spec has the
keys of rockpool's ``XyloSim.from_specification`` and runs in :func:`simulate`.

Exactness: with :func:`qconfig` the quantization-aware model computes Xylo's integer
arithmetic in float: the states are 16-bit on the shared grid and quantized before the
spike decision, and the bit-shift decays are applied as the chip applies them
(:meth:`aquatic.quantizers.BitShiftDecay.decay_state`). With a power-of-two scale
(``qconfig(power_of_two=True)``, so that every float sum is exact) the model's hidden
spikes equal ``simulate(export(model), x)``'s, and without a readout bias its output
spikes equal the chip's one step later (the readout delay; with a readout bias, the
exact relation is in :func:`export`), as long as no intermediate sum saturates.
Saturation is modelled where it acts on the final value: a state is clamped to 16 bits
before it decays and after each update, as on the chip; the chip also saturates after
every single input event and between the terms of the membrane update, which the model,
adding them at once, does not (that matters only where input events of opposite signs
pass the 16-bit limit).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor, nn

from aquatic.walk import refuse_shared_layers
from aquatic.hw._common import (
    DoesNotFitError,
    layer_sequence,
    on_grid,
    per_neuron,
    per_tensor_weights,
    quantized_param,
    require,
    weight_grid,
)
from aquatic.hw._xylo_sim import (
    DASH_MAX,
    MAX_HIDDEN_SPIKES,
    MAX_OUTPUT_SPIKES,
    SPEC_KEYS,
    STATE_BITS,
    XYLO_AUDIO_2,
    XyloLimits,
    check_spec,
    simulate,
)
from aquatic.quantizers.shared import ScaleGroup, SharedScaleQuantizer, SharedStateQuantizer
from aquatic.nn import LIF, LIFRecurrent
from aquatic.ptq.chip_budget import ChipBudget
from aquatic.qconfig import QConfig
from aquatic.quantizers.decay import BitShiftDecay

__all__ = [
    "SPEC_KEYS",
    "budget",
    "XYLO_AUDIO_2",
    "SharedStateQuantizer",
    "XyloLimits",
    "check_spec",
    "dash_of",
    "export",
    "qconfig",
    "simulate",
]


def qconfig(group: Optional[Any] = None, power_of_two: bool = False):
    """A QConfig that trains against Xylo's constraints.

    Weights are int8 and biases and thresholds int16, all with one shared scale
    (:class:`~aquatic.quantizers.SharedScaleQuantizer` in one
    :class:`~aquatic.quantizers.ScaleGroup`); ``tau`` and ``alpha`` are bit-shift decays
    with a 4-bit ``dash`` (:class:`~aquatic.quantizers.BitShiftDecay`), so
    :math:`\\alpha = 1 - 2^{-dash}`; the states (synaptic currents and membranes) are
    int16 on the same scale (:class:`~aquatic.quantizers.SharedStateQuantizer`), so the
    spiking layers decide spikes on the 16-bit membrane and decay it as Xylo does
    (``v - max(v >> dash, 1)``, see :mod:`aquatic.nn.grid_decay`).

    Every layer built with one returned QConfig shares one scale. Xylo needs one scale
    per neuron population: the input ``Linear``, the hidden ``LIF`` (threshold, bias,
    recurrent weights) on one, the output ``Linear`` and readout ``LIF`` on one (the
    same or another; call ``qconfig()`` twice for two).

    Args:
        group: the :class:`~aquatic.quantizers.ScaleGroup` to share; a new one if ``None``.
        power_of_two: restrict the shared scale to a power of two (only for a new group).

    Example:
        >>> from aquatic.hw import xylo
        >>> q = xylo.qconfig()
        >>> q.weight.kwargs["bits"], q.threshold.kwargs["bits"], q.tau.kwargs["bits"]
        (8, 16, 4)
        >>> q.state.cls.__name__, q.state.kwargs["bits"]
        ('SharedStateQuantizer', 16)
    """
    if group is None:
        group = ScaleGroup(power_of_two=power_of_two)
    elif not isinstance(group, ScaleGroup):
        raise TypeError(f"group must be an aquatic.quantizers.ScaleGroup, got {group!r}")
    pow2 = {"power_of_two": True} if group.power_of_two else {}
    shared = SharedScaleQuantizer.with_args(group=group, **pow2)
    return QConfig(
        weight=shared.with_args(bits=8),
        bias=shared.with_args(bits=16),
        threshold=shared.with_args(bits=16),
        tau=BitShiftDecay.with_args(bits=4, param="tau"),
        alpha=BitShiftDecay.with_args(bits=4, param="alpha"),
        state=SharedStateQuantizer.with_args(group=group, bits=STATE_BITS, **pow2),
    )


def dash_of(alpha: Tensor, name: str = "alpha") -> Tensor:
    """The bit shifts ``dash`` with :math:`\\alpha = 1 - 2^{-dash}`, or a clear error.

    Example:
        >>> dash_of(torch.tensor([0.5, 0.875, 0.0]))
        tensor([1, 3, 0])
    """
    alpha = alpha.detach().double()
    leak = 1.0 - alpha
    if bool((leak <= 0).any()):
        raise DoesNotFitError(
            f"{name} = 1 (no leak) cannot be represented on Xylo: every state leaks at "
            f"least 2**-{DASH_MAX} per step; use tau/alpha quantized by xylo.qconfig()"
        )
    dash = -torch.log2(leak)
    rounded = torch.round(dash)
    worst = float((dash - rounded).abs().max()) if dash.numel() else 0.0
    if worst > 1e-4:
        raise DoesNotFitError(
            f"{name} is not of the form 1 - 2**-dash (a bit-shift decay): dash would be "
            f"{float(dash.flatten()[int((dash - rounded).abs().argmax())]):.4f}; quantize "
            "tau/alpha with aquatic.quantizers.BitShiftDecay (xylo.qconfig() does)"
        )
    if rounded.numel() and (float(rounded.min()) < 0 or float(rounded.max()) > DASH_MAX):
        raise DoesNotFitError(
            f"{name} needs dash {int(rounded.max())}; Xylo's dash is 0..{DASH_MAX}"
        )
    return rounded.to(torch.int64)


def _population(linear, neuron, names, max_spikes: int, role: str) -> Dict[str, Any]:
    """Integer parameters of one Linear -> LIF pair (one shared scale)."""
    lin_name, lif_name = names
    require(
        isinstance(linear, nn.Linear),
        f"layer {lin_name!r} is a {type(linear).__name__}; Xylo's {role} layer needs a Linear",
    )
    require(
        isinstance(neuron, LIF),
        f"layer {lif_name!r} is a {type(neuron).__name__}; Xylo's {role} neurons are an "
        "aquatic.nn.LIF" + (" or LIFRecurrent" if role == "hidden" else ""),
    )
    if role == "readout":
        require(
            not isinstance(neuron, LIFRecurrent),
            f"layer {lif_name!r}: readout neurons cannot be recurrent",
        )
    bias = quantized_param(linear, "bias")
    require(
        bias is None or not bool(bias.ne(0).any()),
        f"layer {lin_name!r} has a bias, which Xylo's synapses lack; build it with "
        "bias=False and give the LIF a bias instead",
    )
    spec = neuron.spec()
    require(
        spec.reset == "subtract",
        f"layer {lif_name!r}: Xylo resets by subtraction; use reset='subtract'",
    )
    require(
        spec.max_spikes == max_spikes,
        f"layer {lif_name!r} has max_spikes={spec.max_spikes}; Xylo's {role} neurons emit "
        f"up to {max_spikes} spike(s) per step: build it with max_spikes={max_spikes}",
    )
    require(spec.min_v_mem is None, f"layer {lif_name!r}: Xylo has no min_v_mem; use None")
    require(
        not (spec.strict_threshold or spec.input_after_decay or spec.input_delay),
        f"layer {lif_name!r} uses Loihi's neuron options (strict_threshold, "
        "input_after_decay, input_delay), which Xylo lacks; build the LIF without them",
    )
    require(not spec.norm_input, f"layer {lif_name!r}: Xylo has no norm_input; use False")
    require(
        spec.synaptic,
        f"layer {lif_name!r} has no synaptic state, but every Xylo neuron's input current "
        "decays (i = alpha_syn * (i + x)); give it tau_syn or alpha_syn",
    )
    grid = weight_grid(linear, lin_name, "xylo")
    n_out = linear.out_features
    weight = on_grid(quantized_param(linear, "weight"), grid, f"{lin_name}.weight")
    result = {
        "weight": weight.T,
        "dash_mem": dash_of(per_neuron(spec.alpha_mem, n_out, lif_name), f"{lif_name}.alpha_mem"),
        "dash_syn": dash_of(per_neuron(spec.alpha_syn, n_out, lif_name), f"{lif_name}.alpha_syn"),
        "threshold": on_grid(
            per_neuron(spec.threshold, n_out, lif_name), grid, f"{lif_name}.threshold"
        ),
        "bias": on_grid(per_neuron(spec.bias, n_out, lif_name), grid, f"{lif_name}.bias"),
    }
    if isinstance(neuron, LIFRecurrent):
        rec = quantized_param(neuron, "rec_weight")
        result["weights_rec"] = on_grid(rec, grid, f"{lif_name}.rec_weight").T
    return result


def export(model: nn.Module, limits: Optional[XyloLimits] = XYLO_AUDIO_2) -> Dict[str, Any]:
    """The trained ``model`` as Xylo's integer parameters, checked against the chip.

    ``model`` is ``Linear -> LIF`` (or ``LIFRecurrent``) ``-> Linear -> LIF`` (an
    ``nn.Sequential``, possibly nested) quantized with :func:`qconfig`: input weights,
    hidden thresholds/biases/recurrent weights on one grid, readout weights and
    thresholds/biases on one grid, decays of the form :math:`1 - 2^{-dash}`; ``Linear``
    without bias, ``LIF`` with ``tau_syn``, ``reset="subtract"``, ``max_spikes=31``
    (hidden) and ``max_spikes=1`` (readout). Only synapse 1 of the hidden neurons is used.

    The readout on Xylo receives the hidden spikes one step later than the model's
    output ``Linear`` does, while it integrates its own bias from step 0. Exactly (with
    :func:`qconfig` and a power-of-two scale): the chip's readout is the model's readout
    run on the hidden spikes delayed by one step, with a first step without input,
    ``model[3](model[2](cat([0, h[:, :-1]], 1)))`` for hidden spikes
    ``h = model[1](model[0](x))``. Without a readout bias that first step leaves the
    readout at rest, so ``simulate(export(model), x)[:, t + 1]`` is the model's output
    at step ``t`` (and step 0 is silent). With a readout bias the chip's readout starts
    one bias step ahead, and the output at ``t + 1`` may differ from the model's at
    ``t``: export warns (``UserWarning``).

    Args:
        model: the trained network.
        limits: Xylo's sizes to check (``None``: only the arithmetic's ranges).

    Returns:
        dict: the keys of rockpool's ``XyloSim.from_specification`` -- ``weights_in``
        ``(Nin, Nhidden, 2)`` int8, ``weights_rec`` ``(Nhidden, Nhidden, 2)`` int8,
        ``weights_out`` ``(Nhidden, Nout)`` int8, ``dash_mem``, ``dash_syn``,
        ``dash_syn_2`` ``(Nhidden,)`` and ``dash_mem_out``, ``dash_syn_out``
        ``(Nout,)`` uint8, ``threshold``, ``bias`` ``(Nhidden,)`` and
        ``threshold_out``, ``bias_out`` ``(Nout,)`` int16, ``weight_shift_in``,
        ``weight_shift_rec``, ``weight_shift_out`` ints (0) -- as NumPy arrays.

    Raises:
        DoesNotFitError: a layer type Xylo lacks, a value off the chip's grid or out of
            its range (e.g. 9-bit weights), or a network over ``limits``; the message
            names the layer.
    """
    refuse_shared_layers(model, "Xylo export")
    layers = layer_sequence(model, "Xylo")
    require(
        len(layers) == 4,
        "Xylo takes input Linear -> LIF (or LIFRecurrent) -> output Linear -> LIF; got "
        + " -> ".join(f"{type(m).__name__} ({n})" for n, m in layers),
    )
    (n0, lin_in), (n1, hidden), (n2, lin_out), (n3, readout) = layers
    pop = _population(lin_in, hidden, (n0, n1), MAX_HIDDEN_SPIKES, "hidden")
    out = _population(lin_out, readout, (n2, n3), MAX_OUTPUT_SPIKES, "readout")
    if bool(out["bias"].ne(0).any()):
        warnings.warn(
            f"layer {n3!r} has a bias: Xylo's readout integrates it from step 0, one step "
            "before the hidden spikes reach it, so the chip's output is not the model's "
            "output one step later but the readout run on the hidden spikes delayed by one "
            "step (a first step without input); see aquatic.hw.xylo.export. Train without "
            "a readout bias for the plain one-step relation",
            UserWarning,
            stacklevel=2,
        )
    n_hid = pop["weight"].shape[1]
    require(
        lin_out.in_features == n_hid,
        f"layer {n2!r} takes {lin_out.in_features} inputs but {n1!r} has {n_hid} neurons",
    )
    zeros = torch.zeros_like(pop["weight"])
    rec = pop.get("weights_rec", torch.zeros(n_hid, n_hid, dtype=torch.int64))
    spec = {
        "weights_in": torch.stack([pop["weight"], zeros], -1),
        "weights_rec": torch.stack([rec, torch.zeros_like(rec)], -1),
        "weights_out": out["weight"],
        "dash_mem": pop["dash_mem"],
        "dash_mem_out": out["dash_mem"],
        "dash_syn": pop["dash_syn"],
        "dash_syn_2": torch.zeros_like(pop["dash_syn"]),
        "dash_syn_out": out["dash_syn"],
        "threshold": pop["threshold"],
        "threshold_out": out["threshold"],
        "bias": pop["bias"],
        "bias_out": out["bias"],
        "weight_shift_in": 0,
        "weight_shift_rec": 0,
        "weight_shift_out": 0,
    }
    try:
        check_spec(spec, limits)
    except DoesNotFitError as error:
        raise DoesNotFitError(f"the model does not fit Xylo: {error}") from None
    dtypes = {"weights": np.int8, "dash": np.uint8, "threshold": np.int16, "bias": np.int16}
    result: Dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, int):
            result[key] = value
        else:
            kind = next(k for k in dtypes if key.startswith(k))
            result[key] = value.numpy().astype(dtypes[kind])
    return result


def budget(limits: Optional[XyloLimits] = XYLO_AUDIO_2) -> ChipBudget:
    """Xylo as the budget of :func:`aquatic.mixed_precision` (``budget=xylo`` is this).

    Weights of 2 to 8 bits, each synapse layer on its population's shared scale (the
    QConfig its ``LIF`` carries, from :func:`qconfig`), checked by
    ``export(model, limits)``; see :class:`aquatic.ptq.ChipBudget`.

    Example:
        >>> from aquatic.hw import xylo
        >>> xylo.budget()
        ChipBudget(Xylo, weights 2..8 bits)
    """
    return ChipBudget(
        "Xylo", check=lambda model: export(model, limits), weight_qconfig=per_tensor_weights
    )
