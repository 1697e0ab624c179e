"""What the NIR and ONNX exports share: optional imports and reading quantizers."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

from aquatic.functional.grid import Grid, NoRangeError
from aquatic.nn.fused_bn import FusedBatchNorm

__all__ = ["require", "export_grid", "layer_sequence", "parameter_values"]


def require(package: str, extra: str, purpose: str) -> ModuleType:
    """Import the optional ``package``, or raise an ImportError that names the extra."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the optional package {package!r}, which is not installed: "
            f"pip install 'aquatic[{extra}]'"
        ) from error


def export_grid(quantizer: nn.Module, where: str) -> Grid:
    """``quantizer.grid()``, or a ValueError naming ``where`` and what to do.

    Quantizers not on a uniform grid (bit-shift decays, for example) have no scale and
    zero point to export.
    """
    try:
        grid = quantizer.grid()
    except NoRangeError as error:
        raise ValueError(
            f"{where}: the quantizer has no scale yet ({error}); run the model on some data "
            "(calibration) before exporting"
        ) from None
    except ValueError as error:
        raise ValueError(f"{where}: {error}; it has no scale and zero point to export") from None
    return grid.check_scale(where)


def active(module: nn.Module, name: str) -> Optional[nn.Module]:
    """``module.quantizers[name]`` if it exists and fake-quantizes, else ``None``."""
    quantizers = getattr(module, "quantizers", None)
    if quantizers is None or name not in quantizers:
        return None
    quantizer = quantizers[name]
    return quantizer if getattr(quantizer, "fake_quant_enabled", True) else None


def parameter_values(module: nn.Module) -> Dict[str, Tensor]:
    """``weight`` and ``bias`` of ``module`` as its forward uses them (quantized); for a
    layer fused with its batch norm, the folded ones."""
    if isinstance(module, FusedBatchNorm):
        module = module.folded()
    values = {}
    quantized = module.quantize_params() if hasattr(module, "quantize_params") else {}
    for name in ("weight", "bias"):
        value = getattr(module, name, None)
        if value is None:
            continue
        if name in quantized and active(module, name) is not None:
            value = quantized[name]
        values[name] = value.detach()
    return values


def layer_sequence(model: nn.Module, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """The layers of ``model`` in order, walking nested ``nn.Sequential`` containers."""
    if not isinstance(model, nn.Sequential):
        return [(prefix or type(model).__name__.lower(), model)]
    layers = []
    for name, child in model.named_children():
        layers += layer_sequence(child, f"{prefix}.{name}" if prefix else name)
    return layers
