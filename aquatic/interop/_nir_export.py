"""aquatic (and torch) layers -> NIR nodes. The conventions are in :mod:`aquatic.interop.nir`."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.interop._common import active, affine_params, layer_sequence, parameter_values
from aquatic.interop._nir_modules import NIRModule, Scale, SumPool2d
from aquatic.nn.activation import ActivationQuantizer
from aquatic.nn.exp_leak import ExpLeak
from aquatic.nn.iaf import IAF
from aquatic.nn.lif import LIF, LIFCell, LIFRecurrent
from aquatic.nn.neuron_base import NeuronModule

Shape = Tuple[int, ...]
Chain = List[Tuple[str, Any]]

SUPPORTED = (
    "Linear, Conv1d, Conv2d, Flatten, AvgPool2d, SumPool2d, LPPool2d(norm_type=1), "
    "LIF, IAF, ExpLeak, ActivationQuantizer, Identity, Dropout"
)
#: Layers that pass their input on unchanged at inference.
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


def tau_of(alpha: np.ndarray, dt: float, discretization: str) -> np.ndarray:
    """NIR time constants of per-step decays ``alpha`` in ``(0, 1)`` (0 gives tau 0 / dt)."""
    with np.errstate(divide="ignore"):
        if discretization == "exact":
            return -dt / np.log(alpha)
        return dt / (1.0 - alpha)


def _numpy(value: Tensor, dtype=np.float32) -> np.ndarray:
    return value.detach().cpu().to(torch.float64).numpy().astype(dtype)


def _per_neuron(value: Any, shape: Shape, what: str) -> np.ndarray:
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


@contextmanager
def _eval_quantizers(module: nn.Module) -> Iterator[None]:
    quantizers = getattr(module, "quantizers", None)
    modes = [q.training for q in quantizers.values()] if quantizers is not None else []
    if quantizers is not None:
        quantizers.train(False)
    try:
        with torch.no_grad():
            yield
    finally:
        if quantizers is not None:
            for quantizer, mode in zip(quantizers.values(), modes):
                quantizer.train(mode)


class Exporter:
    """Converts one layer at a time; collects the aquatic metadata on the way."""

    def __init__(self, nir: Any, dt: float, discretization: str) -> None:
        self.nir = nir
        self.dt = dt
        self.discretization = discretization
        self.quantizers: Dict[str, Dict[str, Any]] = {}
        self.resets: Dict[str, str] = {}

    # -- dispatch ------------------------------------------------------------------------
    def convert(self, name: str, module: nn.Module, shape: Shape) -> Tuple[Chain, Shape]:
        """The NIR nodes (a chain, maybe empty) of ``module`` and its per-step output shape."""
        if isinstance(module, _IDENTITY):
            return [], shape
        if isinstance(module, ActivationQuantizer):
            if active(module, "activation") is None:
                return [], shape
            self._record_activation(name, module)
            return [(name, self.nir.Scale(scale=np.ones(shape, dtype=np.float32)))], shape
        if isinstance(module, nn.Linear):
            return self._linear(name, module, shape)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return self._conv(name, module, shape)
        if isinstance(module, nn.Flatten):
            return self._flatten(name, module, shape)
        if isinstance(module, (nn.AvgPool2d, SumPool2d, nn.LPPool2d)):
            return self._pool(name, module, shape)
        if isinstance(module, Scale):
            scale = _per_neuron(module.scale, shape, f"layer {name!r} (Scale)")
            return [(name, self.nir.Scale(scale=scale.astype(np.float32)))], shape
        if isinstance(module, (LIFCell, LIFRecurrent)):
            kind = "one time step" if isinstance(module, LIFCell) else "recurrent weights"
            raise TypeError(
                f"layer {name!r} is a {type(module).__name__} ({kind}), which NIR export does "
                "not support; use aquatic.nn.LIF for feed-forward spiking layers"
            )
        if isinstance(module, (LIF, IAF, ExpLeak)):
            return self._neuron(name, module, shape), shape
        raise TypeError(
            f"layer {name!r} is a {type(module).__name__}, which has no NIR counterpart; "
            f"NIR export supports {SUPPORTED} (in nn.Sequential containers)"
        )

    def _record_activation(self, name: str, module: nn.Module) -> None:
        quantizer = active(module, "activation")
        if quantizer is None:
            return
        grid = affine_params(quantizer, f"layer {name!r}: activation quantizer")
        if grid.ch_axis is not None:
            raise ValueError(
                f"layer {name!r}: its activation quantizer is per channel; NIR export records "
                "per-tensor activation quantizers only"
            )
        self.quantizers[name] = {
            "scale": float(grid.scale),
            "zero_point": int(grid.zero_point),
            "quant_min": grid.quant_min,
            "quant_max": grid.quant_max,
        }

    # -- stateless layers ----------------------------------------------------------------
    def _linear(self, name: str, module: nn.Linear, shape: Shape) -> Tuple[Chain, Shape]:
        if shape != (module.in_features,):
            raise ValueError(
                f"layer {name!r} (Linear) receives steps of shape {shape}, but NIR's Affine "
                f"node takes vectors of {module.in_features}; put an nn.Flatten() before it"
            )
        values = parameter_values(module)
        weight = _numpy(values["weight"])
        if "bias" in values:
            node = self.nir.Affine(weight=weight, bias=_numpy(values["bias"]))
        else:
            node = self.nir.Linear(weight=weight)
        self._record_activation(name, module)
        return [(name, node)], (module.out_features,)

    def _conv(self, name: str, module: nn.Module, shape: Shape) -> Tuple[Chain, Shape]:
        dims = 1 if isinstance(module, nn.Conv1d) else 2
        kind = f"Conv{dims}d"
        if module.padding_mode != "zeros":
            raise ValueError(
                f"layer {name!r} ({kind}) pads with {module.padding_mode!r}; NIR convolutions "
                "pad with zeros only (padding_mode='zeros')"
            )
        if len(shape) != dims + 1 or shape[0] != module.in_channels:
            raise ValueError(
                f"layer {name!r} ({kind}) expects steps of shape (C={module.in_channels}, "
                f"{'L' if dims == 1 else 'H, W'}), got {shape}"
            )
        padding = module.padding
        if isinstance(padding, str):
            # NIR takes "same" as a string too, but its shape inference fails on it for
            # Conv1d; explicit symmetric padding says the same thing to every reader.
            total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
            if padding == "same" and any(t % 2 for t in total):
                raise ValueError(
                    f"layer {name!r} ({kind}): padding='same' with an even kernel pads "
                    "asymmetrically, which NIR cannot express; use an odd kernel or explicit "
                    "padding"
                )
            padding = tuple(t // 2 for t in total) if padding == "same" else (0,) * dims
        probe = torch.empty((1,) + shape, device="meta")
        conv = F.conv1d if dims == 1 else F.conv2d
        out = conv(
            probe,
            torch.empty(module.weight.shape, device="meta"),
            None,
            module.stride,
            padding,
            module.dilation,
            module.groups,
        )
        values = parameter_values(module)
        weight = _numpy(values["weight"])
        bias = (
            _numpy(values["bias"])
            if "bias" in values
            else np.zeros(module.out_channels, dtype=np.float32)
        )
        if dims == 1:
            node = self.nir.Conv1d(
                input_shape=shape[1],
                weight=weight,
                stride=module.stride[0],
                padding=padding[0],
                dilation=module.dilation[0],
                groups=module.groups,
                bias=bias,
            )
        else:
            node = self.nir.Conv2d(
                input_shape=tuple(shape[1:]),
                weight=weight,
                stride=tuple(module.stride),
                padding=tuple(padding),
                dilation=tuple(module.dilation),
                groups=module.groups,
                bias=bias,
            )
        self._record_activation(name, module)
        return [(name, node)], tuple(out.shape[1:])

    def _flatten(self, name: str, module: nn.Flatten, shape: Shape) -> Tuple[Chain, Shape]:
        # torch counts the batch axis, NIR does not: (N, C, H, W) dims 1..3 are 0..2 here.
        full = len(shape) + 1
        start = module.start_dim % full
        end = module.end_dim % full
        if start == 0:
            raise ValueError(
                f"layer {name!r} (Flatten) merges the batch axis (start_dim="
                f"{module.start_dim}); NIR flattens within one sample: use start_dim >= 1"
            )
        node = self.nir.Flatten(
            input_type={"input": np.array(shape)}, start_dim=start - 1, end_dim=end - 1
        )
        out = tuple(int(v) for v in module(torch.empty((1,) + shape, device="meta")).shape[1:])
        return [(name, node)], out

    def _pool(self, name: str, module: nn.Module, shape: Shape) -> Tuple[Chain, Shape]:
        kind = type(module).__name__
        if isinstance(module, nn.LPPool2d) and module.norm_type != 1:
            raise TypeError(
                f"layer {name!r} is an LPPool2d with norm_type={module.norm_type}; NIR has sum "
                "pooling (norm_type=1) and average pooling only"
            )
        if len(shape) != 3:
            raise ValueError(
                f"layer {name!r} ({kind}) expects steps of shape (C, H, W), got {shape}"
            )
        kernel = tuple(int(v) for v in torch.nn.modules.utils._pair(module.kernel_size))
        stride = torch.nn.modules.utils._pair(module.stride if module.stride else kernel)
        padding = torch.nn.modules.utils._pair(getattr(module, "padding", 0))
        if getattr(module, "ceil_mode", False):
            raise ValueError(f"layer {name!r} ({kind}) uses ceil_mode=True, which NIR lacks")
        if isinstance(module, nn.AvgPool2d):
            if module.divisor_override is not None or (
                not module.count_include_pad and any(padding)
            ):
                raise ValueError(
                    f"layer {name!r} (AvgPool2d): NIR divides by the window size; use "
                    "divisor_override=None and count_include_pad=True (or no padding)"
                )
            node_type = self.nir.AvgPool2d
        else:
            node_type = self.nir.SumPool2d
        node = node_type(
            kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(padding)
        )
        probe = torch.empty((1,) + shape, device="meta")
        out = F.avg_pool2d(probe, kernel, stride, padding)
        return [(name, node)], tuple(out.shape[1:])

    # -- neurons -------------------------------------------------------------------------
    def _neuron_fields(self, node_type: Any, shape: Shape) -> Dict[str, np.ndarray]:
        """``v_reset = 0`` for the NIR versions that have it (reset to ``v_reset``)."""
        names = {field.name for field in dataclasses.fields(node_type)}
        return {"v_reset": np.zeros(shape)} if "v_reset" in names else {}

    def _neuron(self, name: str, module: NeuronModule, shape: Shape) -> Chain:
        kind = type(module).__name__
        if getattr(module, "max_spikes", 1) != 1:
            raise ValueError(
                f"layer {name!r} ({kind}) emits up to max_spikes={module.max_spikes} spikes per "
                "step; NIR neurons emit one: use max_spikes=1"
            )
        if module.min_v_mem is not None:
            raise ValueError(
                f"layer {name!r} ({kind}) bounds its membrane below (min_v_mem="
                f"{module.min_v_mem:g}); NIR neurons have no such bound: use min_v_mem=None"
            )
        for state in module._quantized_states:
            if active(module, state) is not None:
                raise ValueError(
                    f"layer {name!r} ({kind}) quantizes its state {state!r} after every step "
                    "(QConfig.state), which NIR neurons cannot express; export a model "
                    "without state quantizers"
                )
        with _eval_quantizers(module):
            params = module.neuron_params()
        what = f"layer {name!r} ({kind})"
        alpha = _per_neuron(params["alpha_mem"], shape, f"{what}: alpha_mem")
        bias = params["bias"]
        bias = np.zeros(shape) if bias is None else _per_neuron(bias, shape, f"{what}: bias")
        gain = (1.0 - alpha) if getattr(module, "norm_input", False) else np.ones(shape)
        syn = None
        if params["alpha_syn"] is not None:
            syn = _per_neuron(params["alpha_syn"], shape, f"{what}: alpha_syn")
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
        if isinstance(module, ExpLeak):
            self._record_activation(name, module)
        else:
            self.resets[name] = module.reset
        threshold = None
        if not isinstance(module, ExpLeak):
            threshold = _per_neuron(params["threshold"], shape, f"{what}: threshold")
        if not leaky.all():
            return self._integrator(name, module, shape, gain, bias, syn, threshold)
        tau = tau_of(alpha, self.dt, self.discretization)
        r = gain / (1.0 - alpha)
        v_leak = bias / (1.0 - alpha)
        if isinstance(module, ExpLeak):
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
        module: NeuronModule,
        shape: Shape,
        gain: np.ndarray,
        bias: np.ndarray,
        syn: Optional[np.ndarray],
        threshold: Optional[np.ndarray],
    ) -> Chain:
        kind = type(module).__name__
        if bool((bias != 0).any()):
            raise ValueError(
                f"layer {name!r} ({kind}) has a bias but no membrane leak (alpha_mem = 1); "
                "NIR's IF and I nodes have no leak voltage to carry it: fold the bias into "
                "the previous layer's bias, or give the layer a leak"
            )
        r = gain / self.dt
        if isinstance(module, ExpLeak):
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


def graph_of(model: nn.Module) -> Tuple[List[Tuple[str, nn.Module]], List[Tuple[str, str]]]:
    """The layers of ``model`` (an ``nn.Sequential``, a single layer or a
    :class:`NIRModule`) in running order, and the edges between them (with ``"input"``
    and ``"output"``)."""
    if isinstance(model, NIRModule):
        nodes = list(model.named_nodes())
        rename = {model.input_name: "input", model.output_name: "output"}
        taken = {name for name, _ in nodes}
        if taken & {"input", "output"}:
            raise ValueError("a NIRModule with nodes named 'input' or 'output' cannot be exported")
        edges = [(rename.get(a, a), rename.get(b, b)) for a, b in model.edges]
        return nodes, edges
    # A container with a forward of its own (aquatic layers hold only their quantizers).
    if not isinstance(model, nn.Sequential) and list(model.children()):
        if not hasattr(model, "quantizers"):
            raise TypeError(
                f"NIR export walks nn.Sequential models (and NIRModule graphs), not a "
                f"{type(model).__name__} whose forward it cannot see; put the layers in an "
                "nn.Sequential"
            )
    layers = layer_sequence(model)
    names = []
    for index, (name, _) in enumerate(layers):
        names.append(f"{name}_{index}" if name in ("input", "output") else name)
    chain = ["input"] + names + ["output"]
    return list(zip(names, (m for _, m in layers))), list(zip(chain[:-1], chain[1:]))
