"""Helpers the hardware profiles share: spec checking and model inspection."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from aquatic.functional.grid import Grid, NoRangeError
from aquatic.graph.capture import follows_graph
from aquatic.hw._chain import chain_layers
from aquatic.interop.nir import NIRModule
from aquatic.qconfig import QConfig
from aquatic.quantizers.uniform import UniformQuantizer

__all__ = [
    "DoesNotFitError",
    "as_int_tensor",
    "check_range",
    "check_spikes",
    "per_tensor_weights",
    "on_grid",
    "quantized_param",
    "spec_layers",
    "weight_grid",
]


class DoesNotFitError(ValueError):
    """A model or specification that the target chip cannot hold or represent.

    A subclass of ``ValueError``; the message names the layer, the value and the limit.
    """


def as_int_tensor(value: Any, name: str, shape: Optional[Sequence[Optional[int]]] = None) -> Tensor:
    """``value`` (tensor, NumPy array, list or int) as an ``int64`` tensor, or raise.

    Floating-point values are refused rather than rounded, so a specification is never
    silently changed. ``shape`` may hold ``None`` for any size along that axis.
    """
    if isinstance(value, Tensor):
        tensor = value.detach().cpu()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be an integer array or tensor, got {value!r}") from None
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integers, got dtype {tensor.dtype}; a specification holds "
            "integer codes (round and convert it, e.g. .round().to(torch.int16))"
        )
    tensor = tensor.to(torch.int64)
    if shape is not None:
        ok = tensor.dim() == len(shape) and all(
            want is None or got == want for got, want in zip(tensor.shape, shape)
        )
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(tensor.shape)}")
    return tensor


def check_range(tensor: Tensor, name: str, low: int, high: int, what: str = "") -> Tensor:
    """Raise a ``DoesNotFitError`` unless every value of ``tensor`` lies in ``[low, high]``."""
    if tensor.numel() == 0:
        return tensor
    smallest, largest = int(tensor.min()), int(tensor.max())
    if smallest < low or largest > high:
        bad = smallest if smallest < low else largest
        detail = f" ({what})" if what else ""
        raise DoesNotFitError(f"{name} holds {bad}, outside the range {low}..{high}{detail}")
    return tensor


def spec_layers(spec: Any, chip: str) -> Iterator[Tuple[str, Mapping[str, Any]]]:
    """The ``(name, layer)`` pairs of a ``{"layers": [...]}`` specification for ``chip``.

    Each layer is checked to be a mapping as it is reached; its name is ``layer["name"]``
    or ``layers[i]``.

    Raises:
        TypeError, ValueError: ``spec`` is not such a mapping, its list of layers is empty,
            or a layer is not a mapping.
    """
    if not isinstance(spec, Mapping) or "layers" not in spec:
        raise TypeError(f"spec must be a mapping {{'layers': [...]}} of {chip} layers")
    layers = spec["layers"]
    if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)) or not layers:
        raise ValueError("spec['layers'] must be a non-empty list of layers")
    for index, layer in enumerate(layers):
        if not isinstance(layer, Mapping):
            raise TypeError(f"layer {index} must be a mapping, got {type(layer).__name__}")
        yield str(layer.get("name", f"layers[{index}]")), layer


def check_spikes(spikes: Any, num_inputs: int, name: str = "spikes") -> Tensor:
    """Input spike counts ``(N, T, num_inputs)`` as ``int64``; non-negative integers."""
    tensor = as_int_tensor(spikes, name)
    if tensor.dim() != 3 or tensor.shape[2] != num_inputs:
        raise ValueError(
            f"{name} must have shape (N, T, {num_inputs}) (batch, time, input channels), "
            f"got {tuple(tensor.shape)}"
        )
    if tensor.numel() and int(tensor.min()) < 0:
        raise ValueError(f"{name} holds spike counts, which cannot be negative")
    return tensor


def on_grid(value: Tensor, grid: Grid, name: str) -> Tensor:
    """Integer codes ``value / grid.scale`` (``int64``) of values that must lie on ``grid``.

    :meth:`Grid.steps <aquatic.functional.grid.Grid.steps>`, raising a
    ``DoesNotFitError`` naming the worst value when some value is off the grid: the
    model was not trained (or not frozen) with the quantizer the target needs, and
    rounding it would silently change it.
    """
    return grid.steps(
        value,
        name,
        error=DoesNotFitError,
        scale_name="shared scale",
        hint="quantize it with the target's qconfig() (and train or run a forward pass) "
        "before exporting",
    )


def quantized_param(module: nn.Module, name: str) -> Optional[Tensor]:
    """Parameter ``name`` of ``module`` as its forward uses it (through its quantizer).

    Works for aquatic layers (``quantize_params``) and plain ``torch.nn`` modules.
    """
    quantize_params = getattr(module, "quantize_params", None)
    if callable(quantize_params):
        values = quantize_params()
        if name in values:
            return values[name]
    value = getattr(module, name, None)
    return value.detach() if isinstance(value, Tensor) else value


def shape_of(module: nn.Module) -> Tuple[int, ...]:
    """Weight shape of a Linear/Conv module (for messages)."""
    return tuple(module.weight.shape)


_PASSIVE = ("Identity", "Flatten", "Dropout", "Unflatten")


def layer_sequence(model: nn.Module, target: str) -> list:
    """The leaf layers of ``model`` in order, as ``[(name, module), ...]``.

    ``nn.Sequential`` containers are walked recursively; ``Identity``, ``Flatten``,
    ``Unflatten`` and ``Dropout`` (inactive at inference) are skipped. A model with a
    ``forward`` of its own, or a :class:`~aquatic.interop.nir.NIRModule`, is followed
    along its graph, which must be a chain (else a ``DoesNotFitError`` names the op).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export takes a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, NIRModule) or follows_graph(model):
        # A model with a forward of its own: its traced graph must be a chain.
        children = chain_layers(model, target, DoesNotFitError)
    else:
        children = (
            list(model.named_children()) if isinstance(model, nn.Sequential) else [("", model)]
        )
    layers = []
    for name, child in children:
        if isinstance(child, nn.Sequential):
            layers += [(f"{name}.{n}" if name else n, m) for n, m in layer_sequence(child, target)]
        elif type(child).__name__ not in _PASSIVE:
            layers.append((name or type(child).__name__, child))
    if not layers:
        raise DoesNotFitError(f"the model has no layers to export to {target}")
    return layers


def weight_grid(module: nn.Module, name: str, target: str, param: str = "weight") -> Grid:
    """The grid of the quantizer of ``module``'s ``param``: per tensor and symmetric, or
    a ``DoesNotFitError`` naming the layer."""
    quantizers = getattr(module, "quantizers", None)
    if quantizers is None or param not in quantizers:
        raise DoesNotFitError(
            f"layer {name!r} ({type(module).__name__}) has no {param} quantizer, so its "
            f"integer grid is unknown; build the model with qconfig=aquatic.hw.{target}.qconfig() "
            "(or aquatic.quantize(model, ...)) and train it before exporting"
        )
    quantizer = quantizers[param]
    try:
        grid = quantizer.grid()
    except NoRangeError as error:
        raise NoRangeError(f"layer {name!r}, {param} quantizer: {error}") from None
    except ValueError:
        grid = None
    if grid is None or grid.scale.numel() != 1:
        raise DoesNotFitError(
            f"layer {name!r}: the {param} quantizer ({type(quantizer).__name__}) has "
            f"no single scale; {target} needs one per-tensor scale"
        )
    if bool(grid.zero_point.ne(0).any()):
        raise DoesNotFitError(
            f"layer {name!r}: {target} needs symmetric quantization (zero point 0)"
        )
    return grid._replace(
        scale=grid.scale.reshape(()), zero_point=grid.zero_point.reshape(()), ch_axis=None
    )


def require(condition: bool, message: str) -> None:
    """Raise a ``DoesNotFitError`` with ``message`` unless ``condition``."""
    if not condition:
        raise DoesNotFitError(message)


def per_neuron(value: Optional[Tensor], size: int, name: str) -> Tensor:
    """A scalar or ``(size,)`` tensor (or ``None``: zeros) as a ``(size,)`` float64 tensor."""
    if value is None:
        return torch.zeros(size, dtype=torch.float64)
    value = value.detach().double().flatten()
    if value.numel() == 1:
        return value.expand(size).clone()
    if value.numel() != size:
        raise DoesNotFitError(f"{name} has {value.numel()} values for {size} neurons")
    return value


def per_tensor_weights(bits: int) -> QConfig:
    """``bits``-bit symmetric weights with one scale per tensor, from their min/max: a
    synapse layer alone as a shared-scale chip quantizes it (the population's
    thresholds and biases may widen the shared scale further)."""
    return QConfig(weight=UniformQuantizer.with_args(bits=bits, signed=True, symmetric=True))
