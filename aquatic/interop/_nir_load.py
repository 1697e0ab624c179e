"""NIR nodes -> aquatic layers. The conventions are in :mod:`aquatic.interop.nir`."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from aquatic import nn as qnn
from aquatic.interop._nir_modules import Scale, SumPool2d
from aquatic.interop._nir_quant import layer_qconfig, set_state_grids
from aquatic.qconfig import QConfig
from aquatic.quantizers.uniform import UniformQuantizer

#: Relative tolerance of "this gain is 1" (and "R is 1"): float64 round-off of exported
#: values is far below it; a genuinely different gain is far above it.
GAIN_RTOL = 1e-6


def text(value: Any) -> str:
    """A metadata string, whether it came back from HDF5 as ``str``, bytes or NumPy."""
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf8")
    return str(value)


def _array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _value(array: np.ndarray) -> Any:
    """A float when every entry is the same (float32), else a float32 tensor."""
    array = np.asarray(array, dtype=np.float32)
    if array.size > 0 and bool((array == array.flat[0]).all()):
        return float(array.flat[0])
    return torch.from_numpy(array.copy())


def _ints(value: Any, count: int, what: str) -> Tuple[int, ...]:
    array = np.atleast_1d(np.asarray(value)).astype(np.int64).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, count)
    if array.size != count:
        raise ValueError(f"{what} should hold {count} ints, got {value!r}")
    return tuple(int(v) for v in array)


def _is_one(value: np.ndarray) -> bool:
    return bool(np.allclose(value, 1.0, rtol=GAIN_RTOL, atol=0.0))


class Loader:
    """Builds the layer of each node; knows ``dt``, the discretisation and the metadata."""

    def __init__(self, nir: Any, dt: float, discretization: str, metadata: Dict[str, Any]):
        self.nir = nir
        self.dt = dt
        self.discretization = discretization
        self.quantizers = metadata.get("quantizers", {}) or {}
        self.resets = metadata.get("resets", {}) or {}
        self.params = metadata.get("params", {}) or {}
        self.states = metadata.get("states", {}) or {}
        self.max_spikes = metadata.get("max_spikes", {}) or {}
        #: neuron node -> the weights of its recurrent loop (see :func:`recurrent_loops`)
        self.recurrent: Dict[str, np.ndarray] = {}

    def alpha_of(self, tau: Any, what: str, param: str = "tau") -> np.ndarray:
        """Per-step decays (float32 values, held in float64) of NIR time constants."""
        tau = _array(tau)
        if bool((tau < 0).any()) or bool(np.isnan(tau).any()):
            raise ValueError(f"{what}: time constants must be >= 0, got min {tau.min():g}")
        with np.errstate(divide="ignore", under="ignore"):
            if self.discretization == "exact":
                alpha = np.exp(-self.dt / tau)
            else:
                alpha = 1.0 - self.dt / tau
        underflow = (tau > 0) & (alpha.astype(np.float32) == 0)
        if self.discretization == "exact" and bool(underflow.any()):
            short = float(tau[underflow].max())
            raise ValueError(
                f"{what}: {param}={short:g} is so short against dt={self.dt:g} that the decay "
                f"exp(-dt/{param}) = exp(-{self.dt / short:.3g}) underflows to 0 in float32; "
                "the time constants are likely in seconds while dt is not (dt defaults to 1). "
                "Load with dt in the unit of the time constants, e.g. dt=1e-3 for 1 ms steps"
            )
        if bool((alpha < 0).any()):
            raise ValueError(
                f"{what}: a time constant below dt={self.dt:g} gives a negative decay under "
                "forward Euler; load with discretization='exact' or a smaller dt"
            )
        return alpha.astype(np.float32).astype(np.float64)

    def qconfig_of(self, name: str) -> Optional[QConfig]:
        """The recorded quantizers of node ``name`` (activation, parameters, states)."""
        return layer_qconfig(
            self.quantizers.get(name), self.params.get(name), self.states.get(name)
        )

    def spikes_of(self, name: str) -> int:
        """The spikes per step a neuron node may emit (recorded by export; else NIR's 1)."""
        return int(np.asarray(self.max_spikes.get(name, 1)))

    def reset_of(self, name: str, node: Any) -> str:
        """From the metadata; else the convention of the installed NIR version."""
        if name in self.resets:
            mode = text(self.resets[name])
            if mode not in ("subtract", "zero"):
                raise ValueError(f"node {name!r}: unknown reset mode {mode!r} in the metadata")
            return mode
        v_reset = getattr(node, "v_reset", None)
        if v_reset is None:
            return "subtract"  # NIR 1.0.4 and older: v <- v - v_threshold
        if bool((_array(v_reset) != 0).any()):
            raise ValueError(
                f"node {name!r} resets to v_reset != 0, which aquatic neurons (reset to zero, "
                "or by subtraction) cannot do"
            )
        return "zero"

    # -- per node ------------------------------------------------------------------------
    def build(self, name: str, node: Any) -> Tuple[nn.Module, Optional[np.ndarray]]:
        """The layer of ``node``, and an input gain to apply before it (``None``: none)."""
        nir = self.nir
        qconfig = self.qconfig_of(name)
        if isinstance(node, (nir.Affine, nir.Linear)):
            weight = np.asarray(node.weight, dtype=np.float32)
            if weight.ndim != 2:
                raise ValueError(f"node {name!r}: only 2-D weights load, got {weight.shape}")
            bias = isinstance(node, nir.Affine)
            layer = qnn.Linear(weight.shape[1], weight.shape[0], bias=bias, qconfig=qconfig)
            self._set(layer, weight, np.asarray(node.bias, np.float32) if bias else None)
            return layer, None
        if isinstance(node, (nir.Conv1d, nir.Conv2d)):
            return self._conv(name, node, qconfig), None
        if isinstance(node, nir.Flatten):
            start, end = int(node.start_dim), int(node.end_dim)
            # NIR counts dims within one sample; torch counts the batch axis too.
            return (
                nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end),
                None,
            )
        if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            kind = nn.AvgPool2d if isinstance(node, nir.AvgPool2d) else SumPool2d
            return (
                kind(
                    _ints(node.kernel_size, 2, f"node {name!r}: kernel_size"),
                    _ints(node.stride, 2, f"node {name!r}: stride"),
                    _ints(node.padding, 2, f"node {name!r}: padding"),
                ),
                None,
            )
        if isinstance(node, nir.Scale):
            scale = _array(node.scale)
            if qconfig is not None and qconfig.activation is not None and bool((scale == 1).all()):
                return qnn.ActivationQuantizer(qconfig=qconfig), None
            return Scale(torch.from_numpy(scale.astype(np.float32))), None
        if isinstance(node, (nir.LIF, nir.CubaLIF, nir.IF, nir.LI, nir.I)):
            return self._neuron(name, node, qconfig)
        raise TypeError(
            f"node {name!r} is a NIR {type(node).__name__}, which has no aquatic counterpart; "
            "load supports Affine, Linear, Conv1d, Conv2d, Flatten, AvgPool2d, SumPool2d, "
            "Scale, LIF, CubaLIF, IF, LI and I nodes"
        )

    @staticmethod
    def _set(layer: nn.Module, weight: np.ndarray, bias: Optional[np.ndarray]) -> None:
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(weight))
            if bias is not None:
                layer.bias.copy_(torch.from_numpy(bias.reshape(-1)))

    def _conv(self, name: str, node: Any, qconfig: Optional[QConfig]) -> nn.Module:
        dims = 1 if isinstance(node, self.nir.Conv1d) else 2
        weight = np.asarray(node.weight, dtype=np.float32)
        if weight.ndim != dims + 2:
            raise ValueError(
                f"node {name!r}: a Conv{dims}d weight has {dims + 2} dims, got {weight.shape}"
            )
        padding = node.padding
        if isinstance(padding, (bytes, np.bytes_, np.str_)):
            padding = text(padding)
        if not isinstance(padding, str):
            padding = _ints(padding, dims, f"node {name!r}: padding")
        groups = int(np.asarray(node.groups))
        kind = qnn.Conv1d if dims == 1 else qnn.Conv2d
        layer = kind(
            weight.shape[1] * groups,
            weight.shape[0],
            weight.shape[2:],
            stride=_ints(node.stride, dims, f"node {name!r}: stride"),
            padding=padding,
            dilation=_ints(node.dilation, dims, f"node {name!r}: dilation"),
            groups=groups,
            bias=True,
            qconfig=qconfig,
        )
        bias = np.zeros(weight.shape[0], np.float32) if node.bias is None else node.bias
        self._set(layer, weight, np.asarray(bias, dtype=np.float32))
        return layer

    def _neuron(
        self, name: str, node: Any, qconfig: Optional[QConfig]
    ) -> Tuple[nn.Module, Optional[np.ndarray]]:
        nir = self.nir
        what = f"node {name!r} ({type(node).__name__})"
        r = _array(node.r)
        if isinstance(node, (nir.IF, nir.I)):
            gain = self.dt * r
            if isinstance(node, nir.I):
                return qnn.ExpLeak(alpha_mem=1.0, qconfig=qconfig), None if _is_one(gain) else gain
            layer = qnn.IAF(
                threshold=_value(node.v_threshold),
                reset=self.reset_of(name, node),
                qconfig=qconfig,
                max_spikes=self.spikes_of(name),
            )
            set_state_grids(layer, self.states.get(name))
            return layer, None if _is_one(gain) else gain
        tau = node.tau_mem if isinstance(node, nir.CubaLIF) else node.tau
        alpha = self.alpha_of(tau, what, "tau_mem" if isinstance(node, nir.CubaLIF) else "tau")
        leak = 1.0 - alpha
        gain = leak * r
        syn = None
        if isinstance(node, nir.CubaLIF):
            syn = self.alpha_of(node.tau_syn, what, "tau_syn")
            if bool(((syn <= 0) | (syn >= 1)).any()):
                raise ValueError(f"{what}: tau_syn must be positive and finite")
            # aquatic's current is i = I alpha_syn / ((1 - alpha_syn) w_in).
            gain = gain * (1.0 - syn) * _array(node.w_in) / syn
        if bool((alpha >= 1).any()):
            raise ValueError(f"{what}: tau must be finite (use IF or I nodes for no leak)")
        bias = leak * _array(node.v_leak)
        norm_input = False
        if not _is_one(gain) and _is_one(np.divide(gain, leak)):
            norm_input, gain = True, None
        elif _is_one(gain):
            gain = None
        kwargs = dict(
            alpha_mem=_value(alpha),
            norm_input=norm_input,
            bias=_value(bias) if bool((bias != 0).any()) else None,
        )
        if isinstance(node, nir.LI):
            return qnn.ExpLeak(**kwargs, qconfig=qconfig), gain
        if syn is not None:
            kwargs["alpha_syn"] = _value(syn)
        threshold, reset = _value(node.v_threshold), self.reset_of(name, node)
        if name not in self.recurrent:
            layer = qnn.LIF(
                threshold=threshold,
                reset=reset,
                qconfig=qconfig,
                max_spikes=self.spikes_of(name),
                **kwargs,
            )
            set_state_grids(layer, self.states.get(name))
            return layer, gain
        weight = self.recurrent[name]
        if weight.shape != (r.size, r.size) or r.ndim != 1:
            raise ValueError(
                f"{what}: its recurrent weights have shape {weight.shape}, but the node "
                f"holds neurons of shape {r.shape}; a recurrent loop needs (n, n) weights "
                "on a 1-D layer"
            )
        layer = qnn.LIFRecurrent(
            r.size,
            threshold=threshold,
            reset=reset,
            qconfig=qconfig,
            max_spikes=self.spikes_of(name),
            **kwargs,
        )
        set_state_grids(layer, self.states.get(name))
        # The node's input gain scales the loop's input as well as x: W -> diag(g) W.
        scaled = weight if gain is None else weight * np.broadcast_to(gain, (r.size,))[:, None]
        with torch.no_grad():
            layer.rec_weight.copy_(torch.from_numpy(np.asarray(scaled, dtype=np.float32)))
        return layer, gain

    def synaptic_iaf(
        self, name: str, current: Any, node: Any
    ) -> Tuple[nn.Module, Optional[np.ndarray]]:
        """``IAF(alpha_syn=...)`` from a leak-free LI node feeding only the IF ``node``."""
        syn = self.alpha_of(current.tau, f"node {name!r} (LI)")
        # The LI's output is I = i (1 - alpha_syn) r_LI / alpha_syn in aquatic's current i.
        gain = self.dt * _array(node.r) * (1.0 - syn) * _array(current.r) / syn
        layer = qnn.IAF(
            threshold=_value(node.v_threshold),
            reset=self.reset_of(name, node),
            alpha_syn=_value(syn),
            qconfig=self.qconfig_of(name),
            max_spikes=self.spikes_of(name),
        )
        set_state_grids(layer, self.states.get(name))
        return layer, None if _is_one(gain) else gain

    def fusable(self, current: Any, node: Any) -> bool:
        """Whether an LI -> IF pair is one synaptic IAF (LI leak-free, decay in (0, 1))."""
        if not (isinstance(current, self.nir.LI) and isinstance(node, self.nir.IF)):
            return False
        if bool((_array(current.v_leak) != 0).any()):
            return False
        try:
            syn = self.alpha_of(current.tau, "LI")
        except ValueError:  # not fusable; building the LI node on its own names the problem
            return False
        return (
            bool(((syn > 0) & (syn < 1)).all())
            and _array(current.tau).shape == _array(node.r).shape
        )


def recurrent_loops(nir: Any, graph: Any) -> Dict[str, Tuple[str, np.ndarray]]:
    """``{neuron node: (weight node, weights)}`` for each ``LIF``/``CubaLIF`` node with a
    ``Linear`` (or ``Affine`` with zero bias) node on a loop back into it, the layout of
    recurrent layers (aquatic's ``LIFRecurrent``, snnTorch's ``RLeaky``/``RSynaptic``)."""
    sources: Dict[str, List[str]] = {name: [] for name in graph.nodes}
    targets: Dict[str, List[str]] = {name: [] for name in graph.nodes}
    for edge in graph.edges:
        source, target = (text(v) for v in edge)
        if source in graph.nodes and target in graph.nodes:
            sources[target].append(source)
            targets[source].append(target)
    loops: Dict[str, Tuple[str, np.ndarray]] = {}
    for name, node in graph.nodes.items():
        if not isinstance(node, (nir.Linear, nir.Affine)):
            continue
        if len(sources[name]) != 1 or targets[name] != sources[name]:
            continue
        neuron = sources[name][0]
        if not isinstance(graph.nodes[neuron], (nir.LIF, nir.CubaLIF)):
            continue
        if neuron in loops:
            raise ValueError(
                f"node {neuron!r} has two recurrent loops ({loops[neuron][0]!r}, {name!r})"
            )
        if isinstance(node, nir.Affine) and bool((_array(node.bias) != 0).any()):
            raise ValueError(
                f"node {name!r} (Affine) on the recurrent loop of {neuron!r} has a bias, which "
                "aquatic's LIFRecurrent lacks; move the bias into the neurons' v_leak"
            )
        loops[neuron] = (name, np.asarray(node.weight, dtype=np.float64))
    return loops


def metadata_of(graph: Any) -> Dict[str, Any]:
    meta = getattr(graph, "metadata", None) or {}
    aquatic = meta.get("aquatic", {}) if isinstance(meta, dict) else {}
    return aquatic if isinstance(aquatic, dict) else {}


def node_fields(node_type: Any) -> List[str]:
    return [field.name for field in dataclasses.fields(node_type)]
