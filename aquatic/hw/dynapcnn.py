"""SynSense DYNAP-CNN / Speck: QAT preset, integer simulator and export.

Each core is a convolution (or dense layer) followed by integrate-and-fire neurons;
weights and biases are 8-bit and thresholds and membranes 16-bit, all in one unit per
layer, as sinabs' ``discretize_conv_spike`` maps them. See
:mod:`aquatic.hw._dynapcnn_sim` for the arithmetic of :func:`simulate`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from aquatic.walk import refuse_shared_layers
from aquatic.hw._common import (
    DoesNotFitError,
    layer_sequence,
    on_grid,
    per_neuron,
    quantized_param,
    require,
    weight_grid,
)
from aquatic.hw._dynapcnn_sim import STATE_BITS, WEIGHT_BITS, check_spec, simulate
from aquatic.nn import IAF
from aquatic.qconfig import QConfig
from aquatic.quantizers.shared import ScaleGroup, SharedScaleQuantizer

__all__ = ["STATE_BITS", "WEIGHT_BITS", "NUM_CORES", "check_spec", "export", "qconfig", "simulate"]

#: Cores of DYNAP-CNN (one layer each) and their memories (sinabs' ``get_constraints``).
NUM_CORES = 9
KERNEL_MEMORY = (16, 16, 16, 32, 32, 64, 64, 16, 16)
NEURON_MEMORY = (64, 64, 64, 32, 32, 16, 16, 16, 16)
_K = 1024


def qconfig(group: Optional[Any] = None, power_of_two: bool = True):
    """A QConfig that trains against DYNAP-CNN's constraints.

    Weights and biases are 8-bit and thresholds 16-bit, with one shared scale
    (:class:`~aquatic.quantizers.SharedScaleQuantizer`). A power-of-two scale (the
    default) keeps every membrane value exact in float32, so the fake-quant model and
    the integer chip spike identically. Each layer pair (convolution, ``IAF``) must
    share a scale: use one QConfig for the whole network, or one per pair.

    Args:
        group: the :class:`~aquatic.quantizers.ScaleGroup` to share; a new one if ``None``.
        power_of_two: restrict the shared scale to powers of two (for a new group).

    Example:
        >>> from aquatic.hw import dynapcnn
        >>> q = dynapcnn.qconfig()
        >>> q.weight.kwargs["bits"], q.bias.kwargs["bits"], q.threshold.kwargs["bits"]
        (8, 8, 16)
    """
    if group is None:
        group = ScaleGroup(power_of_two=power_of_two)
    elif not isinstance(group, ScaleGroup):
        raise TypeError(f"group must be an aquatic.quantizers.ScaleGroup, got {group!r}")
    pow2 = {"power_of_two": True} if group.power_of_two else {}
    shared = SharedScaleQuantizer.with_args(group=group, **pow2)
    return QConfig(
        weight=shared.with_args(bits=WEIGHT_BITS),
        bias=shared.with_args(bits=WEIGHT_BITS),
        threshold=shared.with_args(bits=STATE_BITS),
    )


def _single(value: Sequence[int], what: str, name: str) -> int:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    require(
        len(set(values)) == 1,
        f"layer {name!r}: DYNAP-CNN needs the same {what} on both axes, got {values}",
    )
    return int(values[0])


def _memory_check(
    name: str, weight: torch.Tensor, out_hw: Optional[Sequence[int]], index: int
) -> None:
    f = weight.shape[0]
    c = weight.shape[1]
    k2 = weight.shape[2] * weight.shape[3] if weight.dim() == 4 else 1
    kernel = c * 2 ** (math.ceil(math.log2(k2)) + math.ceil(math.log2(f)))
    require(
        kernel <= max(KERNEL_MEMORY) * _K,
        f"layer {name!r} needs {kernel} kernel memory entries; the largest DYNAP-CNN core has {max(KERNEL_MEMORY)}K",
    )
    if out_hw is not None:
        h, w = out_hw
        neurons = f * 2 ** (math.ceil(math.log2(max(h, 1))) + math.ceil(math.log2(max(w, 1))))
        require(
            neurons <= max(NEURON_MEMORY) * _K,
            f"layer {name!r} needs {neurons} neuron memory entries; the largest DYNAP-CNN core has {max(NEURON_MEMORY)}K",
        )


def _check_accumulator(name: str, weight, bias, threshold: int, low: int, events: int) -> None:
    """The membrane must stay below 2**15 in the worst step (``events`` per input each)."""
    dims = tuple(range(1, weight.dim()))
    up = (weight.clamp(min=0).sum(dims) * events + bias.clamp(min=0)).max()
    # Below, the membrane is clamped at threshold_low; only the upper side can overflow.
    if threshold - 1 + int(up) > 2 ** (STATE_BITS - 1) - 1:
        raise OverflowError(
            f"layer {name!r}: the 16-bit membrane accumulator can overflow in one step "
            f"(threshold {threshold}, largest input {int(up)} with up to {events} event(s) "
            "per input); scale the layer down"
        )


def export(
    model: nn.Module,
    input_shape: Optional[Sequence[int]] = None,
    max_input_spikes: int = 1,
) -> Dict[str, Any]:
    """The trained ``model`` as DYNAP-CNN layers (a spec for :func:`simulate`).

    ``model`` is ``(Conv2d or Linear) -> IAF`` repeated (an ``nn.Sequential``; ``Flatten``
    is allowed), quantized with :func:`qconfig`. Each pair shares one scale: the weight
    and bias codes are 8-bit, the threshold and ``min_v_mem`` (``threshold_low``) 16-bit.
    The ``IAF`` bias joins the convolution's bias.

    Args:
        model: the trained network.
        input_shape: ``(C, H, W)`` of one input step, to check each core's neuron memory.
        max_input_spikes: most events per input neuron and step, for the overflow check.

    Returns:
        dict: ``{"layers": [...]}``, each with ``weight``, ``bias``, ``threshold``,
        ``threshold_low``, ``reset``, ``max_spikes``, ``stride``, ``padding``, ``name``.

    Raises:
        DoesNotFitError: a layer type DYNAP-CNN lacks, a value off its grid or range, or
            a layer too large for a core (names the layer).
        OverflowError: a layer whose 16-bit membrane can overflow in one step.
    """
    refuse_shared_layers(model, "DYNAP-CNN export")
    layers = layer_sequence(model, "DYNAP-CNN")
    require(
        len(layers) % 2 == 0 and len(layers) // 2 <= NUM_CORES,
        f"DYNAP-CNN takes up to {NUM_CORES} (Conv2d or Linear) -> IAF pairs; got "
        + " -> ".join(f"{type(m).__name__} ({n})" for n, m in layers),
    )
    shape = tuple(input_shape) if input_shape is not None else None
    events = max_input_spikes
    spec: List[Dict[str, Any]] = []
    for index, ((syn_name, syn), (iaf_name, iaf)) in enumerate(zip(layers[::2], layers[1::2])):
        require(
            isinstance(syn, (nn.Conv2d, nn.Linear)),
            f"layer {syn_name!r} is a {type(syn).__name__}; DYNAP-CNN cores take Conv2d or Linear",
        )
        require(
            isinstance(iaf, IAF),
            f"layer {iaf_name!r} is a {type(iaf).__name__}; DYNAP-CNN neurons are integrate-and-fire (aquatic.nn.IAF)",
        )
        neurons = iaf.spec()
        require(
            not neurons.synaptic,
            f"layer {iaf_name!r}: DYNAP-CNN neurons have no synaptic current; drop tau_syn",
        )
        grid = weight_grid(syn, syn_name, "dynapcnn")
        entry: Dict[str, Any] = {"name": syn_name}
        n_out = syn.weight.shape[0]
        out_hw = None
        if isinstance(syn, nn.Conv2d):
            require(syn.groups == 1, f"layer {syn_name!r}: DYNAP-CNN has no grouped convolutions")
            require(
                _single(syn.dilation, "dilation", syn_name) == 1,
                f"layer {syn_name!r}: DYNAP-CNN has no dilation",
            )
            require(
                syn.padding_mode == "zeros" and not isinstance(syn.padding, str),
                f"layer {syn_name!r}: use numeric zero padding",
            )
            _single(syn.kernel_size, "kernel size", syn_name)
            entry["stride"] = _single(syn.stride, "stride", syn_name)
            entry["padding"] = _single(syn.padding, "padding", syn_name)
            if shape is not None and len(shape) == 3:
                k, s, p = syn.kernel_size[0], entry["stride"], entry["padding"]
                out_hw = tuple((size + 2 * p - k) // s + 1 for size in shape[1:])
                shape = (n_out, *out_hw)
        weight = on_grid(quantized_param(syn, "weight"), grid, f"{syn_name}.weight")
        bias = per_neuron(quantized_param(syn, "bias"), n_out, f"{syn_name}.bias")
        bias = bias + per_neuron(neurons.bias, n_out, f"{iaf_name}.bias")
        threshold = per_neuron(neurons.threshold, n_out, iaf_name)
        require(
            bool((threshold == threshold[0]).all()),
            f"layer {iaf_name!r}: DYNAP-CNN has one threshold per layer, got several",
        )
        low = (
            -(2 ** (STATE_BITS - 1)) * float(grid.scale)
            if neurons.min_v_mem is None
            else float(neurons.min_v_mem)
        )
        entry.update(
            weight=weight,
            bias=on_grid(bias, grid, f"{syn_name}.bias + {iaf_name}.bias"),
            threshold=int(on_grid(threshold[:1], grid, f"{iaf_name}.threshold")),
            threshold_low=int(on_grid(torch.tensor([low]), grid, f"{iaf_name}.min_v_mem")),
            reset=neurons.reset,
            max_spikes=neurons.max_spikes,
        )
        _memory_check(syn_name, weight, out_hw, index)
        spec.append(entry)
    try:
        checked = check_spec({"layers": spec})
    except DoesNotFitError as error:
        raise DoesNotFitError(f"the model does not fit DYNAP-CNN: {error}") from None
    for entry in checked:
        _check_accumulator(
            entry["name"],
            entry["weight"],
            entry["bias"],
            entry["threshold"],
            entry["threshold_low"],
            events,
        )
        events = entry["max_spikes"]
    return {"layers": spec}
