r"""Export to and load from NIR, the Neuromorphic Intermediate Representation.

NIR (Pedersen et al. 2024, "Neuromorphic intermediate representation: a unified
instruction set for interoperable brain-inspired computing", *Nature Communications* 15,
8122; package ``nir``) describes a network as a graph of continuous-time nodes, with
time constants in seconds (or any unit). aquatic's neurons update once per time step.
:func:`export` and :func:`load` map one onto the other with a time step ``dt`` (in the
unit of NIR's time constants, default 1.0) and a discretisation:

- ``"exact"`` (default): each node's linear ODE is solved exactly over one step, its
  input held constant during the step (zero-order hold). Then
  :math:`\alpha = e^{-dt/\tau_{NIR}}`, so aquatic's ``tau`` (in steps) is
  :math:`\tau_{NIR} / dt`.
- ``"euler"``: one forward-Euler step, :math:`\alpha = 1 - dt/\tau_{NIR}`, so
  :math:`\tau_{NIR} = dt / (1 - \alpha)` (snnTorch's convention).

Either way a leaky node :math:`\tau \dot v = (v_{leak} - v) + R\, I` advances as

.. math::

    v[t] = \alpha\, v[t-1] + (1 - \alpha)\,\big(v_{leak} + R\, I[t]\big),

which is aquatic's :math:`v[t] = \alpha\, v[t-1] + g\, i[t] + b` for

.. math::

    R = \frac{g}{1 - \alpha}, \qquad v_{leak} = \frac{b}{1 - \alpha},

with input gain :math:`g = 1` (or :math:`g = 1 - \alpha` with ``norm_input``, i.e.
:math:`R = 1`) and the layer's bias :math:`b`. An integrator :math:`\dot v = R\, I`
advances as :math:`v[t] = v[t-1] + dt\, R\, I[t]`, so :math:`R = g / dt`.

Layer by layer (``torch.nn`` layers work as well as their aquatic twins):

=======================  ==================================================================
aquatic                  NIR
=======================  ==================================================================
``Linear``               ``Affine`` (``Linear`` without bias)
``Conv1d``, ``Conv2d``   ``Conv1d``, ``Conv2d`` (zero padding)
``Flatten``              ``Flatten`` (NIR counts dims without the batch axis)
``AvgPool2d``            ``AvgPool2d``; :class:`SumPool2d` and ``LPPool2d(1, ...)``:
                         ``SumPool2d``
``LIF``                  ``LIF``; ``CubaLIF`` with ``tau_syn``
``LIFRecurrent``         ``LIF``/``CubaLIF`` node ``n`` and a ``Linear`` node ``n_rec`` of the
                         recurrent weights, with edges ``n -> n_rec -> n`` (a loop delays
                         by one step: :math:`x[t] + W s[t-1]`)
``IAF``                  ``IF``; ``LI`` (the synaptic current) then ``IF`` with ``tau_syn``
``ExpLeak``              ``LI``; ``I`` when :math:`\alpha = 1`
``ActivationQuantizer``  ``Scale`` of ones, its quantizer in the metadata
``Add``, ``x + y``       edges into one node (NIR sums them); a quantized
                         :class:`~aquatic.nn.Add` is a ``Scale`` of ones receiving both
``torch.flatten``        ``Flatten``
``Identity``, dropout    nothing (an edge)
=======================  ==================================================================

Models with a ``forward`` of their own are traced (:func:`aquatic.graph.trace`): each
layer call is a node (named after the layer, ``.`` written ``_``), and the dataflow
gives the edges. A sum of two tensors becomes two edges into the node that uses it:
NIR adds the edges into a node, as :func:`load` does (nirtorch 2.0's interpreter
instead passes them to the node as separate arguments, so its readers need a node that
takes them). Concatenation, products, activation functions, indexing and reshapes
other than flattening have no NIR node and are refused with the operation named.

Synaptic currents: aquatic's :math:`i[t] = \alpha_s (i[t-1] + x[t])` is, advanced before
the membrane and held over the step, NIR's :math:`\tau_{syn} \dot I = -I + w_{in} x`
with :math:`I = i\, (1 - \alpha_s) w_{in} / \alpha_s`. ``CubaLIF`` is written with
:math:`w_{in} = 1` and :math:`R = g\, \alpha_s / ((1 - \alpha_s)(1 - \alpha_m))`; the
``LI`` node of a synaptic ``IAF`` with :math:`R = \alpha_s / (1 - \alpha_s)` and
:math:`v_{leak} = 0`, its ``IF`` with :math:`R = 1 / dt`.

Spikes and resets: aquatic spikes when :math:`v \ge \vartheta`; NIR documents
:math:`v > \vartheta`. They differ only for a membrane exactly at the threshold, which
quantized grids make possible; :func:`load` keeps :math:`\ge`. NIR 1.0.4 documents the
reset as subtracting the threshold; later versions add ``v_reset`` and reset to it.
:func:`export` writes ``v_reset = 0`` where the node has that field and records each
layer's ``reset`` in the graph's metadata; :func:`load` reads it there, else follows the
installed NIR (subtract without ``v_reset``; reset to zero with it, which must then be 0).
NIR has no field for a subtractive reset, so other tools read ``reset="subtract"``
layers as resetting to zero: :func:`export` warns (``UserWarning``) naming them. Use
``reset="zero"`` for a graph that every NIR reader runs as trained.

Quantization: the exported weights, biases, thresholds and decays are the quantized
values that ``forward`` uses (:meth:`~aquatic.nn.QuantizedModule.quantize_params`,
:meth:`~aquatic.nn.NeuronModule.spec`). NIR has no quantization node, so
per-tensor activation quantizers go into ``graph.metadata["aquatic"]["quantizers"]``
(``scale``, ``zero_point``, ``quant_min``, ``quant_max`` and ``rounding`` per node);
:func:`load` rebuilds them with fixed scales and their rounding, so that a loaded
model computes what the fake-quantized model computed. Other NIR tools ignore that
metadata, and :func:`export` warns about it.
The per-tensor grids of the quantized parameters (``"params"``), the state quantizers
(``QConfig.state``) with the integer decay rule they run under (``"states"``, see
:mod:`aquatic.nn.grid_decay`) and several spikes per step (``"max_spikes"``) are
recorded the same way and rebuilt by :func:`load`, so that a Xylo model
(:func:`aquatic.hw.xylo.qconfig`) loads spiking as trained and exports to the chip
unchanged; other NIR tools run the nodes in float with one spike per step, and
:func:`export` warns. ``min_v_mem`` has no NIR equivalent: :func:`export` raises a
``ValueError``.
"""

from __future__ import annotations

import math
import os
import warnings
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from aquatic.interop._common import require
from aquatic.interop._nir_export import Exporter, graph_of
from aquatic.interop._nir_check import check_graph, check_metadata, topological_order
from aquatic.interop._nir_load import Loader, metadata_of, recurrent_loops, text
from aquatic.interop._nir_modules import NIRModule, Scale, SumPool2d
from aquatic.nn.activation import ActivationQuantizer

__all__ = ["export", "load", "NIRModule", "Scale", "SumPool2d", "DISCRETIZATIONS"]

#: How a time step relates to NIR's continuous-time nodes (see the module docstring).
DISCRETIZATIONS = ("exact", "euler")


def _nir():
    return require("nir", "nir", "aquatic.interop.nir")


def _check_dt(dt: Any) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)):
        raise TypeError(f"dt must be a number (the time step in NIR's time unit), got {dt!r}")
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be positive and finite, got {dt!r}")
    return float(dt)


def _check_discretization(discretization: Any) -> str:
    if discretization not in DISCRETIZATIONS:
        raise ValueError(
            f"discretization must be one of {', '.join(map(repr, DISCRETIZATIONS))}, got "
            f"{discretization!r}"
        )
    return discretization


def _input_shape(input_shape: Optional[Sequence[int]], first: nn.Module) -> Tuple[int, ...]:
    if input_shape is None:
        if isinstance(first, nn.Linear):
            return (first.in_features,)
        raise ValueError(
            f"give input_shape, the shape of one time step of one sample (e.g. (2, 28, 28)); "
            f"it cannot be read off the first layer ({type(first).__name__})"
        )
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise TypeError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise ValueError(
            f"input_shape must hold positive sizes (one time step of one sample, without "
            f"batch or time axes), got {input_shape!r}"
        )
    return shape


def export(
    model: nn.Module,
    input_shape: Optional[Sequence[int]] = None,
    *,
    dt: float = 1.0,
    discretization: str = "exact",
    time_axis: bool = False,
) -> Any:
    """The trained ``model`` as a NIR graph (:class:`nir.NIRGraph`).

    See the module docstring for how each layer maps to NIR nodes, and how ``dt`` and
    ``discretization`` relate time steps to NIR's time constants.

    Args:
        model: an ``nn.Sequential`` (nested ones are walked) of the supported layers, a
            model with a ``forward`` of its own (traced; see the module docstring), a
            single layer, or a :class:`NIRModule`. Quantized layers export the values
            their ``forward`` uses.
        input_shape: the shape of one time step of one sample (no batch or time axis),
            e.g. ``(2, 34, 34)``; may be left out when the first layer is a ``Linear``.
        dt: the time step, in the unit of NIR's time constants.
        discretization: ``"exact"`` or ``"euler"``.
        time_axis: ``True`` for a model whose stateless layers take ``(N, T, *)`` as its
            neurons do (one ``nn.Sequential`` with ``nn.Flatten(start_dim=2)``): ``Flatten``
            dims then count the batch and time axes; ``False``: the batch axis only.

    Returns:
        nir.NIRGraph: nodes named after the layers (``"0"``, ``"1"``, ... in an
        ``nn.Sequential``), plus ``"input"`` and ``"output"``; ``metadata["aquatic"]``
        holds ``dt``, ``discretization``, the reset modes and the activation quantizers.

    Raises:
        ImportError: the ``nir`` package is missing (``pip install 'aquatic[nir]'``).
        TypeError: a layer type or an operation NIR lacks (the message names it);
            :class:`aquatic.graph.GraphCaptureError` for a ``forward`` that cannot be
            traced (the message names the line).
        ValueError: a layer setting NIR cannot express (the message names the layer).

    Example:
        >>> import pytest; _ = pytest.importorskip("nir")  # needs aquatic[nir]
        >>> import torch, aquatic
        >>> model = torch.nn.Sequential(
        ...     aquatic.nn.Linear(4, 3), aquatic.nn.LIF(tau_mem=10.0, tau_syn=5.0)
        ... )
        >>> graph = aquatic.interop.nir.export(model, dt=1e-3)
        >>> sorted(graph.nodes), type(graph.nodes["1"]).__name__
        (['0', '1', 'input', 'output'], 'CubaLIF')
        >>> graph.nodes["1"].tau_mem  # 10 steps of 1 ms
        array([0.01, 0.01, 0.01])
    """
    nir = _nir()
    dt = _check_dt(dt)
    discretization = _check_discretization(discretization)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers, edges = graph_of(model)
    if not layers:
        raise ValueError("the model has no layers to export")
    exporter = Exporter(nir, dt, discretization)
    if not isinstance(time_axis, bool):
        raise TypeError(f"time_axis must be True or False, got {time_axis!r}")
    exporter.time_axis = time_axis
    # the first layer that changes shapes (an input quantizer keeps them)
    first = next((m for _, m in layers if not isinstance(m, ActivationQuantizer)), layers[0][1])
    shapes: Dict[str, Tuple[int, ...]] = {"input": _input_shape(input_shape, first)}
    sources: Dict[str, List[str]] = {}
    for source, target in edges:
        sources.setdefault(target, []).append(source)
    nodes: Dict[str, Any] = {}
    heads: Dict[str, str] = {}  # layer -> the NIR node its input goes to
    feeds: Dict[str, List[str]] = {"input": ["input"]}  # layer -> the NIR nodes it outputs
    internal: List[Tuple[str, str]] = []  # edges within a layer's chain of nodes
    for name, module in layers:
        incoming = sources.get(name, [])
        shape = _common_shape(name, [shapes[s] for s in incoming])
        chain, shapes[name] = exporter.convert(name, module, shape)
        if not chain:  # an identity: its sources feed its targets directly
            feeds[name] = [n for s in incoming for n in feeds[s]]
            continue
        for node_name, node in chain:
            if node_name in nodes or node_name in ("input", "output"):
                raise ValueError(f"two nodes would be named {node_name!r}; rename a layer")
            nodes[node_name] = node
        heads[name] = chain[0][0]
        feeds[name] = [chain[-1][0]]
        internal += [(a[0], b[0]) for a, b in zip(chain[:-1], chain[1:])]
    out_shape = _common_shape("output", [shapes[s] for s in sources.get("output", [])])
    nodes = {"input": nir.Input(input_type={"input": np.array(shapes["input"])}), **nodes}
    nodes["output"] = nir.Output(output_type={"output": np.array(out_shape)})
    final: List[Tuple[str, str]] = []
    for source, target in edges:
        if target != "output" and target not in heads:
            continue
        for feed in feeds[source]:
            pair = (feed, heads.get(target, "output"))
            if pair not in final:
                final.append(pair)
    final += internal
    for node_name, node in exporter.side_nodes:
        if node_name in nodes:
            raise ValueError(f"two nodes would be named {node_name!r}; rename a layer")
        nodes[node_name] = node
    final += exporter.side_edges
    metadata = exporter.metadata()
    return nir.NIRGraph(nodes=nodes, edges=final, metadata={"aquatic": metadata})


def _common_shape(name: str, shapes: List[Tuple[int, ...]]) -> Tuple[int, ...]:
    if not shapes:
        raise ValueError(f"node {name!r} has no input")
    if any(shape != shapes[0] for shape in shapes):
        raise ValueError(f"node {name!r} sums inputs of different shapes {shapes}")
    return shapes[0]


def load(
    graph: Union[Any, str, os.PathLike],
    *,
    dt: Optional[float] = None,
    discretization: Optional[str] = None,
) -> NIRModule:
    """A :class:`NIRModule` of aquatic layers that computes what ``graph`` describes.

    The inverse of :func:`export`: a model exported and loaded again gives the same
    outputs (bit for bit in float32, activation quantizers included). Graphs from other
    tools load too, read with the conventions of the module docstring; input gains that
    aquatic's neurons lack become :class:`Scale` nodes (named ``"<node>.gain"``) before
    the neuron. The layers hold plain float values (``qconfig=None``) except the
    activation quantizers recorded by :func:`export`.

    Args:
        graph: a :class:`nir.NIRGraph`, or the path of a NIR file (``nir.write``).
        dt: the time step in the unit of the graph's time constants; ``None`` takes the
            one :func:`export` recorded, else 1.0.
        discretization: ``"exact"`` or ``"euler"``; ``None`` takes the recorded one,
            else ``"exact"``.

    Returns:
        NIRModule: runs inputs of shape ``(N, T, *)``.

    Raises:
        ImportError: the ``nir`` package is missing (``pip install 'aquatic[nir]'``).
        TypeError: a node type aquatic lacks (the message names the node).
        ValueError: a graph aquatic cannot run (cycles, several inputs, parameters out
            of range, NaN or inf parameters, shapes that disagree along an edge, time
            constants so short against ``dt`` that the decay underflows to 0; the message
            names the node), or malformed aquatic metadata (the message names the key).

    Example:
        >>> import pytest; _ = pytest.importorskip("nir")  # needs aquatic[nir]
        >>> import torch, aquatic
        >>> model = torch.nn.Sequential(aquatic.nn.Linear(4, 3), aquatic.nn.LIF(tau_mem=10.0))
        >>> loaded = aquatic.interop.nir.load(aquatic.interop.nir.export(model))
        >>> x = torch.rand(2, 20, 4)
        >>> torch.equal(loaded(x), model(x))
        True
    """
    nir = _nir()
    if isinstance(graph, (str, os.PathLike)):
        graph = nir.read(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"graph must be a nir.NIRGraph or a file path, got {type(graph).__name__}")
    check_metadata(graph, text)
    metadata = metadata_of(graph)
    if dt is None:
        dt = float(metadata.get("dt", 1.0))
    if discretization is None:
        discretization = text(metadata.get("discretization", "exact"))
    loader = Loader(nir, _check_dt(dt), _check_discretization(discretization), metadata)
    inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"load takes graphs with one Input and one Output node, got inputs {inputs} and "
            f"outputs {outputs}"
        )
    loops = recurrent_loops(nir, graph)
    if loops:  # the rest of the graph without the loops; each loop joins its neurons
        loop_nodes = {weights for weights, _ in loops.values()}
        graph = SimpleNamespace(
            nodes={k: v for k, v in graph.nodes.items() if k not in loop_nodes},
            edges=[e for e in graph.edges if not loop_nodes & {text(v) for v in e}],
        )
        loader.recurrent = {neuron: weights for neuron, (_, weights) in loops.items()}
    order, sources = topological_order(graph)
    check_graph(nir, graph, sources)
    targets: Dict[str, List[str]] = {name: [] for name in graph.nodes}
    for name, incoming in sources.items():
        for source in incoming:
            targets[source].append(name)
    # LI -> IF, as export writes a synaptic IAF, loads as one IAF(alpha_syn=...) again.
    fused: Dict[str, str] = {}  # IF node -> its LI node
    for name, node in graph.nodes.items():
        incoming = sources[name]
        if len(incoming) == 1 and targets[incoming[0]] == [name]:
            if loader.fusable(graph.nodes[incoming[0]], node):
                fused[name] = incoming[0]
    nodes: List[Tuple[str, nn.Module]] = []
    edges: List[Tuple[str, str]] = []
    for name in order:
        node = graph.nodes[name]
        if name in inputs + outputs or name in fused.values():
            continue
        if isinstance(node, nir.NIRGraph):
            raise TypeError(f"node {name!r} is a nested NIRGraph, which load does not support")
        if name in fused:
            incoming = sources[fused[name]]
            layer, gain = loader.synaptic_iaf(name, graph.nodes[fused[name]], node)
        else:
            incoming = sources[name]
            layer, gain = loader.build(name, node)
        if gain is not None:
            gain_name = f"{name}.gain"
            nodes.append((gain_name, Scale(torch.tensor(gain, dtype=torch.float32))))
            edges += [(source, gain_name) for source in incoming]
            incoming = [gain_name]
        nodes.append((name, layer))
        edges += [(source, name) for source in incoming]
    edges += [(source, outputs[0]) for source in sources[outputs[0]]]
    return NIRModule(nodes, edges, input_name=inputs[0], output_name=outputs[0])
