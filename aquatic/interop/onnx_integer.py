r"""Export the integer model of :func:`aquatic.convert` to ONNX with integer operators.

:func:`export_integer` writes an :class:`~aquatic.integer.IntegerModel` (a chain) or an
:class:`~aquatic.integer.IntegerGraph` (a traced forward, see
:mod:`aquatic.interop.onnx_dataflow`) so that
onnxruntime computes exactly what the integer model computes, element for element, with
graph optimizations off and with its default optimizations: the graph takes the input
codes (``int32``, as :meth:`~aquatic.integer.IntegerModel.quantize_input` returns them)
and returns the output codes (dequantize them with
:meth:`~aquatic.integer.IntegerModel.dequantize_output`). Unlike the Q/DQ export of
:func:`aquatic.interop.onnx.export`, nothing in the graph computes in float where
rounding could differ:

- accumulators: ``MatMulInteger`` / ``ConvInteger`` (``uint8`` operands with zero
  points, explicit ``Pad`` with the input's zero point) where codes and weights span at
  most 256 values; otherwise ``MatMul`` in ``int64`` (linear layers) or a float32 ``Conv``
  that the export certifies exact (every partial sum an integer below :math:`2^{24}`),
  and a refusal where neither holds. The left shift and the bias are added in ``int64``.
- requantization: ``Mul`` by the integer multiplier and a rounding right shift written
  with ``Mod``/``Div``/``Equal`` on ``int64`` (half to even or floor, as
  :func:`~aquatic.integer.requant.multiply_shift`), saturation with ``Max``/``Min``
  (see :mod:`aquatic.interop.onnx_requant`).
- additions, products and concatenations of codes on different grids, clamps, sums
  and averages over axes: ``int64`` arithmetic with the same rounding shift
  (:mod:`aquatic.interop.onnx_combine`, :mod:`aquatic.interop.onnx_average`).
- ReLU on codes ``Max``; max pooling as float64 (exact for every ``int32``); sum pooling,
  flatten/unflatten and sums over a dimension (:mod:`aquatic.interop.onnx_pooling`).

One function per integer module class writes its nodes (the registry of
:mod:`aquatic.interop.onnx_graph`). Spiking and recurrent integer modules carry a state
from step to step, which this export does not write: they are refused (export spiking
models with :mod:`aquatic.interop.nir`).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from aquatic.integer.graph import IntegerGraph
from aquatic.integer.model import IntegerModel
from aquatic.integer.recurrent import FixedSum, IntegerGRU, IntegerLSTM, IntegerRNN
from aquatic.integer.recurrent_stack import IntegerRecurrentStack
from aquatic.integer.spiking import IntegerNeuron
from aquatic.interop._common import require
from aquatic.interop.onnx_dataflow import flat_values, write_dataflow
from aquatic.interop.onnx_graph import EMITTERS, GraphBuilder, Value, emit, onnx_type
from aquatic.interop.onnx_opset import check_opset, required_opset
from aquatic.interop import onnx_accumulate, onnx_pooling, onnx_requant  # noqa: F401 (emitters)
from aquatic.interop import onnx_average, onnx_combine  # noqa: F401 (emitters)

__all__ = ["export_integer"]

_STATEFUL = (IntegerNeuron, IntegerRNN, IntegerGRU, IntegerLSTM, IntegerRecurrentStack, FixedSum)


def _check_layers(layers: Sequence[torch.nn.Module]) -> None:
    for layer in layers:
        if isinstance(layer, _STATEFUL):
            raise TypeError(
                f"layer {layer.name!r} ({type(layer).__name__}) carries a state from step to "
                "step, which the integer ONNX export does not write; export spiking models "
                "with aquatic.interop.nir.export"
            )
        if type(layer) not in EMITTERS:
            known = ", ".join(sorted(cls.__name__ for cls in EMITTERS))
            raise TypeError(
                f"layer {layer.name!r} ({type(layer).__name__}) has no exact ONNX form; "
                f"the integer ONNX export writes {known}"
            )


def _output_shapes(model: IntegerModel, codes: Tensor) -> Tuple[List[Tuple[int, ...]], Tensor]:
    """The output shape of every layer for ``codes``, and the model's output."""
    shapes: Dict[int, Tuple[int, ...]] = {}

    def record(module, args, output):
        shapes[id(module)] = tuple(output.shape)

    handles = [layer.register_forward_hook(record) for layer in model.layers]
    try:
        with torch.no_grad():
            output = model(codes)
    finally:
        for handle in handles:
            handle.remove()
    return [shapes[id(layer)] for layer in model.layers], output


def _chain(builder: GraphBuilder, model: IntegerModel, value: Value, codes: Tensor):
    """Write the layers of a chain; returns the last value and the model's output."""
    shapes, output = _output_shapes(model, codes)
    for layer, shape in zip(model.layers, shapes):
        value = emit(builder, layer, [value], shape)
    return value, output


def _names(base: str, count: int) -> List[str]:
    return [base] + [f"{base}_{i}" for i in range(1, count)]


def _finish(onnx, builder, inputs, outputs, opset: Optional[int]) -> Any:
    """The model proto of the nodes built, at ``opset`` or the lowest that holds them."""
    needed = required_opset(onnx, [node.op_type for node in builder.nodes])
    if opset is None:
        opset = needed
    elif opset < needed:
        ops = sorted(
            {n.op_type for n in builder.nodes if required_opset(onnx, [n.op_type]) > opset}
        )
        raise ValueError(
            f"opset {opset} is too old for this model: {', '.join(ops)} need opset {needed}; "
            f"use opset={needed} or opset=None (chosen automatically)"
        )
    graph = onnx.helper.make_graph(
        builder.nodes, "aquatic_integer", inputs, outputs, builder.initializers
    )
    proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", opset)], producer_name="aquatic"
    )
    onnx.checker.check_model(proto)
    return proto


def export_integer(
    model: Union[IntegerModel, IntegerGraph],
    path: Union[str, os.PathLike],
    example_input: Union[Tensor, Tuple[Tensor, ...]],
    opset: Optional[int] = None,
    *,
    input_name: str = "input",
    output_name: str = "output",
    dynamic_batch: bool = True,
) -> Any:
    """Write an integer model to ``path`` as ONNX that onnxruntime runs exactly.

    See the module docstring for the operators, and :mod:`aquatic.interop.onnx_dataflow`
    for how the steps of an :class:`~aquatic.integer.IntegerGraph` (residual additions,
    concatenations, products, reshapes, indexing) are written. The graph's inputs are the
    model's input codes as ``int32`` (the other axes as in ``example_input``; the first
    may vary with ``dynamic_batch``), its outputs the model's output codes in the integer
    model's type.

    Args:
        model: the :class:`~aquatic.integer.IntegerModel` or
            :class:`~aquatic.integer.IntegerGraph` that :func:`aquatic.convert` returned
            (conventional layers: linear, convolutions, requantization, ReLU, clamps,
            pooling, averages, additions, products, concatenations, moves of codes).
        path: the ``.onnx`` file to write.
        example_input: integer codes the model accepts (e.g.
            ``model.quantize_input(x)``; a tuple for a graph with several inputs), to fix
            the shapes.
        opset: the ONNX opset, 13 or newer; ``None`` (default) writes the lowest opset
            that holds every operator used.
        input_name, output_name: names of the graph's input and output; further inputs
            and outputs of a graph are named ``input_1``, ``output_1``, ...
        dynamic_batch: let the first axis vary.

    Returns:
        onnx.ModelProto: the model written, checked with ``onnx.checker``.

    Raises:
        ImportError: ``onnx`` is missing (``pip install 'aquatic[onnx]'``).
        TypeError: not an integer model or not integer codes; a layer with a state
            (spiking, recurrent) or without an exact ONNX form, named.
        ValueError: a layer whose arithmetic no exact onnxruntime kernel holds (sums
            beyond float32's exact integers in a convolution with codes wider than 8
            bits, an accumulator that could pass int32), named with the fix; an opset
            older than the operators need.

    Example:
        >>> import pytest; _ = pytest.importorskip("onnx"); ort = pytest.importorskip("onnxruntime")
        >>> import torch, aquatic, tempfile, os
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(
        ...     aquatic.nn.ActivationQuantizer(qconfig=aquatic.qconfig.int8),
        ...     aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int8), torch.nn.ReLU())
        >>> _ = model(torch.randn(8, 4))  # observe ranges
        >>> integer_model = aquatic.convert(model.eval())
        >>> codes = integer_model.quantize_input(torch.randn(5, 4))
        >>> path = os.path.join(tempfile.mkdtemp(), "int.onnx")
        >>> proto = aquatic.interop.onnx.export_integer(integer_model, path, codes)
        >>> "MatMulInteger" in [node.op_type for node in proto.graph.node]
        True
        >>> session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        >>> out = session.run(None, {"input": codes.numpy()})[0]
        >>> bool((torch.from_numpy(out) == integer_model(codes)).all())
        True
    """
    onnx = require("onnx", "onnx", "aquatic.interop.onnx.export_integer")
    if not isinstance(model, (IntegerModel, IntegerGraph)):
        raise TypeError(
            f"model must be an aquatic.integer.IntegerModel or IntegerGraph (aquatic.convert's "
            f"result), got {type(model).__name__}; for a quantization-aware model use "
            "aquatic.interop.onnx.export, or convert it first"
        )
    opset = check_opset(opset, "the integer ONNX export")
    examples = (example_input,) if isinstance(example_input, Tensor) else example_input
    if not isinstance(examples, (tuple, list)) or not examples:
        raise TypeError("example_input must be a tensor of integer codes or a tuple of them")
    for x in examples:
        if not isinstance(x, Tensor) or x.is_floating_point():
            raise TypeError(
                "example_input must be a tensor of integer codes (model.quantize_input(x)), "
                f"got {getattr(x, 'dtype', type(x).__name__)}"
            )
        if x.dim() == 0:
            raise ValueError("example_input needs a batch axis (at least one dimension)")
    graph = isinstance(model, IntegerGraph)
    _check_layers(list(model.ops.values()) if graph else model.layers)
    specs = model.input_specs if graph else [model.input_spec]
    if len(examples) != len(specs):
        raise TypeError(f"the model takes {len(specs)} inputs, example_input has {len(examples)}")
    codes = [x.to(torch.int32) for x in examples]
    builder = GraphBuilder(onnx)
    names = _names(input_name, len(codes))
    values = []
    for name, x, spec in zip(names, codes, specs):
        builder.fresh(name)
        values.append(Value(name, torch.int32, tuple(x.shape), spec.low, spec.high))
    if graph:
        result, output = write_dataflow(builder, model, values, codes, dynamic_batch)
        results, outputs = flat_values(result), flat_values(output)
    else:
        result, output = _chain(builder, model, values[0], codes[0])
        results, outputs = [result], [output]
    if not all(isinstance(v, Value) for v in results):
        raise TypeError("every output of the integer model must be a tensor of codes")
    batch = "batch" if dynamic_batch else codes[0].shape[0]
    out_names = _names(output_name, len(results))
    for value, name, out in zip(results, out_names, outputs):
        builder.nodes.append(
            onnx.helper.make_node("Cast", [value.name], [name], to=onnx_type(onnx, out.dtype))
        )
    graph_inputs = [
        onnx.helper.make_tensor_value_info(
            name, onnx_type(onnx, torch.int32), [batch] + list(x.shape[1:])
        )
        for name, x in zip(names, codes)
    ]
    graph_outputs = [
        onnx.helper.make_tensor_value_info(
            name, onnx_type(onnx, out.dtype), [batch] + list(out.shape[1:])
        )
        for name, out in zip(out_names, outputs)
    ]
    proto = _finish(onnx, builder, graph_inputs, graph_outputs, opset)
    onnx.save(proto, os.fspath(path))
    return proto
