"""Integer simulation of Intel Loihi's CUBA neuron, as lava-dl trains for it.

The arithmetic is lava-dl's fixed-point CUBA (``lava.lib.dl.slayer.neuron.cuba`` and
its leaky integrator, ``slayer/neuron/dynamics/leaky_integrator.py``), in state units
of :math:`1/64` (lava-dl's ``w_scale``). For each layer and time step:

.. math::

    u[t] &= \\mathrm{rtz}\\big(u[t-1]\\,(4096 - d_u) / 2^{12}\\big) + \\sum_j w_{ij}\\, s_j[t] \\\\
    v[t] &= \\mathrm{rtz}\\big(v[t-1]\\,(4096 - d_v) / 2^{12}\\big) + u[t] + b \\\\
    s[t] &= v[t] \\ge \\vartheta, \\qquad v[t] \\leftarrow 0 \\text{ where } s[t]

with :math:`\\mathrm{rtz}` rounding toward zero
(:func:`aquatic.functional.integer.multiplicative_decay`), 12-bit decays
:math:`d_u, d_v \\in 0..4096` (:math:`\\alpha = 1 - d/4096`), weights on lava-dl's grid
(even integers :math:`-256..254`, i.e. a step of 2/64 in real units: 8 bits) and
thresholds ``int(theta * 64)``. Note that, unlike aquatic's ``LIF`` with ``tau_syn``,
the current decays *before* the input is added; ``d_u = 4096`` gives
:math:`u[t] = x[t]`. Layers are chained within one time step, as in lava-dl. States are
24-bit on the chip: a state outside that range raises ``OverflowError`` naming the
layer, rather than wrapping as the chip would.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Union

import torch
from torch import Tensor

from aquatic.functional.integer import int_range, multiplicative_decay
from aquatic.hw._common import (
    DoesNotFitError,
    as_int_tensor,
    check_range,
    check_spikes,
    spec_layers,
)

__all__ = ["check_spec", "simulate", "W_SCALE", "DECAY_BITS", "STATE_BITS"]

#: State units per real unit (lava-dl's ``w_scale``).
W_SCALE = 64
#: Precision of the decays ``du``/``dv``.
DECAY_BITS = 12
#: Width of the current and voltage states.
STATE_BITS = 24
WEIGHT_STEP = 2
WEIGHT_MIN, WEIGHT_MAX = -256, 254
_LOW, _HIGH = int_range(STATE_BITS)


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
            ``(Nout, Nin)`` (even integers in -256..254, state units),
            ``"current_decay"`` and ``"voltage_decay"`` (0..4096, scalar or
            ``(Nout,)``), ``"threshold"`` (1..2**23-1) and optionally ``"bias"``
            (state units) and ``"name"``.

    Raises:
        TypeError, ValueError: malformed specification.
        DoesNotFitError: a value that Loihi cannot represent.
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
        for key in ("current_decay", "voltage_decay"):
            entry[key] = check_range(
                _per_neuron(layer, key, n_out, name),
                f"{name}.{key}",
                0,
                2**DECAY_BITS,
                "12-bit decay",
            )
        entry["threshold"] = check_range(
            _per_neuron(layer, "threshold", n_out, name),
            f"{name}.threshold",
            1,
            _HIGH,
            "24-bit state",
        )
        entry["bias"] = check_range(
            _per_neuron(layer, "bias", n_out, name, 0), f"{name}.bias", _LOW, _HIGH, "24-bit state"
        )
        checked.append(entry)
        previous = n_out
    return checked


def _check_state(state: Tensor, layer: str, what: str, step: int) -> None:
    if state.numel() and (int(state.max()) > _HIGH or int(state.min()) < _LOW):
        raise OverflowError(
            f"{layer}: the {what} left Loihi's 24-bit range at time step {step} "
            f"(reached {int(state.abs().max())}); scale the weights or thresholds down"
        )


def simulate(spec: Mapping[str, Any], spikes: Any, record: bool = False) -> Union[Tensor, tuple]:
    """Run a Loihi CUBA specification on binary input spikes.

    Args:
        spec: see :func:`check_spec`, e.g. from :func:`aquatic.hw.loihi.export`.
        spikes: input spikes, 0 or 1, ``(N, T, Nin)``.
        record: also return each layer's spikes, currents and voltages.

    Returns:
        Tensor: spikes of the last layer ``(N, T, Nout)`` (``int64``); with ``record``,
        also a list with one dict (``"spikes"``, ``"current"``, ``"voltage"``) per layer.

    Raises:
        OverflowError: a current or voltage outside the 24-bit range (names the layer).
    """
    layers = check_spec(spec)
    x = check_spikes(spikes, layers[0]["weight"].shape[1])
    if x.numel() and int(x.max()) > 1:
        raise ValueError("Loihi spikes are binary: spikes must hold 0 or 1")
    n_batch, n_steps, _ = x.shape
    states = [(torch.zeros(n_batch, l["weight"].shape[0], dtype=torch.int64),) * 2 for l in layers]
    traces = [{"spikes": [], "current": [], "voltage": []} for _ in layers]
    outputs = []
    for t in range(n_steps):
        s = x[:, t]
        for k, layer in enumerate(layers):
            u, v = states[k]
            u = multiplicative_decay(u, layer["current_decay"], DECAY_BITS) + s @ layer["weight"].T
            _check_state(u, layer["name"], "current", t)
            v = multiplicative_decay(v, layer["voltage_decay"], DECAY_BITS) + u + layer["bias"]
            _check_state(v, layer["name"], "voltage", t)
            s = (v >= layer["threshold"]).to(torch.int64)
            if record:
                for key, value in (("spikes", s), ("current", u), ("voltage", v)):
                    traces[k][key].append(value)
            states[k] = (u, v * (1 - s))
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
