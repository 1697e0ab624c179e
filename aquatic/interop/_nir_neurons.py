"""aquatic spiking layers -> NIR neuron nodes, for :mod:`aquatic.interop._nir_export`.

The conventions (time constants, gains, resets) are in :mod:`aquatic.interop.nir`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from aquatic.interop._common import active
from aquatic.interop._nir_quant import state_records
from aquatic.nn.base import eval_mode
from aquatic.nn.neuron_base import NeuronModule

Shape = Tuple[int, ...]
Chain = List[Tuple[str, Any]]


def tau_of(alpha: np.ndarray, dt: float, discretization: str) -> np.ndarray:
    """NIR time constants of per-step decays ``alpha`` in ``(0, 1)`` (0 gives tau 0 / dt)."""
    with np.errstate(divide="ignore"):
        if discretization == "exact":
            return -dt / np.log(alpha)
        return dt / (1.0 - alpha)


def per_neuron(value: Any, shape: Shape, what: str) -> np.ndarray:
    """``value`` (scalar or tensor broadcasting to the neurons) as a float64 array of ``shape``."""
    tensor = torch.as_tensor(value).detach().cpu().to(torch.float64)
    for target in (shape, (1,) + shape):
        try:
            return torch.broadcast_to(tensor, target).reshape(shape).numpy().copy()
        except RuntimeError:
            continue
    raise ValueError(
        f"{what} has shape {tuple(tensor.shape)}, which does not broadcast to the layer's "
        f"neurons {shape}"
    )


class NeuronExporter:
    """The neuron layers' part of :class:`~aquatic.interop._nir_export.Exporter`.

    A mixin: it uses the exporter's ``nir``, ``dt``, ``discretization``, ``resets`` and
    ``_record_activation``.
    """

    nir: Any
    dt: float
    discretization: str
    resets: Dict[str, str]
    states: Dict[str, Dict[str, Any]]
    max_spikes: Dict[str, int]

    def _neuron_fields(self, node_type: Any, shape: Shape) -> Dict[str, np.ndarray]:
        """``v_reset = 0`` for the NIR versions that have it (reset to ``v_reset``)."""
        names = {field.name for field in dataclasses.fields(node_type)}
        return {"v_reset": np.zeros(shape)} if "v_reset" in names else {}

    def _neuron(self, name: str, module: NeuronModule, shape: Shape) -> Chain:
        kind = type(module).__name__
        with eval_mode(module.quantizers.values()), torch.no_grad():
            spec = module.spec()
        if spec.max_spikes != 1:  # NIR neurons emit one spike: recorded in the metadata
            self.max_spikes[name] = int(spec.max_spikes)
        if spec.strict_threshold or spec.input_after_decay or spec.input_delay:
            raise ValueError(
                f"layer {name!r} ({kind}) uses Loihi's neuron options (strict_threshold, "
                "input_after_decay, input_delay), which NIR neurons cannot express; export "
                "it with aquatic.hw.loihi.export instead"
            )
        if spec.min_v_mem is not None:
            raise ValueError(
                f"layer {name!r} ({kind}) bounds its membrane below (min_v_mem="
                f"{spec.min_v_mem:g}); NIR neurons have no such bound: use min_v_mem=None"
            )
        states = state_records(module, name, module._quantized_states)
        if states:
            self.states[name] = states
        what = f"layer {name!r} ({kind})"
        alpha = per_neuron(spec.alpha_mem, shape, f"{what}: alpha_mem")
        bias = spec.bias
        bias = np.zeros(shape) if bias is None else per_neuron(bias, shape, f"{what}: bias")
        gain = (1.0 - alpha) if spec.norm_input else np.ones(shape)
        syn = None
        if spec.alpha_syn is not None:
            syn = per_neuron(spec.alpha_syn, shape, f"{what}: alpha_syn")
            if bool(((syn <= 0) | (syn >= 1)).any()):
                raise ValueError(
                    f"{what}: alpha_syn must lie strictly between 0 and 1 for NIR (a synaptic "
                    f"current that never decays or never receives input), got values in "
                    f"[{syn.min():g}, {syn.max():g}]"
                )
        leaky = alpha < 1
        if leaky.any() and not leaky.all():
            raise ValueError(
                f"{what} mixes neurons without leak (alpha_mem = 1) and leaky ones; NIR has "
                "one node type per layer: split the layer or make every alpha_mem < 1"
            )
        threshold = None
        if spec.spiking:
            self.resets[name] = spec.reset
            threshold = per_neuron(spec.threshold, shape, f"{what}: threshold")
        else:
            self._record_activation(name, module)
        if not leaky.all():
            return self._integrator(name, kind, shape, gain, bias, syn, threshold)
        tau = tau_of(alpha, self.dt, self.discretization)
        r = gain / (1.0 - alpha)
        v_leak = bias / (1.0 - alpha)
        if threshold is None:
            return [(name, self.nir.LI(tau=tau, r=r, v_leak=v_leak))]
        if syn is None:
            fields = self._neuron_fields(self.nir.LIF, shape)
            node = self.nir.LIF(tau=tau, r=r, v_leak=v_leak, v_threshold=threshold, **fields)
            return [(name, node)]
        # With w_in = 1 the NIR current is I = i (1 - alpha_syn) / alpha_syn.
        fields = self._neuron_fields(self.nir.CubaLIF, shape)
        node = self.nir.CubaLIF(
            tau_syn=tau_of(syn, self.dt, self.discretization),
            tau_mem=tau,
            r=r * syn / (1.0 - syn),
            v_leak=v_leak,
            v_threshold=threshold,
            w_in=np.ones(shape),
            **fields,
        )
        return [(name, node)]

    def _integrator(
        self,
        name: str,
        kind: str,
        shape: Shape,
        gain: np.ndarray,
        bias: np.ndarray,
        syn: Optional[np.ndarray],
        threshold: Optional[np.ndarray],
    ) -> Chain:
        if bool((bias != 0).any()):
            raise ValueError(
                f"layer {name!r} ({kind}) has a bias but no membrane leak (alpha_mem = 1); "
                "NIR's IF and I nodes have no leak voltage to carry it: fold the bias into "
                "the previous layer's bias, or give the layer a leak"
            )
        r = gain / self.dt
        if threshold is None:  # no spikes: an integrator
            return [(name, self.nir.I(r=r))]
        node = self.nir.IF(r=r, v_threshold=threshold, **self._neuron_fields(self.nir.IF, shape))
        if syn is None:
            return [(name, node)]
        current = self.nir.LI(
            tau=tau_of(syn, self.dt, self.discretization),
            r=syn / (1.0 - syn),
            v_leak=np.zeros(shape),
        )
        return [(f"{name}.syn", current), (name, node)]
