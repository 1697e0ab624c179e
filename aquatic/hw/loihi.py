"""Intel Loihi (CUBA neurons, as lava-dl trains them): QAT preset, simulator and export.

States are integers in units of 1/64 (lava-dl's ``w_scale``): weights lie on a grid of
2/64 with 8 bits (-4 .. 3.97), thresholds are ``theta * 64``, and the 12-bit decays
``du``/``dv`` give :math:`\\alpha = 1 - d / 4096`. See :mod:`aquatic.hw._loihi_sim` for
the arithmetic of :func:`simulate`.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from aquatic.hw._common import (
    DoesNotFitError,
    grid_codes,
    layer_sequence,
    per_neuron,
    quantized_param,
    require,
)
from aquatic.hw._loihi_sim import DECAY_BITS, STATE_BITS, W_SCALE, check_spec, simulate

__all__ = ["DECAY_BITS", "STATE_BITS", "W_SCALE", "check_spec", "export", "qconfig", "simulate"]


def qconfig():
    """A QConfig that trains against Loihi's grids (lava-dl's conventions).

    Weights: 8 bits with a fixed step of 2/64; biases and thresholds: 16 bits on a grid
    of 1/64; ``tau``/``alpha``: 12-bit uniform decays
    (:class:`~aquatic.quantizers.UniformDecay`, :math:`\\alpha = 1 - d/4096`).

    Example:
        >>> from aquatic.hw import loihi
        >>> q = loihi.qconfig()
        >>> q.weight.kwargs["scale"], q.alpha.kwargs["bits"]
        (0.03125, 12)
    """
    from aquatic.qconfig import QConfig
    from aquatic.quantizers.decay import UniformDecay
    from aquatic.quantizers.uniform import UniformQuantizer

    step = 1.0 / W_SCALE
    return QConfig(
        weight=UniformQuantizer.with_args(bits=8, scale=2 * step),
        bias=UniformQuantizer.with_args(bits=16, scale=step),
        threshold=UniformQuantizer.with_args(bits=16, signed=False, scale=step),
        tau=UniformDecay.with_args(bits=DECAY_BITS, param="tau"),
        alpha=UniformDecay.with_args(bits=DECAY_BITS, param="alpha"),
    )


def _decay_code(alpha, size: int, name: str) -> torch.Tensor:
    """``d = (1 - alpha) * 4096`` as integers, or a clear error."""
    if alpha is None:
        return torch.full((size,), 2**DECAY_BITS, dtype=torch.int64)
    leak = 1.0 - per_neuron(alpha, size, name)
    return grid_codes(leak, 2.0**-DECAY_BITS, f"{name} (as 1 - alpha)")


def export(model: nn.Module) -> Dict[str, Any]:
    """The trained ``model`` as Loihi CUBA layers (a spec for :func:`simulate`).

    ``model`` is ``Linear -> LIF`` repeated (an ``nn.Sequential``), quantized with
    :func:`qconfig`. Each ``LIF`` needs ``reset="zero"`` and ``max_spikes=1``, as
    lava-dl's CUBA neurons. aquatic's synaptic current decays the input in its arrival
    step (:math:`i = \\alpha_s (i + x)`) while Loihi adds it after the decay
    (:math:`u = \\alpha_s u + x`); the two agree when the weights are scaled by
    :math:`\\alpha_s`, so a ``LIF`` with ``tau_syn`` exports only if
    :math:`\\alpha_s W` lies on the weight grid. Without ``tau_syn``, ``du = 4096``
    (:math:`u = x`) and the ``Linear`` bias joins the neuron bias.

    Returns:
        dict: ``{"layers": [...]}``, each with ``weight`` ``(Nout, Nin)`` (state units,
        even), ``current_decay``, ``voltage_decay``, ``threshold``, ``bias`` and ``name``.

    Raises:
        DoesNotFitError: a layer type Loihi lacks or a value off its grid (names the layer).
    """
    from aquatic.nn import LIF, LIFRecurrent

    layers = layer_sequence(model, "Loihi")
    require(
        len(layers) % 2 == 0,
        "Loihi takes (Linear -> LIF) pairs; got "
        + " -> ".join(f"{type(m).__name__} ({n})" for n, m in layers),
    )
    step = 1.0 / W_SCALE
    spec: List[Dict[str, Any]] = []
    for (lin_name, linear), (lif_name, lif) in zip(layers[::2], layers[1::2]):
        require(
            isinstance(linear, nn.Linear),
            f"layer {lin_name!r} is a {type(linear).__name__}; Loihi export takes Linear layers",
        )
        require(
            isinstance(lif, LIF) and not isinstance(lif, LIFRecurrent),
            f"layer {lif_name!r} is a {type(lif).__name__}; Loihi's CUBA neurons are an aquatic.nn.LIF",
        )
        require(
            lif.reset == "zero",
            f"layer {lif_name!r}: Loihi resets the voltage to zero; use reset='zero'",
        )
        require(
            lif.max_spikes == 1,
            f"layer {lif_name!r}: Loihi neurons spike once per step; use max_spikes=1",
        )
        require(
            lif.min_v_mem is None and not lif.norm_input,
            f"layer {lif_name!r}: Loihi has no min_v_mem or norm_input",
        )
        n_out = linear.out_features
        params = lif.neuron_params()
        weight = quantized_param(linear, "weight").detach().double()
        lin_bias = per_neuron(quantized_param(linear, "bias"), n_out, f"{lin_name}.bias")
        if params["alpha_syn"] is not None:
            weight = weight * per_neuron(params["alpha_syn"], n_out, lif_name).unsqueeze(1)
            require(
                not bool(lin_bias.ne(0).any()),
                f"layer {lin_name!r} has a bias, which cannot enter Loihi's synaptic current exactly; use bias=False",
            )
        entry = {
            "name": lif_name,
            "weight": grid_codes(
                weight,
                step,
                f"{lin_name}.weight" + (" * alpha_syn" if params["alpha_syn"] is not None else ""),
            ),
            "current_decay": _decay_code(params["alpha_syn"], n_out, f"{lif_name}.alpha_syn"),
            "voltage_decay": _decay_code(params["alpha_mem"], n_out, f"{lif_name}.alpha_mem"),
            "threshold": grid_codes(
                per_neuron(params["threshold"], n_out, lif_name), step, f"{lif_name}.threshold"
            ),
            "bias": grid_codes(
                per_neuron(params["bias"], n_out, lif_name) + lin_bias, step, f"{lif_name}.bias"
            ),
        }
        spec.append(entry)
    try:
        check_spec({"layers": spec})
    except DoesNotFitError as error:
        raise DoesNotFitError(f"the model does not fit Loihi: {error}") from None
    return {"layers": spec}
