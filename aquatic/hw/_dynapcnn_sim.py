"""Integer simulation of SynSense DYNAP-CNN / Speck integrate-and-fire layers.

The reference is sinabs (``sinabs.backend.dynapcnn``): each core is a convolution (or
a dense layer) followed by integrate-and-fire neurons, with 8-bit weights and biases and
16-bit thresholds and membrane, all in one unit per layer (``discretize.py``). Per time
step, as sinabs' ``IAF`` computes it (``layers/functional/lif.py``, ``MultiSpike``):

.. math::

    v &= v + (W * s_{in}) + b \\\\
    n &= \\lfloor v / \\vartheta \\rfloor \\text{ if } v \\ge \\vartheta \\text{ else } 0
        \\quad(\\text{at most } n_{max} \\text{ if given}) \\\\
    v &= v - n \\vartheta \\;\\text{(subtract)}\\quad\\text{or}\\quad 0 \\text{ where } n > 0
        \\;\\text{(zero)} \\\\
    v &= \\max(v, \\vartheta_{low})

A membrane above the 16-bit range raises ``OverflowError`` naming the layer; below, it
is clamped at :math:`\\vartheta_{low} \\ge -2^{15}`.

A convolutional core can sum-pool its output spikes on the way to the next core
(sinabs' ``DynapcnnLayer``: convolution, then spiking, then pooling): square windows of
:data:`POOL_SIZES`, stride equal to the window, no padding; the next core receives the
window sums :math:`\\sum_{window} n`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from aquatic.functional.integer import int_range
from aquatic.hw._common import DoesNotFitError, as_int_tensor, check_range, spec_layers

__all__ = ["check_spec", "simulate", "WEIGHT_BITS", "STATE_BITS", "POOL_SIZES"]

WEIGHT_BITS = 8
STATE_BITS = 16
_W_LOW, _W_HIGH = int_range(WEIGHT_BITS)
_LOW, _HIGH = int_range(STATE_BITS)
RESETS = ("subtract", "zero")
#: Sum-pooling window sizes a core's output can take (square, stride = size).
POOL_SIZES = (1, 2, 4)


def _int_option(layer: Mapping[str, Any], key: str, default: int, name: str) -> int:
    value = layer.get(key, default)
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise DoesNotFitError(
                f"{name}.{key}={value}: DYNAP-CNN needs the same value on both axes"
            )
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}.{key} must be a non-negative int, got {value!r}")
    return value


def check_spec(spec: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Validate a DYNAP-CNN specification; a list of layers with ``int64`` tensors.

    Args:
        spec: ``{"layers": [layer, ...]}``; each layer has ``"weight"``, either
            ``(Cout, Cin, k, k)`` (convolution, square kernel; ``"stride"`` and
            ``"padding"`` ints, default 1 and 0; ``"pool"``, the sum pooling of its
            output spikes, one of :data:`POOL_SIZES`, default 1) or ``(Nout, Nin)``
            (dense), int8;
            ``"bias"`` ``(Cout,)`` int8 (default 0); ``"threshold"`` (1..32767) and
            ``"threshold_low"`` (default -32768), int16 scalars; ``"reset"``
            (``"subtract"`` or ``"zero"``); optional ``"max_spikes"`` and ``"name"``.

    Raises:
        TypeError, ValueError: malformed specification.
        DoesNotFitError: a value or a kernel DYNAP-CNN cannot represent.
    """
    checked = []
    for name, layer in spec_layers(spec, "DYNAP-CNN"):
        weight = as_int_tensor(layer.get("weight"), f"{name}.weight")
        if weight.dim() not in (2, 4):
            raise ValueError(
                f"{name}.weight must be (Cout, Cin, k, k) or (Nout, Nin), got {tuple(weight.shape)}"
            )
        if weight.dim() == 4 and weight.shape[2] != weight.shape[3]:
            raise DoesNotFitError(
                f"{name}: DYNAP-CNN kernels are square, got {tuple(weight.shape[2:])}"
            )
        check_range(weight, f"{name}.weight", _W_LOW, _W_HIGH, "8-bit weights")
        n_out = weight.shape[0]
        bias = layer.get("bias")
        bias = (
            torch.zeros(n_out, dtype=torch.int64)
            if bias is None
            else as_int_tensor(bias, f"{name}.bias", (n_out,))
        )
        check_range(bias, f"{name}.bias", _W_LOW, _W_HIGH, "8-bit biases")
        threshold = int(as_int_tensor(layer.get("threshold"), f"{name}.threshold", ()))
        low = int(as_int_tensor(layer.get("threshold_low", _LOW), f"{name}.threshold_low", ()))
        check_range(torch.tensor([threshold]), f"{name}.threshold", 1, _HIGH, "16-bit state")
        check_range(
            torch.tensor([low]), f"{name}.threshold_low", _LOW, threshold, "16-bit, below threshold"
        )
        reset = layer.get("reset", "subtract")
        if reset not in RESETS:
            raise ValueError(f"{name}.reset must be one of {RESETS}, got {reset!r}")
        max_spikes = layer.get("max_spikes")
        if max_spikes is not None and (
            isinstance(max_spikes, bool) or not isinstance(max_spikes, int) or max_spikes < 1
        ):
            raise ValueError(f"{name}.max_spikes must be None or an int >= 1, got {max_spikes!r}")
        pool = _int_option(layer, "pool", 1, name)
        if pool not in POOL_SIZES:
            raise DoesNotFitError(
                f"{name}.pool={pool}: DYNAP-CNN sum-pools over {POOL_SIZES} (square windows)"
            )
        if pool > 1 and weight.dim() != 4:
            raise DoesNotFitError(f"{name}: only convolutional layers pool their output")
        checked.append(
            {
                "name": name,
                "pool": pool,
                "weight": weight,
                "bias": bias,
                "threshold": threshold,
                "threshold_low": low,
                "reset": reset,
                "max_spikes": max_spikes,
                "stride": _int_option(layer, "stride", 1, name),
                "padding": _int_option(layer, "padding", 0, name),
            }
        )
    return checked


def _drive(layer: Dict[str, Any], spikes: Tensor) -> Tensor:
    # float64 holds every sum of products of 8-bit weights and spike counts exactly.
    weight = layer["weight"].double()
    x = spikes.double()
    if weight.dim() == 4:
        if x.dim() != 4:
            raise ValueError(
                f"{layer['name']} is a convolution and needs (C, H, W) inputs per step, got {tuple(x.shape[1:])}"
            )
        out = F.conv2d(x, weight, stride=layer["stride"], padding=layer["padding"])
        bias = layer["bias"].view(1, -1, 1, 1)
    else:
        out = x.flatten(1) @ weight.T
        bias = layer["bias"].view(1, -1)
    return out.round().to(torch.int64) + bias


def _sum_pool(counts: Tensor, size: int) -> Tensor:
    if size == 1:
        return counts
    # Window sums of spike counts: exact in float64.
    summed = F.avg_pool2d(counts.double(), size, size, divisor_override=1)
    return summed.round().to(torch.int64)


def simulate(spec: Mapping[str, Any], spikes: Any, record: bool = False) -> Union[Tensor, tuple]:
    """Run a DYNAP-CNN specification on input spike counts.

    Args:
        spec: see :func:`check_spec`, e.g. from :func:`aquatic.hw.dynapcnn.export`.
        spikes: non-negative spike counts ``(N, T, C, H, W)`` (or ``(N, T, F)`` when
            the first layer is dense).
        record: also return each layer's spikes (before its pooling) and membrane
            (after the reset).

    Returns:
        Tensor: spikes of the last layer, ``(N, T, *)`` (``int64``); with ``record``,
        also a list with one dict (``"spikes"``, ``"v_mem"``) per layer.

    Raises:
        OverflowError: a membrane outside the 16-bit range (names the layer and step).
    """
    layers = check_spec(spec)
    x = as_int_tensor(spikes, "spikes")
    if x.dim() < 3:
        raise ValueError(f"spikes must be (N, T, ...) spike counts, got shape {tuple(x.shape)}")
    if x.numel() and int(x.min()) < 0:
        raise ValueError("spikes holds spike counts, which cannot be negative")
    n_steps = x.shape[1]
    v_mem: List[Any] = [None] * len(layers)
    traces = [{"spikes": [], "v_mem": []} for _ in layers]
    outputs = []
    for t in range(n_steps):
        s = x[:, t]
        for k, layer in enumerate(layers):
            drive = _drive(layer, s)
            v = drive if v_mem[k] is None else v_mem[k] + drive
            # Below, the membrane saturates at threshold_low; above, it would overflow.
            if v.numel() and int(v.max()) > _HIGH:
                raise OverflowError(
                    f"{layer['name']}: the membrane left the 16-bit range at time step {t} "
                    f"(reached {int(v.abs().max())}); scale the layer's weights, bias and "
                    "threshold down"
                )
            threshold = layer["threshold"]
            count = torch.where(
                v >= threshold, torch.div(v, threshold, rounding_mode="floor"), torch.zeros_like(v)
            )
            if layer["max_spikes"] is not None:
                count = count.clamp(max=layer["max_spikes"])
            if layer["reset"] == "subtract":
                v = v - count * threshold
            else:
                v = torch.where(count > 0, torch.zeros_like(v), v)
            v = v.clamp(min=layer["threshold_low"])
            v_mem[k] = v
            s = _sum_pool(count, layer["pool"])
            if record:
                traces[k]["spikes"].append(count)
                traces[k]["v_mem"].append(v)
        outputs.append(s)
    if not outputs:
        raise ValueError("spikes has no time steps (T = 0)")
    output = torch.stack(outputs, 1)
    if not record:
        return output
    return output, [{key: torch.stack(v, 1) for key, v in trace.items()} for trace in traces]
