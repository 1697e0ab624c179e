r"""Export conventional quantization-aware models to ONNX with Q/DQ pairs.

:func:`export` writes the model in ONNX's "QDQ" format: every quantized tensor passes
through a ``QuantizeLinear`` -> ``DequantizeLinear`` pair carrying its scale and zero
point (per axis for per-channel quantizers), which onnxruntime and TensorRT turn into
integer kernels. In detail:

- **Weights** are the quantized values ``forward`` uses
  (:meth:`~aquatic.nn.QuantizedModule.quantize_params`), followed by a Q/DQ pair with
  the weight quantizer's scale and zero point, so the codes ONNX sees are exactly
  aquatic's (binary and ternary weights included, as codes in ``{-1, 0, 1}`` times their
  scale).
- **Activations** (``QConfig.activation``, :class:`~aquatic.nn.ActivationQuantizer` and
  quantizers placed anywhere in the model) become Q/DQ pairs on the activation.
  ``QuantizeLinear`` rounds half to even, as ``rounding="nearest"`` does: an activation
  quantizer with ``rounding="floor"`` is refused (``ValueError``), and one with
  ``rounding="stochastic"`` exports as nearest, with a ``UserWarning`` (as the integer
  model of :func:`aquatic.convert` does).
- **Biases** are kept as float constants holding their quantized values (on the
  quantizer's grid, e.g. :class:`~aquatic.quantizers.AccumulatorBiasQuantizer`'s int32
  grid), which integer back ends requantize themselves.
- Parameters quantized with :func:`aquatic.quantize_parameter` get a Q/DQ pair like weights.

Bit widths: opset 13's ``QuantizeLinear`` produces ``int8`` or ``uint8`` codes. A
quantizer with a narrower range (4 bits, or 8-bit ``narrow_range``) uses that container
(``uint8`` when its codes are non-negative, else ``int8``) with a ``Clip`` to its own
range before ``QuantizeLinear``, which gives the same codes. Weight and activation
quantizers wider than 8 bits raise a ``ValueError``.

Numerics: the graph computes in float between the Q/DQ pairs, so onnxruntime matches
aquatic bit for bit only where every float operation is exact, which holds when
``aquatic.convert(model).exact`` is ``True`` (every scale a power of two, biases on the
accumulator grid, every accumulator below :math:`2^{24}` steps): then with graph
optimizations off (reasoned: each product, sum and division by a scale is exact) and
with onnxruntime's default optimizations (measured). Otherwise no bound holds a priori:
onnxruntime sums each convolution in another order than torch, which flips codes at
rounding boundaries, and with its default optimizations it replaces Q/DQ patterns by
integer kernels that requantize (and quantize float biases) their own way; the flips
grow with depth. Measured on 20-layer inverted-residual nets with int8 per-channel
weights and arbitrary scales (``tests/interop/test_onnx_qdq_bound.py``): up to 8
output steps with optimizations off (99.6 % of outputs exact), up to 11 with default
optimizations (argmax agreement 0.979 or better). For exact ONNX, export the integer
model with :func:`export_integer` (integer operators, equal to
:func:`aquatic.convert`'s model in onnxruntime at every optimization level).

Spiking layers have no ONNX form here: export them with :mod:`aquatic.interop.nir`.
The export uses torch's TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``), which needs no extra packages and maps fake quantization to Q/DQ pairs.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from aquatic.fuse import fold_fused
from aquatic.model_float import copy_model
from aquatic.functional.fake_quant import broadcast_along
from aquatic.functional.grid import Grid
from aquatic.interop._common import export_grid, require
from aquatic.interop.onnx_integer import export_integer
from aquatic.interop.onnx_opset import check_opset, write_lowest
from aquatic.nn.base import QuantizedModule
from aquatic.nn.neuron_base import NeuronModule
from aquatic.quantizers.base import Quantizer

__all__ = ["export", "export_integer", "QuantDequant"]

#: The integer containers of opset 13's QuantizeLinear: (quant_min, quant_max).
UINT8 = (0, 255)
INT8 = (-128, 127)


def _container(grid: Grid, where: str) -> Tuple[int, int]:
    for low, high in (UINT8, INT8):
        if low <= grid.quant_min and grid.quant_max <= high:
            return low, high
    raise ValueError(
        f"{where}: the quantizer's codes span [{grid.quant_min}, {grid.quant_max}], wider "
        "than the 8-bit codes of ONNX QuantizeLinear (opset 13); use at most 8 bits for "
        "weights and activations you export to ONNX"
    )


class QuantDequant(nn.Module):
    """Fake quantization that the ONNX exporter writes as ``QuantizeLinear`` ->
    ``DequantizeLinear`` (with a ``Clip`` first when the grid is narrower than its
    8-bit container).

    Equal to the aquatic quantizer it replaces for nearest rounding: the same scale,
    zero point and range.

    Args:
        grid: scale, zero point, range and channel axis (a quantizer's ``grid()``).
        where: what the quantizer quantizes, for error messages.
        clip: clip to the grid's range when it is narrower than the container; ``False``
            for values known to lie on the grid already (baked weights).

    Shape:
        - Input: any shape (per channel: ``ch_axis`` indexes the channels). Output: the same.

    Example:
        >>> from aquatic.quantizers import UniformQuantizer
        >>> q = UniformQuantizer(bits=4, scale=0.5)
        >>> qdq = QuantDequant.from_quantizer(q)
        >>> qdq
        QuantDequant(container=int8, clips=True)
        >>> x = torch.tensor([-9.0, 0.3, 0.8, 9.0])
        >>> qdq(x), q(x)
        (tensor([-4.0000,  0.5000,  1.0000,  3.5000]), tensor([-4.0000,  0.5000,  1.0000,  3.5000]))
    """

    def __init__(self, grid: Grid, where: str = "quantizer", clip: bool = True) -> None:
        super().__init__()
        self.container = _container(grid, where)
        self.clips = bool(clip) and (grid.quant_min, grid.quant_max) != self.container
        self.ch_axis = grid.ch_axis
        zero_point = grid.zero_point.to(torch.int32)
        if bool(((zero_point < self.container[0]) | (zero_point > self.container[1])).any()):
            raise ValueError(f"{where}: zero point {zero_point.tolist()} outside its container")
        self.register_buffer("scale", grid.scale.float().clone())
        self.register_buffer("zero_point", zero_point.clone())
        # The real values of the grid's ends, as aquatic dequantizes them (float32).
        self.register_buffer("low", (grid.quant_min - zero_point).float() * self.scale)
        self.register_buffer("high", (grid.quant_max - zero_point).float() * self.scale)
        # Python floats for the per-tensor Clip, so that tracing records constants.
        self._bounds = (float(self.low.reshape(-1)[0]), float(self.high.reshape(-1)[0]))

    @classmethod
    def from_quantizer(
        cls, quantizer: nn.Module, where: str = "quantizer", clip: bool = True
    ) -> "QuantDequant":
        """The Q/DQ of a uniform affine ``quantizer`` with its current ``grid()``."""
        return cls(export_grid(quantizer, where), where, clip)

    def _view(self, value: Tensor, input: Tensor) -> Tensor:
        return broadcast_along(value, self.ch_axis, input.dim())

    def forward(self, input: Tensor) -> Tensor:
        if self.clips:
            if self.ch_axis is None:
                input = torch.clamp(input, *self._bounds)
            else:
                input = torch.minimum(
                    torch.maximum(input, self._view(self.low, input)), self._view(self.high, input)
                )
        low, high = self.container
        if self.ch_axis is None:
            return torch.fake_quantize_per_tensor_affine(
                input, self.scale, self.zero_point, low, high
            )
        return torch.fake_quantize_per_channel_affine(
            input, self.scale, self.zero_point, self.ch_axis % input.dim(), low, high
        )

    def extra_repr(self) -> str:
        kind = "uint8" if self.container == UINT8 else "int8"
        axis = f", ch_axis={self.ch_axis}" if self.ch_axis is not None else ""
        return f"container={kind}, clips={self.clips}{axis}"


def _active(quantizer: nn.Module) -> bool:
    return getattr(quantizer, "fake_quant_enabled", True)


def _activation_qdq(quantizer: nn.Module, where: str, stochastic: list) -> "QuantDequant":
    """The Q/DQ of an activation quantizer, which rounds what it receives: ONNX's
    QuantizeLinear rounds half to even, so floor rounding is refused and stochastic
    rounding is noted (in ``stochastic``) to export as nearest."""
    rounding = getattr(quantizer, "rounding", "nearest")
    if rounding == "floor":
        raise ValueError(
            f"{where} rounds down (rounding='floor'), but ONNX QuantizeLinear rounds half "
            "to even, so the exported graph would compute other codes. Quantize this "
            "activation with rounding='nearest' (and fine-tune), or run the integer model "
            "(aquatic.convert), which rounds down as trained"
        )
    if rounding == "stochastic":
        stochastic.append(where)
    return QuantDequant.from_quantizer(quantizer, where)


def _prepare_layer(name: str, module: QuantizedModule, stochastic: list) -> None:
    """Bake quantized parameters into ``module`` and put Q/DQ modules in its quantizers."""
    try:
        values = module.quantize_params()
    except RuntimeError as error:  # a scale that only a forward pass sets
        raise ValueError(
            f"layer {name!r}: {error}; run the model on some data (calibration) before exporting"
        ) from None
    for key in list(module.quantizers.keys()):
        quantizer = module.quantizers[key]
        where = f"layer {name!r}: {key} quantizer"
        if not _active(quantizer):
            del module.quantizers[key]
            continue
        if key == "activation" or key in module._quantized_states:  # signals, not parameters
            module.quantizers[key] = _activation_qdq(quantizer, where, stochastic)
            continue
        param = getattr(module, key, None)
        if not isinstance(param, Tensor):
            del module.quantizers[key]
            continue
        with torch.no_grad():
            param.copy_(values[key])
        if key == "bias":
            del module.quantizers[key]  # a float constant on the bias grid
        else:
            module.quantizers[key] = QuantDequant.from_quantizer(quantizer, where, clip=False)


def _prepare_parametrizations(name: str, module: nn.Module) -> None:
    """Parameters quantized with :func:`aquatic.quantize_parameter` get Q/DQ pairs."""
    for key in list(module.parametrizations.keys()):
        chain = module.parametrizations[key]
        if len(chain) != 1 or not isinstance(chain[0], Quantizer):
            continue
        quantizer = chain[0]
        where = f"{name or type(module).__name__}.{key} quantizer"
        value = getattr(module, key).detach().clone()
        # The parametrization is swapped in place: removing it would change the class
        # that this copy shares with the original module.
        chain.original.copy_(value)
        if _active(quantizer):
            chain[0] = QuantDequant.from_quantizer(quantizer, where, clip=False)
        else:
            chain[0] = nn.Identity()


def _export_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every quantizer as a :class:`QuantDequant`."""
    for name, module in model.named_modules():
        if isinstance(module, NeuronModule):
            raise TypeError(
                f"layer {name!r} is a spiking layer ({type(module).__name__}); ONNX export "
                "covers conventional layers: export spiking models with "
                "aquatic.interop.nir.export"
            )
    # A fused batch-norm layer exports as its folded layer (what it computes in eval).
    model = fold_fused(copy_model(model), inplace=True).eval()
    stochastic: list = []
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedModule):
            with torch.no_grad():
                _prepare_layer(name, module, stochastic)
        elif parametrize.is_parametrized(module):
            with torch.no_grad():
                _prepare_parametrizations(name, module)
    # Quantizers used directly as modules (on activations) anywhere else.
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Quantizer):
                full = f"{name}.{child_name}" if name else child_name
                replacement: nn.Module = nn.Identity()
                if _active(child):
                    replacement = _activation_qdq(child, f"quantizer {full!r}", stochastic)
                setattr(module, child_name, replacement)
    if stochastic:
        warnings.warn(
            f"{'; '.join(stochastic)}: rounding='stochastic' is for training; the ONNX "
            "export rounds to nearest (half to even), as the integer model of aquatic.convert "
            "does",
            UserWarning,
            stacklevel=3,
        )
    return model


def export(
    model: nn.Module,
    example_input: Union[Tensor, Tuple[Tensor, ...]],
    path: Union[str, os.PathLike],
    opset: Optional[int] = None,
    *,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
    dynamic_batch: bool = True,
) -> Any:
    """Write ``model`` to ``path`` as ONNX with QuantizeLinear/DequantizeLinear pairs.

    See the module docstring for what becomes a Q/DQ pair and how bit widths map. The
    model itself is left untouched (a copy is exported, in eval mode); its quantizers
    must have their scales (run it on some data first).

    Args:
        model: a conventional quantization-aware model (aquatic layers, torch layers,
            parameters quantized with :func:`aquatic.quantize_parameter`).
        example_input: an input (or a tuple of inputs) to trace the model with.
        path: the ``.onnx`` file to write.
        opset: the ONNX opset, 13 or newer (per-axis QuantizeLinear needs 13); ``None``
            (default) writes the lowest opset from 13 on that holds every operator of
            the model (e.g. 14 for ``torch.tril``, whose ``Trilu`` appeared in opset 14).
        input_names: names of the graph's inputs (default ``input``, ``input_1``, ...).
        output_names: names of the graph's outputs (default ``output``, ...).
        dynamic_batch: let the first axis of every input and output vary.

    Returns:
        onnx.ModelProto: the model written, checked with ``onnx.checker``.

    Raises:
        ImportError: ``onnx`` is missing (``pip install 'aquatic[onnx]'``).
        TypeError: a spiking layer (use :mod:`aquatic.interop.nir`), or a bad argument.
        ValueError: a quantizer that ONNX cannot express (wider than 8 bits, not affine,
            no scale yet, an activation rounded down), or an ``opset`` older than an
            operator of the model needs; the message names it.

    Example:
        >>> import pytest; _ = pytest.importorskip("onnx")  # needs aquatic[onnx]
        >>> import torch, aquatic, tempfile, os
        >>> model = torch.nn.Sequential(
        ...     aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int8), torch.nn.ReLU()
        ... )
        >>> _ = model(torch.randn(8, 4))  # observe ranges
        >>> path = os.path.join(tempfile.mkdtemp(), "model.onnx")
        >>> proto = aquatic.interop.onnx.export(model, torch.randn(1, 4), path)
        >>> [node.op_type for node in proto.graph.node if "Linear" in node.op_type]
        ['QuantizeLinear', 'DequantizeLinear', 'QuantizeLinear', 'DequantizeLinear']
    """
    onnx = require("onnx", "onnx", "aquatic.interop.onnx")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    opset = check_opset(opset, "the Q/DQ export")
    inputs = (example_input,) if isinstance(example_input, Tensor) else tuple(example_input)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise TypeError("example_input must be a tensor or a tuple of tensors")
    exported = _export_copy(model)
    with torch.no_grad():
        outputs = exported(*inputs)
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    input_names = list(
        input_names or [f"input{'_' + str(i) if i else ''}" for i in range(len(inputs))]
    )
    output_names = list(
        output_names or [f"output{'_' + str(i) if i else ''}" for i in range(count)]
    )
    axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None

    def write(version: int) -> None:
        with warnings.catch_warnings():
            # torch marks its TorchScript-based exporter as deprecated; it is the one that
            # maps fake quantization to Q/DQ without extra packages.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed")
            torch.onnx.export(
                exported,
                inputs,
                os.fspath(path),
                opset_version=version,
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=axes,
            )

    write_lowest(write, opset)
    proto = onnx.load(os.fspath(path))
    onnx.checker.check_model(proto)
    return proto
