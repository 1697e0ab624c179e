"""aquatic (and torch) layers -> NIR nodes. The conventions are in :mod:`aquatic.interop.nir`."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aquatic.graph.capture import follows_graph
from aquatic.walk import sequential_layers
from aquatic.interop._common import active, export_grid, parameter_values
from aquatic.interop._nir_graph import traced_layers
from aquatic.interop._nir_quant import param_records
from aquatic.interop._nir_modules import NIRModule, Scale, SumPool2d
from aquatic.interop._nir_neurons import Chain, NeuronExporter, Shape, per_neuron
from aquatic.nn.activation import ActivationQuantizer
from aquatic.nn.combine import Add
from aquatic.nn.exp_leak import ExpLeak
from aquatic.nn.iaf import IAF
from aquatic.nn.lif import LIF, LIFCell, LIFRecurrent

SUPPORTED = (
    "Linear, Conv1d, Conv2d, Flatten, AvgPool2d, SumPool2d, LPPool2d(norm_type=1), "
    "LIF, LIFRecurrent, IAF, ExpLeak, ActivationQuantizer, Add, Identity, Dropout"
)
#: Layers that pass their input on unchanged at inference.
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


def _numpy(value: Tensor, dtype=np.float32) -> np.ndarray:
    return value.detach().cpu().to(torch.float64).numpy().astype(dtype)


class Exporter(NeuronExporter):
    """Converts one layer at a time; collects the aquatic metadata on the way."""

    def __init__(self, nir: Any, dt: float, discretization: str) -> None:
        self.nir = nir
        self.dt = dt
        self.discretization = discretization
        self.quantizers: Dict[str, Dict[str, Any]] = {}
        self.resets: Dict[str, str] = {}
        #: per node: parameter grids and state quantizers (see aquatic.interop._nir_quant)
        self.params: Dict[str, Dict[str, Any]] = {}
        self.states: Dict[str, Dict[str, Any]] = {}
        self.max_spikes: Dict[str, int] = {}
        #: whether the model's stateless layers take (N, T, *) too: Flatten counts 2 axes
        self.time_axis = False
        #: nodes and edges outside the chains (a recurrent layer's weights and its loop)
        self.side_nodes: List[Tuple[str, Any]] = []
        self.side_edges: List[Tuple[str, str]] = []

    def metadata(self) -> Dict[str, Any]:
        """``graph.metadata["aquatic"]``; warns about what other NIR tools will not read."""
        metadata: Dict[str, Any] = {"dt": self.dt, "discretization": self.discretization}
        subtracting = [name for name, reset in self.resets.items() if reset == "subtract"]
        if subtracting:
            warnings.warn(
                f"{'layers' if len(subtracting) > 1 else 'layer'} "
                f"{', '.join(map(repr, subtracting))} reset{'' if len(subtracting) > 1 else 's'} "
                "by subtracting the threshold, which NIR cannot express: NIR nodes with v_reset "
                "reset to it (written as 0, so other NIR tools reset to zero). "
                "aquatic.interop.nir.load restores the "
                "subtraction from graph.metadata['aquatic']['resets']; for other tools, train "
                "with reset='zero'",
                UserWarning,
                stacklevel=3,
            )
        if self.resets:
            metadata["resets"] = dict(self.resets)
        if self.max_spikes:
            warnings.warn(
                f"NIR neurons emit one spike per step: the max_spikes of "
                f"{', '.join(f'{k!r} ({v})' for k, v in self.max_spikes.items())} are recorded "
                "in graph.metadata['aquatic']['max_spikes'], which aquatic.interop.nir.load uses "
                "and other NIR tools ignore",
                UserWarning,
                stacklevel=3,
            )
        for key in ("quantizers", "params", "states", "max_spikes"):
            if getattr(self, key):
                metadata[key] = dict(getattr(self, key))
        if self.quantizers or self.states:
            parts = [
                f"the {what} quantizers of {', '.join(map(repr, names))}"
                for what, names in (("activation", self.quantizers), ("state", self.states))
                if names
            ]
            warnings.warn(
                f"NIR has no quantization nodes: {' and '.join(parts)} are recorded in "
                "graph.metadata['aquatic'], which aquatic.interop.nir.load uses and other NIR "
                "tools ignore",
                UserWarning,
                stacklevel=3,
            )
        return metadata

    # -- dispatch ------------------------------------------------------------------------
    def convert(self, name: str, module: nn.Module, shape: Shape) -> Tuple[Chain, Shape]:
        """The NIR nodes (a chain, maybe empty) of ``module`` and its per-step output shape."""
        chain, out = self._convert(name, module, shape)
        params = param_records(module)
        if params and any(node_name == name for node_name, _ in chain):
            self.params[name] = params
        return chain, out

    def _convert(self, name: str, module: nn.Module, shape: Shape) -> Tuple[Chain, Shape]:
        if isinstance(module, _IDENTITY):
            return [], shape
        if isinstance(module, (ActivationQuantizer, Add)):
            # Add: NIR sums the edges into a node; the sum's quantizer is a Scale of ones.
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
            scale = per_neuron(module.scale, shape, f"layer {name!r} (Scale)")
            return [(name, self.nir.Scale(scale=scale.astype(np.float32)))], shape
        if isinstance(module, LIFCell):
            raise TypeError(
                f"layer {name!r} is a LIFCell (one time step), which NIR export does not "
                "support; use aquatic.nn.LIF (or LIFRecurrent) for spiking layers"
            )
        if isinstance(module, LIFRecurrent):
            return self._recurrent(name, module, shape), shape
        if isinstance(module, (LIF, IAF, ExpLeak)):
            return self._neuron(name, module, shape), shape
        raise TypeError(
            f"layer {name!r} is a {type(module).__name__}, which has no NIR counterpart; "
            f"NIR export supports {SUPPORTED}"
        )

    def _recurrent(self, name: str, module: LIFRecurrent, shape: Shape) -> Chain:
        """The neuron node, and a ``Linear`` node ``"<name>_rec"`` of the recurrent weights
        on an edge from the neurons back into them: NIR sums the edges into a node, and a
        cycle delays by one step, so the neurons receive :math:`x[t] + W s[t-1]` (the
        layout snnTorch's ``import_from_nir`` looks for as ``RLeaky``/``RSynaptic``)."""
        if shape != (module.num_neurons,):
            raise ValueError(
                f"layer {name!r} (LIFRecurrent) has {module.num_neurons} neurons but receives "
                f"steps of shape {shape}"
            )
        chain = self._neuron(name, module, shape)
        if not isinstance(chain[-1][1], (self.nir.LIF, self.nir.CubaLIF)):
            raise ValueError(
                f"layer {name!r} (LIFRecurrent) has neurons without leak (alpha_mem = 1); NIR "
                "export writes recurrent layers as LIF or CubaLIF nodes: give every neuron a "
                "leak (alpha_mem < 1)"
            )
        weight = module.rec_weight
        if active(module, "rec_weight") is not None:
            weight = module.quantize_params()["rec_weight"]
        rec = f"{name}_rec"
        self.side_nodes.append((rec, self.nir.Linear(weight=_numpy(weight))))
        self.side_edges += [(chain[-1][0], rec), (rec, chain[0][0])]
        return chain

    def _record_activation(self, name: str, module: nn.Module) -> None:
        quantizer = active(module, "activation")
        if quantizer is None:
            return
        grid = export_grid(quantizer, f"layer {name!r}: activation quantizer")
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
            # floor and stochastic rounding load back as they were trained
            "rounding": str(getattr(quantizer, "rounding", "nearest")),
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
        # torch counts the batch axis (and the time axis, with time_axis), NIR does not:
        # (N, C, H, W) dims 1..3 are 0..2 here, as are (N, T, C, H, W) dims 2..4.
        outer = 2 if self.time_axis else 1
        full = len(shape) + outer
        start = module.start_dim % full
        end = module.end_dim % full
        if start < outer:
            axes = "batch and time axes" if self.time_axis else "batch axis"
            raise ValueError(
                f"layer {name!r} (Flatten) merges the {axes} (start_dim={module.start_dim}); "
                f"NIR flattens within one sample: use start_dim >= {outer}"
            )
        node = self.nir.Flatten(
            input_type={"input": np.array(shape)}, start_dim=start - outer, end_dim=end - outer
        )
        probe = torch.empty((1,) * outer + shape, device="meta")
        out = tuple(int(v) for v in module(probe).shape[outer:])
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
        chain = [(name, node)]
        if active(module, "activation") is not None:
            # An aquatic pooling layer's output quantizer: a Scale of ones after the
            # pooling node, recorded as an ActivationQuantizer's is.
            quantized = f"{name}.activation"
            self._record_activation(quantized, module)
            chain.append((quantized, self.nir.Scale(scale=np.ones(out.shape[1:], np.float32))))
        return chain, tuple(out.shape[1:])


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
    # A model with a forward of its own: follow its traced graph.
    if follows_graph(model):
        return traced_layers(model)
    # each use of a shared layer is a node of its own (its weights written again)
    layers = sequential_layers(model, default=type(model).__name__.lower())
    names = []
    for index, (name, _) in enumerate(layers):
        names.append(f"{name}_{index}" if name in ("input", "output") else name)
    chain = ["input"] + names + ["output"]
    return list(zip(names, (m for _, m in layers))), list(zip(chain[:-1], chain[1:]))
