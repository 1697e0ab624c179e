"""Model level: :func:`convert` a trained quantization-aware model to integer arithmetic."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from aquatic.walk import sequential_layers
from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.build import build_accumulator, build_requantize
from aquatic.integer.build_sequence import SEQUENCE_LAYERS, build_sequence_layer, index_spec
from aquatic.integer.build_activation import CLAMPS, build_activation, settle_clamp
from aquatic.integer.build_pooling import (
    build_adaptive_pool,
    build_window_sum,
    with_output_quantizer,
)
from aquatic.integer.build_reshape import build_common_scale
from aquatic.integer.build_spiking import build_neuron
from aquatic.integer.reading import check_observed, describe, read_grid
from aquatic.integer.layers import IntegerReLU
from aquatic.integer.pooling import IntegerMaxPool, IntegerReshape, IntegerSum, IntegerSumPool
from aquatic.integer.model import IntegerModel
from aquatic.integer.requant import is_power_of_two
from aquatic.nn import ActivationQuantizer, Embedding, EmbeddingBag, LIFCell, NeuronModule
from aquatic.nn import AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d, Sum, SumPool1d, SumPool2d
from aquatic.nn import AdaptiveAvgPool1d, AdaptiveAvgPool2d
from aquatic.nn.fused_bn import FusedBatchNorm
from aquatic.nn.twin import TorchTwin

__all__ = ["convert"]

#: Modules that do nothing at inference.
_PASSIVE = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_MAXPOOL = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_AVGPOOL = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
# The aquatic pooling twins (time axis, output quantizer) and sum pooling.
_MAXPOOL.update({MaxPool1d: 1, MaxPool2d: 2})
_AVGPOOL.update({AvgPool1d: 1, AvgPool2d: 2})
_SUMPOOL = {SumPool1d: 1, SumPool2d: 2}
_SUPPORTED = (
    "aquatic.nn Linear, Conv1d-3d, ConvTranspose1d-3d, ActivationQuantizer, LIF, "
    "LIFRecurrent, IAF, ExpLeak, GRU, LSTM, Embedding, EmbeddingBag, SelectOutput, "
    "LastStep, AvgPool1d/2d, MaxPool1d/2d, SumPool1d/2d; torch.nn ReLU, "
    "ReLU6, Hardtanh, AdaptiveAvgPool1d/2d, "
    "MaxPool1d-3d, AvgPool1d-3d, Flatten, "
    "Unflatten, Identity, Dropout, aquatic.nn.Sum (a sum over one dimension, e.g. spike "
    "counts over time: use it instead of a module of one's own that sums)"
)


def _layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The leaf modules of (nested) ``nn.Sequential`` containers, with qualified names; a
    layer used twice is converted at each use (each use has an input grid of its own)."""
    return sequential_layers(model, default=type(model).__name__)


def _tuple(value, dim: int) -> List[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * dim


def _sum_dim(module: nn.Module) -> Optional[int]:
    """The ``dim`` of an :class:`aquatic.nn.Sum` (known by its type), else ``None``.

    A module of the user's own is never run to guess what it computes: a probe cannot
    tell a sum from a sum followed by a clamp, and would run user code."""
    return module.dim if isinstance(module, Sum) else None


def _input_spec(first: nn.Module, layers, input_scale, input_zero_point, input_range):
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


def _convert_one(name: str, module: nn.Module, spec: QSpec, state_frac_bits: int):
    """``(modules, spec)`` for one leaf module of the walk."""
    where = describe(name, module)
    source = type(module).__name__
    if isinstance(module, _PASSIVE):
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


def convert(
    model: nn.Module,
    input_scale: Optional[float] = None,
    input_zero_point: int = 0,
    input_range: Optional[Sequence[int]] = None,
    state_frac_bits: int = 16,
    require_exact: bool = False,
) -> IntegerModel:
    """An integer-arithmetic counterpart of a trained quantization-aware ``model``.

    ``model`` is an ``nn.Sequential`` (nested ones are walked) of aquatic layers and the
    modules between them (see the ``TypeError`` below for the list). Each becomes an
    integer module: integer accumulators certified to stay within int32, requantization
    by integer multiplier and shift (Jacob et al. 2018) with saturation, and spiking
    layers run on integer states (:mod:`aquatic.integer.spiking`). The result's
    ``forward`` takes and returns integer codes; :meth:`IntegerModel.quantize_input` and
    :meth:`IntegerModel.dequantize_output` convert at the edges.

    The scale of the input comes from, in this order:

    1. a leading :class:`aquatic.nn.ActivationQuantizer`: ``quantize_input`` quantizes
       as it does, so the integer model sees exactly the codes the float model saw;
    2. ``input_scale`` (with ``input_zero_point`` and ``input_range``, default
       ``(-128, 127)``): for data already on a grid, e.g. ``1/16`` for values ``k/16``;
    3. a model with spiking layers takes spike counts: scale 1, range ``(0, 255)``.

    In cases 2 and 3 the float model took the input unrounded, so ``quantize_input``
    raises for values off the grid. Otherwise ``convert`` raises a ``ValueError``.

    Agreement with the quantization-aware model (the same model, in eval mode): with
    power-of-two scales (and accumulators below :math:`2^{24}`, where float32 is exact)
    and, in spiking layers, quantized states, the integer model computes the same codes
    bit for bit; otherwise requantized codes may be one step apart (and spikes may then
    differ). ``integer_model.exact`` and ``integer_model.notes`` say which holds and why.

    Args:
        model: the trained model, quantized (aquatic layers with qconfigs).
        input_scale: scale of the input grid when no ``ActivationQuantizer`` leads.
        input_zero_point: zero point of the input codes (with ``input_scale``).
        input_range: ``(low, high)`` of the input codes, used to bound the accumulators.
        state_frac_bits: fractional bits below the unit step that spiking layers keep for
            a state that ``QConfig.state`` leaves in float.
        require_exact: raise a ``ValueError`` (listing the reasons) unless the integer
            model is exact.

    Returns:
        An :class:`~aquatic.integer.IntegerModel`.

    Raises:
        TypeError: a layer has no integer counterpart (named, with the supported list), or a
            float ``torch.nn`` layer with weights.
        ValueError: a quantizer never saw data (no range), the input scale is unknown, or
            a layer's quantization has no integer form (named with the fix).
        aquatic.integer.IntegerOverflowError: an accumulator could exceed int32 for some
            input in range (names the layer and the bound).

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> from aquatic.quantizers import UniformQuantizer
        >>> pow2 = UniformQuantizer.with_args(bits=8, power_of_two=True)
        >>> qconfig = aquatic.QConfig(weight=pow2, activation=pow2)
        >>> layer = aquatic.nn.Linear(4, 3, bias=False, qconfig=qconfig)
        >>> model = nn.Sequential(layer, nn.ReLU())
        >>> x = torch.randint(-8, 8, (16, 4)) / 8.0  # inputs on a grid of 1/8
        >>> _ = model(x); model = model.eval()
        >>> integer_model = aquatic.convert(model, input_scale=1 / 8)
        >>> out = integer_model(integer_model.quantize_input(x))
        >>> out.dtype, torch.equal(integer_model.dequantize_output(out), model(x))
        (torch.int32, True)
        >>> integer_model.exact
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert takes an nn.Module, got {type(model).__name__}")
    if isinstance(state_frac_bits, bool) or not isinstance(state_frac_bits, int):
        raise TypeError(f"state_frac_bits must be an int, got {state_frac_bits!r}")
    if not 0 <= state_frac_bits <= 24:
        raise ValueError(f"state_frac_bits must be in 0..24, got {state_frac_bits}")
    layers = [(n, m) for n, m in _layers(model) if not isinstance(m, _PASSIVE)]
    if not layers:
        raise ValueError("the model has no layers to convert")
    for name, module in layers:
        if (
            not isinstance(module, nn.Sequential)
            and list(module.children())
            and not hasattr(module, "quantizers")
        ):
            raise TypeError(
                f"{describe(name, module)} is a container with its own forward, which "
                "aquatic.convert cannot follow; build the model as (nested) nn.Sequential"
            )
    check_observed(model)
    modes = {id(m): m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            spec, rounding, on_grid, notes, consumed = _input_spec(
                layers[0][1], layers, input_scale, input_zero_point, input_range
            )
            input_spec = spec
            modules: List[IntegerModule] = []
            for name, module in layers[1:] if consumed else layers:
                new, spec = _convert_one(name, module, spec, state_frac_bits)
                modules, spec = settle_clamp(modules, new, spec)
    finally:
        for m in model.modules():
            m.training = modes[id(m)]
    result = IntegerModel(modules, input_spec, spec, rounding, on_grid, notes)
    if require_exact and not result.exact:
        raise ValueError("the integer model is not bit-exact: " + "; ".join(result.notes))
    return result
