"""Integer simulation of Intel Loihi's CUBA neuron, as lava-nc's bit-accurate models compute it.

The arithmetic is that of lava-nc 0.10's bit-accurate process models of the chip: the
LIF neuron ``PyLifModelBitAcc`` (``lava/proc/lif/models.py``, its ``subthr_dynamics``)
fed by the Dense connection ``PyDenseModelBitAcc`` (``lava/proc/dense/models.py``), the
models that ``Loihi2SimCfg(select_tag="fixed_pt")`` runs and that lava-dl's netx
networks are built from. A specification holds the chip's register values: weights
:math:`w` (even integers ``-256..254``, i.e. lava-dl's grid of 2/64 in real units),
thresholds :math:`\\vartheta` (the 17-bit ``vth`` mantissa, units of 1/64), bias
mantissas :math:`b` (13 bits, exponent 6, units of 1/64) and the 12-bit decays
:math:`d_u` (``current_decay``, 1..4096; lava-nc stores ``du = d_u - 1``) and
:math:`d_v` (``voltage_decay``, 0..4095). The states :math:`u, v` are 24-bit integers
in units of 1/4096 (weights, biases and thresholds are shifted left by 6 bits into
them). For each layer and time step:

.. math::

    u[t] &= \\mathrm{wrap}_{24}\\Big(\\mathrm{rtz}\\big(u[t-1]\\,(4096 - d_u) / 2^{12}\\big)
        + 2^6 \\sum_j w_{ij}\\, s_j[t-1]\\Big) \\\\
    v[t] &= \\mathrm{clip}\\Big(\\mathrm{rtz}\\big(v[t-1]\\,(4096 - d_v) / 2^{12}\\big)
        + u[t] + 2^6 b,\\; \\pm(2^{23} - 1)\\Big) \\\\
    s[t] &= v[t] > 2^6 \\vartheta, \\qquad v[t] \\leftarrow 0 \\text{ where } s[t]

with :math:`\\mathrm{rtz}` rounding toward zero
(:func:`aquatic.functional.integer.multiplicative_decay`); :math:`\\mathrm{wrap}_{24}`
is lava-nc's wrapping of the current (a value above :math:`2^{23}` loses
:math:`2^{24}`, one at or below :math:`-2^{23}` gains it). Timing: a connection
delivers the spikes of step :math:`t - 1` (lava-nc's Dense sends the sum it
accumulated in the step before), so every layer, the first included, sees its input
one step late; the bias enters from step 0.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Union

import torch
from torch import Tensor

from aquatic.functional.integer import multiplicative_decay
from aquatic.hw._common import (
    DoesNotFitError,
    as_int_tensor,
    check_range,
    check_spikes,
    spec_layers,
)

__all__ = [
    "check_spec",
    "simulate",
    "W_SCALE",
    "DECAY_BITS",
    "STATE_BITS",
    "STATE_SHIFT",
    "THRESHOLD_MAX",
    "BIAS_MIN",
    "BIAS_MAX",
    "V_MAX",
]

#: Real units per weight step of 1 (lava-dl's ``w_scale``): registers are in 1/64.
W_SCALE = 64
#: Precision of the decays ``du``/``dv``.
DECAY_BITS = 12
#: Width of the current and voltage states.
STATE_BITS = 24
#: Bits by which weights, biases and thresholds are shifted into the state units (1/4096).
STATE_SHIFT = 6
WEIGHT_STEP = 2
WEIGHT_MIN, WEIGHT_MAX = -256, 254
#: Largest threshold mantissa ``vth`` (17 bits, unsigned).
THRESHOLD_MAX = 2**17 - 1
#: Range of the 13-bit bias mantissa (exponent 6, as lava-dl's netx writes it).
BIAS_MIN, BIAS_MAX = -(2**12), 2**12 - 1
#: The voltage saturates at plus or minus this value (state units).
V_MAX = 2 ** (STATE_BITS - 1) - 1
_U_LIMIT = 2 ** (STATE_BITS - 1)


def _per_neuron(layer: Mapping[str, Any], key: str, size: int, name: str, default=None) -> Tensor:
    value = layer.get(key, default)
    if value is None:
        raise ValueError(f"{name} lacks {key!r}")
    tensor = as_int_tensor(value, f"{name}.{key}")
    if tensor.dim() == 0:
        tensor = tensor.expand(size).clone()
    if tuple(tensor.shape) != (size,):
        raise ValueError(
            f"{name}.{key} must be a scalar or have shape ({size},), got {tuple(tensor.shape)}"
        )
    return tensor


def check_spec(spec: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Validate a Loihi specification; a list of layers of ``int64`` tensors.

    Args:
        spec: ``{"layers": [layer, ...]}``, each layer a mapping with ``"weight"``
            ``(Nout, Nin)`` (even integers in -256..254, units of 1/64),
            ``"current_decay"`` (1..4096; the chip's 12-bit ``du`` holds it less one),
            ``"voltage_decay"`` (0..4095, the 12-bit ``dv``), both scalar or ``(Nout,)``,
            ``"threshold"`` (the 17-bit mantissa ``vth``, 0..131071, units of 1/64),
            optionally ``"bias"`` (the 13-bit mantissa, -4096..4095, units of 1/64) and
            ``"name"``.

    Returns:
        list: one dict per layer with the same keys, every value an ``int64`` tensor.

    Raises:
        TypeError, ValueError: malformed specification.
        DoesNotFitError: a value outside the chip's field (names the field, the value and
            the limit).

    Example:
        >>> layers = check_spec({"layers": [{"weight": [[64]], "current_decay": 4096,
        ...     "voltage_decay": 0, "threshold": 100}]})
        >>> layers[0]["bias"], layers[0]["current_decay"]
        (tensor([0]), tensor([4096]))
        >>> check_spec({"layers": [{"weight": [[64]], "current_decay": 4096,
        ...     "voltage_decay": 4096, "threshold": 100}]})
        Traceback (most recent call last):
        ...
        aquatic.hw._common.DoesNotFitError: layers[0].voltage_decay holds 4096, outside the range 0..4095 (12-bit dv)
    """
    checked = []
    previous = None
    for name, layer in spec_layers(spec, "Loihi CUBA"):
        weight = as_int_tensor(layer.get("weight"), f"{name}.weight", (None, None))
        n_out, n_in = weight.shape
        if previous is not None and n_in != previous:
            raise ValueError(
                f"{name}.weight takes {n_in} inputs, but the layer before has {previous} neurons"
            )
        check_range(weight, f"{name}.weight", WEIGHT_MIN, WEIGHT_MAX, "8-bit weights, step 2")
        if bool((weight % WEIGHT_STEP != 0).any()):
            raise DoesNotFitError(
                f"{name}.weight holds odd values; Loihi's 8-bit weights have a step of 2"
            )
        entry = {"name": name, "weight": weight}
        limits = {
            "current_decay": (1, 2**DECAY_BITS, "12-bit du = current_decay - 1"),
            "voltage_decay": (0, 2**DECAY_BITS - 1, "12-bit dv"),
            "threshold": (0, THRESHOLD_MAX, "17-bit vth mantissa"),
            "bias": (BIAS_MIN, BIAS_MAX, "13-bit bias mantissa at exponent 6"),
        }
        for key, (low, high, what) in limits.items():
            value = _per_neuron(layer, key, n_out, name, 0 if key == "bias" else None)
            entry[key] = check_range(value, f"{name}.{key}", low, high, what)
        checked.append(entry)
        previous = n_out
    return checked


def _wrap_current(u: Tensor) -> Tensor:
    # lava-nc's rule, including its asymmetry: 2**23 stays, -2**23 becomes 2**23.
    u = torch.where(u > _U_LIMIT, u - 2 * _U_LIMIT, u)
    return torch.where(u <= -_U_LIMIT, u + 2 * _U_LIMIT, u)


def simulate(spec: Mapping[str, Any], spikes: Any, record: bool = False) -> Union[Tensor, tuple]:
    """Run a Loihi CUBA specification on binary input spikes, as the chip computes it.

    See the module docstring for the arithmetic and the timing (one step of delay per
    connection, the input's included).

    Args:
        spec: see :func:`check_spec`, e.g. from :func:`aquatic.hw.loihi.export`.
        spikes: input spikes, 0 or 1, ``(N, T, Nin)``.
        record: also return each layer's spikes, currents and voltages.

    Returns:
        Tensor: spikes of the last layer ``(N, T, Nout)`` (``int64``); with ``record``,
        also a list with one dict per layer: ``"spikes"``, ``"current"`` and
        ``"voltage"`` ``(N, T, Nout)``, the states in units of 1/4096 after each step
        (the voltage after the reset), as lava-nc's ``LIF.u`` and ``LIF.v`` read.

    Example:
        >>> layer = {"weight": [[64]], "current_decay": 4096, "voltage_decay": 0,
        ...     "threshold": 150}
        >>> out, rec = simulate({"layers": [layer]}, torch.ones(1, 4, 1, dtype=torch.long), record=True)
        >>> out.flatten().tolist(), rec[0]["voltage"].flatten().tolist()
        ([0, 0, 0, 1], [0, 4096, 8192, 0])
    """
    layers = check_spec(spec)
    x = check_spikes(spikes, layers[0]["weight"].shape[1])
    if x.numel() and int(x.max()) > 1:
        raise ValueError("Loihi spikes are binary: spikes must hold 0 or 1")
    n_batch, n_steps, _ = x.shape
    unit = 2**STATE_SHIFT
    states = [(torch.zeros(n_batch, l["weight"].shape[0], dtype=torch.int64),) * 2 for l in layers]
    # What each connection delivers at the next step (lava-nc's Dense buffer).
    buffers = [torch.zeros(n_batch, l["weight"].shape[0], dtype=torch.int64) for l in layers]
    traces = [{"spikes": [], "current": [], "voltage": []} for _ in layers]
    outputs = []
    for t in range(n_steps):
        s = x[:, t]
        for k, layer in enumerate(layers):
            u, v = states[k]
            delivered, buffers[k] = buffers[k], s @ layer["weight"].T
            u = _wrap_current(multiplicative_decay(u, layer["current_decay"]) + unit * delivered)
            v = multiplicative_decay(v, layer["voltage_decay"]) + u + unit * layer["bias"]
            v = v.clamp(-V_MAX, V_MAX)
            s = (v > unit * layer["threshold"]).to(torch.int64)
            v = v * (1 - s)
            if record:
                for key, value in (("spikes", s), ("current", u), ("voltage", v)):
                    traces[k][key].append(value)
            states[k] = (u, v)
        outputs.append(s)
    n_out = layers[-1]["weight"].shape[0]
    output = (
        torch.stack(outputs, 1) if outputs else torch.zeros(n_batch, 0, n_out, dtype=torch.int64)
    )
    if not record:
        return output
    recorded = [
        {key: torch.stack(v, 1) if v else None for key, v in trace.items()} for trace in traces
    ]
    return output, recorded
