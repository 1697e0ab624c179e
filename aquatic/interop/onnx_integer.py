r"""Export the integer model of :func:`aquatic.convert` to ONNX with integer operators.

:func:`export_integer` writes an :class:`~aquatic.integer.IntegerModel` so that
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
- ReLU on codes ``Max``; max pooling as float64 (exact for every ``int32``); sum pooling,
  flatten/unflatten and sums over a dimension (:mod:`aquatic.interop.onnx_pooling`).

One function per integer module class writes its nodes (the registry of
:mod:`aquatic.interop.onnx_graph`). Spiking and recurrent integer modules carry a state
from step to step, which this export does not write: they are refused (export spiking
models with :mod:`aquatic.interop.nir`).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple, Union

import torch
from torch import Tensor

from aquatic.integer.model import IntegerModel
from aquatic.integer.recurrent import FixedSum, IntegerGRU, IntegerLSTM
from aquatic.integer.spiking import IntegerNeuron
from aquatic.interop._common import require
from aquatic.interop.onnx_graph import EMITTERS, GraphBuilder, Value, emit, onnx_type
from aquatic.interop import onnx_accumulate, onnx_pooling, onnx_requant  # noqa: F401 (emitters)

__all__ = ["export_integer"]

_STATEFUL = (IntegerNeuron, IntegerGRU, IntegerLSTM, FixedSum)


def _check_layers(model: IntegerModel) -> None:
    for layer in model.layers:
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


def export_integer(
    model: IntegerModel,
    path: Union[str, os.PathLike],
    example_input: Tensor,
    opset: int = 13,
    *,
    input_name: str = "input",
    output_name: str = "output",
    dynamic_batch: bool = True,
) -> Any:
    """Write an integer model to ``path`` as ONNX that onnxruntime runs exactly.

    See the module docstring for the operators. The graph's input is the model's input
    codes as ``int32`` (the other axes as in ``example_input``; the first may vary with
    ``dynamic_batch``), its output the model's output codes in the integer model's type.

    Args:
        model: the :class:`~aquatic.integer.IntegerModel` that :func:`aquatic.convert`
            returned (conventional layers: linear, convolutions, requantization, ReLU,
            pooling, flatten).
        path: the ``.onnx`` file to write.
        example_input: integer codes the model accepts (e.g.
            ``model.quantize_input(x)``), to fix the shapes.
        opset: the ONNX opset, 13 or newer.
        input_name, output_name: names of the graph's input and output.
        dynamic_batch: let the first axis vary.

    Returns:
        onnx.ModelProto: the model written, checked with ``onnx.checker``.

    Raises:
        ImportError: ``onnx`` is missing (``pip install 'aquatic[onnx]'``).
        TypeError: not an integer model or not integer codes; a layer with a state
            (spiking, recurrent) or without an exact ONNX form, named.
        ValueError: a layer whose arithmetic no exact onnxruntime kernel holds (sums
            beyond float32's exact integers in a convolution with codes wider than 8
            bits, an accumulator that could pass int32), named with the fix.

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
    if not isinstance(model, IntegerModel):
        raise TypeError(
            f"model must be an aquatic.integer.IntegerModel (aquatic.convert's result), got "
            f"{type(model).__name__}; for a quantization-aware model use "
            "aquatic.interop.onnx.export, or convert it first"
        )
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset must be an int of 13 or more, got {opset!r}")
    if not isinstance(example_input, Tensor) or example_input.is_floating_point():
        raise TypeError(
            "example_input must be a tensor of integer codes (model.quantize_input(x)), got "
            f"{getattr(example_input, 'dtype', type(example_input).__name__)}"
        )
    if example_input.dim() == 0:
        raise ValueError("example_input needs a batch axis (at least one dimension)")
    _check_layers(model)
    codes = example_input.to(torch.int32)
    shapes, output = _output_shapes(model, codes)
    builder = GraphBuilder(onnx)
    spec = model.input_spec
    value = Value(input_name, torch.int32, tuple(codes.shape), spec.low, spec.high)
    builder.fresh(input_name)
    for layer, shape in zip(model.layers, shapes):
        value = emit(builder, layer, [value], shape)
    builder.nodes.append(
        onnx.helper.make_node("Cast", [value.name], [output_name], to=onnx_type(onnx, output.dtype))
    )
    batch = "batch" if dynamic_batch else codes.shape[0]
    graph = onnx.helper.make_graph(
        builder.nodes,
        "aquatic_integer",
        [
            onnx.helper.make_tensor_value_info(
                input_name, onnx_type(onnx, torch.int32), [batch] + list(codes.shape[1:])
            )
        ],
        [
            onnx.helper.make_tensor_value_info(
                output_name, onnx_type(onnx, output.dtype), [batch] + list(output.shape[1:])
            )
        ],
        builder.initializers,
    )
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        producer_name="aquatic",
    )
    onnx.checker.check_model(proto)
    onnx.save(proto, os.fspath(path))
    return proto
