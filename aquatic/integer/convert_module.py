"""Converting one module to its integer modules, and reading the model's input scale.

:func:`convert_module` is the step that :func:`aquatic.convert` takes for each layer, in
an ``nn.Sequential`` and in a traced graph alike.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.build import build_accumulator, build_requantize
from aquatic.integer.build_sequence import SEQUENCE_LAYERS, build_sequence_layer, index_spec
from aquatic.integer.build_activation import CLAMPS, build_activation
from aquatic.integer.build_pooling import (
    build_adaptive_pool,
    build_window_sum,
    with_output_quantizer,
)
from aquatic.integer.build_reshape import build_common_scale
from aquatic.integer.build_spiking import build_neuron
from aquatic.integer.build_norm import build_layer_norm
from aquatic.integer.build_transformer import encoder_module
from aquatic.integer.reading import describe, read_grid
from aquatic.integer.layers import IntegerReLU
from aquatic.integer.pooling import IntegerMaxPool, IntegerReshape, IntegerSum, IntegerSumPool
from aquatic.integer.requant import is_power_of_two
from aquatic.nn import ActivationQuantizer, Embedding, EmbeddingBag, LIFCell, NeuronModule
from aquatic.nn import AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d, Sum, SumPool1d, SumPool2d
from aquatic.nn import AdaptiveAvgPool1d, AdaptiveAvgPool2d
from aquatic.nn.fused_bn import FusedBatchNorm
from aquatic.nn.twin import TorchTwin

__all__ = ["PASSIVE", "TRANSFORMERS", "convert_module", "input_spec", "refuse_in_chain"]

#: Transformer layers and stacks: encoders convert in a chain; decoders, which take two
#: inputs, are refused by name there (they convert in a traced graph).
TRANSFORMERS = (
    nn.TransformerEncoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoder,
    nn.TransformerDecoderLayer,
)

#: Modules that do nothing at inference.
PASSIVE = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_MAXPOOL = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_AVGPOOL = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
# The aquatic pooling twins (time axis, output quantizer) and sum pooling.
_MAXPOOL.update({MaxPool1d: 1, MaxPool2d: 2})
_AVGPOOL.update({AvgPool1d: 1, AvgPool2d: 2})
_SUMPOOL = {SumPool1d: 1, SumPool2d: 2}
_SUPPORTED = (
    "aquatic.nn Linear, Conv1d-3d, ConvTranspose1d-3d, ActivationQuantizer, LIF, "
    "LIFRecurrent, IAF, ExpLeak, RNN, GRU, LSTM, Embedding, EmbeddingBag, SelectOutput, "
    "LastStep, LayerNorm, TransformerEncoderLayer (and torch.nn.TransformerEncoder of "
    "them; TransformerDecoderLayer in a forward of one's own), AvgPool1d/2d, "
    "MaxPool1d/2d, SumPool1d/2d; torch.nn ReLU, ReLU6, Hardtanh, AdaptiveAvgPool1d/2d, MaxPool1d-3d, AvgPool1d-3d, Flatten, "
    "Unflatten, Identity, Dropout, aquatic.nn.Sum (a sum over one dimension, e.g. spike "
    "counts over time: use it instead of a module of one's own that sums)"
)


def _tuple(value, dim: int) -> List[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * dim


def _sum_dim(module: nn.Module) -> Optional[int]:
    """The ``dim`` of an :class:`aquatic.nn.Sum` (known by its type), else ``None``.

    A module of the user's own is never run to guess what it computes: a probe cannot
    tell a sum from a sum followed by a clamp, and would run user code."""
    return module.dim if isinstance(module, Sum) else None


def input_spec(first: nn.Module, layers, input_scale, input_zero_point, input_range):
    """``(spec, rounding, on_grid, notes, consumed)`` for the model's input."""
    if isinstance(first, (Embedding, EmbeddingBag)):  # row indices
        return index_spec(first), "nearest", True, [], False
    if isinstance(first, ActivationQuantizer) and "activation" in first.quantizers:
        if input_scale is not None:
            raise ValueError(
                "the model starts with an ActivationQuantizer, which sets the input scale; "
                "do not pass input_scale as well"
            )
        where = f"{describe(layers[0][0], first)}, quantizer 'activation'"
        notes: List[str] = []
        grid = read_grid(first.quantizers["activation"], where, notes)
        if grid.scale.dim() != 0 or grid.zero_point.dim() != 0:
            raise ValueError(f"{where} quantizes per channel; the input needs one scale")
        spec = QSpec(grid.scale, grid.zero_point, None, grid.quant_min, grid.quant_max)
        return spec, grid.rounding, False, notes, True
    if input_scale is not None:
        if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float)):
            raise TypeError(f"input_scale must be a number, got {input_scale!r}")
        if not (math.isfinite(input_scale) and input_scale > 0):
            raise ValueError(f"input_scale must be positive and finite, got {input_scale!r}")
        low, high = input_range if input_range is not None else (-128, 127)
        scale = float(input_scale)
    elif any(isinstance(m, NeuronModule) for _, m in layers):
        scale, (low, high) = 1.0, input_range if input_range is not None else (0, 255)
    else:
        raise ValueError(
            "aquatic.convert cannot tell the scale of the model's input (its first layer "
            "takes floats as they come). Add an aquatic.nn.ActivationQuantizer as the "
            "model's first module, or pass input_scale= (the grid of the data, e.g. "
            "input_scale=1/16 for values k/16) and, if needed, input_range=(low, high) of "
            "the codes"
        )
    if not (isinstance(low, int) and isinstance(high, int) and low < high):
        raise ValueError(
            f"input_range must be two ints (low, high) with low < high, got {(low, high)!r}"
        )
    if not isinstance(input_zero_point, int) or not low <= input_zero_point <= high:
        raise ValueError(
            f"input_zero_point must be an int inside input_range {(low, high)}, got {input_zero_point!r}"
        )
    notes = []
    if not is_power_of_two(torch.tensor(scale)):
        notes.append(
            f"the input scale {scale:g} is not a power of two: inputs on its grid are only "
            "approximately what the float model sees"
        )
    spec = QSpec(torch.tensor(scale), torch.tensor(input_zero_point), None, low, high)
    return spec, "nearest", True, notes, False


def refuse_in_chain(name: str, module: nn.Module) -> None:
    """Refuse, by name, a layer that takes several inputs, which has no place in an
    ``nn.Sequential`` (checked before the quantizers' ranges: such a layer in a chain
    cannot have seen data).

    Raises:
        TypeError: ``module`` is a ``MultiheadAttention`` or a transformer decoder (layer).
    """
    where = describe(name, module)
    if isinstance(module, (nn.TransformerDecoder, nn.TransformerDecoderLayer)):
        raise TypeError(
            f"{where} takes a target and a memory, two inputs, which have no place in an "
            "nn.Sequential; call it in a forward of your own (self.decoder(tgt, memory)), "
            "which aquatic.convert converts as a graph"
        )
    if isinstance(module, nn.MultiheadAttention):
        raise TypeError(
            f"{where} takes query, key and value and returns a tuple, which has no place in "
            "an nn.Sequential; call it in a forward of your own (out, _ = self.attn(x, x, x)) "
            "or use a TransformerEncoderLayer"
        )


def convert_module(name: str, module: nn.Module, spec: QSpec, state_frac_bits: int):
    """``(modules, spec)`` for one leaf module of the walk."""
    where = describe(name, module)
    source = type(module).__name__
    if isinstance(module, PASSIVE):
        return [], spec
    if isinstance(module, ActivationQuantizer):
        if "activation" not in module.quantizers:
            return [], spec
        requant, spec = build_requantize(
            name, module.quantizers["activation"], spec, f"{where}, quantizer 'activation'", source
        )
        return [requant], spec
    if isinstance(module, SEQUENCE_LAYERS):
        return build_sequence_layer(name, module, spec)
    if isinstance(module, FusedBatchNorm):  # eval: folded weight and bias, quantized
        return build_accumulator(name, module.folded(), spec)
    refuse_in_chain(name, module)
    if isinstance(module, TRANSFORMERS):
        return encoder_module(name, module, spec)
    if isinstance(module, nn.LayerNorm):
        norm, spec = build_layer_norm(name, module, spec)
        return [norm], spec
    if isinstance(module, TorchTwin):
        return build_accumulator(name, module, spec)
    if isinstance(module, LIFCell):
        raise TypeError(
            f"{where} runs one step and returns a state tuple, which has no place in a "
            "sequential integer model; use aquatic.nn.LIF on (N, T, *) sequences"
        )
    if isinstance(module, NeuronModule):
        if spec.scale.dim() == 1 and spec.axis is None:
            raise ValueError(f"{where}: the input's per-channel scale has no axis")
        neuron, spec = build_neuron(name, module, spec, state_frac_bits)
        modules: List[IntegerModule] = [neuron]
        if "activation" in module.quantizers:
            requant, spec = build_requantize(
                f"{name}.activation", module.quantizers["activation"], spec, where, source
            )
            modules.append(requant)
        return modules, spec
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        raise TypeError(
            f"{where} is a float torch.nn layer: its weights have no integer codes. Build it "
            "as its aquatic.nn twin with a qconfig, or use aquatic.quantize(model, qconfig)"
        )
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise TypeError(
            f"{where} has no integer counterpart; fold it into the layer before it with "
            "aquatic.fold_batch_norm, then train (or calibrate) and convert"
        )
    if type(module) in CLAMPS:
        return build_activation(name, module, spec, where)
    if type(module) is nn.ReLU:
        low = None if spec.low is None else max(spec.low, int(spec.zero_point.min()))
        out = QSpec(spec.scale, spec.zero_point, spec.axis, low, spec.high)
        return [IntegerReLU(spec.zero_point, spec.axis, name=name, source=source)], out
    if type(module) in _MAXPOOL:
        dim = _MAXPOOL[type(module)]
        if module.return_indices:
            raise ValueError(
                f"{where} returns indices; the integer model needs return_indices=False"
            )
        pool = IntegerMaxPool(
            dim,
            _tuple(module.kernel_size, dim),
            _tuple(module.stride, dim),
            _tuple(module.padding, dim),
            _tuple(module.dilation, dim),
            module.ceil_mode,
            name=name,
            source=source,
        )
        return with_output_quantizer(name, module, [pool], spec, where)
    if type(module) in _AVGPOOL:
        return with_output_quantizer(name, module, *_sum_pool(name, module, spec, where), where)
    if type(module) in _SUMPOOL:
        return with_output_quantizer(
            name,
            module,
            *build_window_sum(name, module, spec, where, _SUMPOOL[type(module)]),
            where,
        )
    if type(module) in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d) or isinstance(
        module, (AdaptiveAvgPool1d, AdaptiveAvgPool2d)
    ):
        return build_adaptive_pool(name, module, spec, where)
    if isinstance(module, (nn.Flatten, nn.Unflatten)):
        common, spec = build_common_scale(name, spec, where, source)
        if isinstance(module, nn.Flatten):
            op = IntegerReshape(
                "flatten", module.start_dim, module.end_dim, name=name, source=source
            )
        else:
            op = IntegerReshape(
                "unflatten",
                dim=module.dim,
                sizes=list(module.unflattened_size),
                name=name,
                source=source,
            )
        return common + [op], spec
    dim = _sum_dim(module)
    if dim is not None:
        if spec.scale.dim() == 1 or int(spec.zero_point.abs().max()) != 0:
            raise ValueError(
                f"{where} sums codes with a zero point or per-channel scales; quantize its "
                "input symmetrically per tensor first"
            )
        return [IntegerSum(dim, name=name, source=source)], QSpec(spec.scale, spec.zero_point, None)
    raise TypeError(f"{where} has no integer counterpart. Supported: {_SUPPORTED}")


def _sum_pool(name: str, module: nn.Module, spec: QSpec, where: str):
    dim = _AVGPOOL[type(module)]
    kernel = _tuple(module.kernel_size, dim)
    stride = _tuple(module.stride if module.stride else module.kernel_size, dim)
    padding = _tuple(module.padding, dim)
    divisor = getattr(module, "divisor_override", None) or math.prod(kernel)
    if module.ceil_mode or (any(padding) and not module.count_include_pad):
        raise ValueError(
            f"{where} averages windows of different sizes (ceil_mode, or padding without "
            "count_include_pad); the integer model needs one divisor: use ceil_mode=False "
            "and count_include_pad=True"
        )
    notes = []
    if not (is_power_of_two(spec.scale) and is_power_of_two(torch.tensor(float(divisor)))):
        notes.append(f"{where}: the float model rounds the average; it may be one step apart")
    source = type(module).__name__
    pool = IntegerSumPool(
        dim, kernel, stride, padding, spec.zero_point, name=name, notes=notes, source=source
    )
    magnitude = spec.magnitude()
    bound = None if magnitude is None else magnitude * math.prod(kernel)
    out = QSpec(
        spec.scale / divisor,
        torch.tensor(0),
        spec.axis,
        None if bound is None else -bound,
        bound,
    )
    return [pool], out
