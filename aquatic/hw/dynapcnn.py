"""SynSense DYNAP-CNN / Speck: QAT preset, integer simulator and export.

Each core is a convolution (or dense layer) followed by integrate-and-fire neurons;
weights and biases are 8-bit and thresholds and membranes 16-bit, all in one unit per
layer, as sinabs' ``discretize_conv_spike`` maps them. See
:mod:`aquatic.hw._dynapcnn_sim` for the arithmetic of :func:`simulate`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

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
from aquatic.hw._dynapcnn_sim import POOL_SIZES, STATE_BITS, WEIGHT_BITS, check_spec, simulate
from aquatic.nn import IAF
from aquatic.ptq.chip_budget import ChipBudget
from aquatic.qconfig import QConfig
from aquatic.quantizers.shared import ScaleGroup, SharedScaleQuantizer

__all__ = [
    "STATE_BITS",
    "WEIGHT_BITS",
    "NUM_CORES",
    "POOL_SIZES",
    "budget",
    "check_spec",
    "export",
    "qconfig",
    "simulate",
]

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


def _is_pool(module: nn.Module) -> bool:
    # aquatic.nn.SumPool2d is an LPPool2d; aquatic.interop.nir.SumPool2d is named so.
    return isinstance(module, (nn.AvgPool2d, nn.LPPool2d)) or type(module).__name__ == "SumPool2d"


def _pool(name: str, module: nn.Module) -> Tuple[int, int]:
    """``(window, divisor)`` of a pooling layer DYNAP-CNN can run: sum pooling
    (divisor 1), or average pooling (divisor: the window area), square, stride equal
    to the window, no padding."""
    kind = type(module).__name__
    if isinstance(module, nn.LPPool2d):
        require(
            module.norm_type == 1,
            f"layer {name!r} ({kind}) has norm_type={module.norm_type}; DYNAP-CNN sum-pools "
            "(norm_type=1)",
        )
    window = _single(module.kernel_size, "pooling window", name)
    stride = _single(module.stride if module.stride else window, "pooling stride", name)
    require(
        stride == window,
        f"layer {name!r} ({kind}): DYNAP-CNN pools non-overlapping windows; use stride="
        f"{window} (the window), got {stride}",
    )
    require(
        _single(getattr(module, "padding", 0), "padding", name) == 0,
        f"layer {name!r} ({kind}): DYNAP-CNN pools without padding",
    )
    require(
        not getattr(module, "ceil_mode", False),
        f"layer {name!r} ({kind}): DYNAP-CNN drops partial windows; use ceil_mode=False",
    )
    quantizers = getattr(module, "quantizers", {})
    require(
        "activation" not in quantizers,
        f"layer {name!r} ({kind}) quantizes its output; DYNAP-CNN pools spike counts as "
        "they are: build it with qconfig=None",
    )
    divisor = 1
    if isinstance(module, nn.AvgPool2d):
        divisor = module.divisor_override or window * window
    return window, divisor


def _cores(layers: List[Tuple[str, nn.Module]]) -> List[Tuple[Any, Any, List[Any]]]:
    """``(synapse, neurons, poolings)`` per core: ``(name, module)`` pairs."""
    got = " -> ".join(f"{type(m).__name__} ({n})" for n, m in layers)
    shape = (
        f"DYNAP-CNN takes up to {NUM_CORES} cores of (Conv2d or Linear) -> IAF, each "
        f"optionally followed by sum or average pooling; got {got}"
    )
    cores: List[Tuple[Any, Any, List[Any]]] = []
    index = 0
    while index < len(layers):
        name, module = layers[index]
        require(
            isinstance(module, (nn.Conv2d, nn.Linear)),
            f"layer {name!r} is a {type(module).__name__}; DYNAP-CNN cores take Conv2d or "
            "Linear, then IAF, then optionally sum or average pooling",
        )
        require(index + 1 < len(layers), shape)
        synapse, neurons = layers[index], layers[index + 1]
        index += 2
        pools = []
        while index < len(layers) and _is_pool(layers[index][1]):
            pools.append(layers[index])
            index += 1
        cores.append((synapse, neurons, pools))
    require(len(cores) <= NUM_CORES, shape)
    return cores


def export(
    model: nn.Module,
    input_shape: Optional[Sequence[int]] = None,
    max_input_spikes: int = 1,
) -> Dict[str, Any]:
    """The trained ``model`` as DYNAP-CNN layers (a spec for :func:`simulate`).

    ``model`` is ``(Conv2d or Linear) -> IAF`` repeated (an ``nn.Sequential``; ``Flatten``
    is allowed), quantized with :func:`qconfig`, each ``IAF`` optionally followed by
    pooling (convolutional cores only). Each pair shares one scale: the weight and bias
    codes are 8-bit, the threshold and ``min_v_mem`` (``threshold_low``) 16-bit. The
    ``IAF`` bias joins the convolution's bias.

    Pooling: the chip sums its output spikes over square windows of
    :data:`POOL_SIZES` (stride equal to the window, no padding) on the way to the next
    core. Sum pooling (:class:`aquatic.nn.SumPool2d`) is that; consecutive pooling
    layers multiply their windows. Average pooling over a window of area :math:`A` is
    sum pooling with the next core's bias, threshold and ``min_v_mem`` multiplied by
    :math:`A` (its membrane is then :math:`A` times the model's, and it spikes at the
    same steps), so it fits where those stay within 8 and 16 bits; after the last
    core it would give fractions of spikes, which the chip lacks.

    Args:
        model: the trained network.
        input_shape: ``(C, H, W)`` of one input step, to check each core's neuron memory.
        max_input_spikes: most events per input neuron and step, for the overflow check.

    Returns:
        dict: ``{"layers": [...]}``, each with ``weight``, ``bias``, ``threshold``,
        ``threshold_low``, ``reset``, ``max_spikes``, ``stride``, ``padding``, ``pool``,
        ``name``.

    Raises:
        DoesNotFitError: a layer type DYNAP-CNN lacks, a value off its grid or range, or
            a layer too large for a core (names the layer).
        OverflowError: a layer whose 16-bit membrane can overflow in one step.
    """
    refuse_shared_layers(model, "DYNAP-CNN export")
    layers = layer_sequence(model, "DYNAP-CNN")
    shape = tuple(input_shape) if input_shape is not None else None
    events = max_input_spikes
    spec: List[Dict[str, Any]] = []
    scale_up, pooled_by = 1, ""  # average pooling before this core: its area, its name
    for index, ((syn_name, syn), (iaf_name, iaf), pools) in enumerate(_cores(layers)):
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
        window, divisor = 1, 1
        for pool_name, pool in pools:
            size, area = _pool(pool_name, pool)
            window, divisor = window * size, divisor * area
        if pools:
            names = ", ".join(repr(n) for n, _ in pools)
            require(
                isinstance(syn, nn.Conv2d),
                f"layer {names} pools the output of the dense layer {syn_name!r}; DYNAP-CNN "
                "pools convolutional cores only",
            )
            require(
                window in POOL_SIZES,
                f"layer {names} pools over {window}x{window} windows; DYNAP-CNN pools over "
                f"{', '.join(f'{p}x{p}' for p in POOL_SIZES)}",
            )
            if shape is not None and len(shape) == 3:
                shape = (shape[0], shape[1] // window, shape[2] // window)
        weight = on_grid(quantized_param(syn, "weight"), grid, f"{syn_name}.weight")
        bias = per_neuron(quantized_param(syn, "bias"), n_out, f"{syn_name}.bias")
        bias = bias + per_neuron(neurons.bias, n_out, f"{iaf_name}.bias")
        threshold = per_neuron(neurons.threshold, n_out, iaf_name)
        require(
            bool((threshold == threshold[0]).all()),
            f"layer {iaf_name!r}: DYNAP-CNN has one threshold per layer, got several",
        )
        bias = on_grid(bias, grid, f"{syn_name}.bias + {iaf_name}.bias") * scale_up
        threshold = int(on_grid(threshold[:1], grid, f"{iaf_name}.threshold")) * scale_up
        if neurons.min_v_mem is None:
            low = -(2 ** (STATE_BITS - 1))  # no floor in the model: the chip's range
        else:
            floor = torch.tensor([float(neurons.min_v_mem)])
            low = int(on_grid(floor, grid, f"{iaf_name}.min_v_mem")) * scale_up
        if scale_up > 1:
            _check_scaled(syn_name, iaf_name, pooled_by, scale_up, bias, threshold, low)
        entry.update(
            weight=weight,
            bias=bias,
            threshold=threshold,
            threshold_low=low,
            reset=neurons.reset,
            max_spikes=neurons.max_spikes,
            pool=window,
        )
        _memory_check(syn_name, weight, out_hw, index)
        spec.append(entry)
        scale_up, pooled_by = divisor, ", ".join(repr(n) for n, _ in pools)
    require(
        scale_up == 1,
        f"layer {pooled_by} averages the last core's spikes into fractions, which DYNAP-CNN "
        "lacks; use sum pooling (aquatic.nn.SumPool2d) there",
    )
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
        if events is not None:  # a pooled input sums the spikes of a window
            events *= entry["pool"] ** 2
    return {"layers": spec}


def _check_scaled(syn_name, iaf_name, pooled_by, area, bias, threshold, low) -> None:
    """Average pooling before a core multiplies its bias and thresholds: they must fit."""
    fix = (
        f"layer {pooled_by} averages over windows of area {area}, which DYNAP-CNN runs as "
        f"sum pooling with the bias and thresholds of the next core times {area}"
    )
    limit = 2 ** (WEIGHT_BITS - 1)
    require(
        bool(bias.abs().max() < limit) if bias.numel() else True,
        f"{fix}; {syn_name}.bias then reaches {int(bias.abs().max())}, beyond 8 bits: use "
        "sum pooling (aquatic.nn.SumPool2d) and train with it, or a smaller bias",
    )
    require(
        threshold < 2 ** (STATE_BITS - 1) and low >= -(2 ** (STATE_BITS - 1)),
        f"{fix}; {iaf_name}.threshold then reaches {threshold} (min_v_mem {low}), beyond 16 "
        "bits: use sum pooling (aquatic.nn.SumPool2d) and train with it, or a smaller threshold",
    )


def budget(input_shape: Optional[Sequence[int]] = None, max_input_spikes: int = 1) -> ChipBudget:
    """DYNAP-CNN as the budget of :func:`aquatic.mixed_precision` (``budget=dynapcnn``).

    Weights of 2 to 8 bits, each core on its ``IAF``'s shared scale (from
    :func:`qconfig`), checked by ``export(model, input_shape, max_input_spikes)``
    (cores, kernel and neuron memory, ranges, accumulator overflow); see
    :class:`aquatic.ptq.ChipBudget`. The synapse layers analysed are the model's float
    ``Linear`` and ``Conv2d`` layers: in a spiking convolutional network on
    ``(N, T, C, H, W)``, ``aquatic.nn.Conv2d`` built with ``qconfig=None`` (it runs each
    time step); give ``input_shape`` for the neuron-memory check of each core.

    Example:
        >>> from aquatic.hw import dynapcnn
        >>> dynapcnn.budget(input_shape=(2, 16, 16)).max_bits
        8
    """
    return ChipBudget(
        "DYNAP-CNN",
        check=lambda model: export(model, input_shape, max_input_spikes),
        weight_qconfig=per_tensor_weights,
        max_bits=WEIGHT_BITS,
    )
