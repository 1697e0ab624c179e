"""What the NIR and ONNX exports share: optional imports and reading quantizers."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["require", "AffineParams", "affine_params", "layer_sequence", "parameter_values"]


def require(package: str, extra: str, purpose: str) -> ModuleType:
    """Import the optional ``package``, or raise an ImportError that names the extra."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the optional package {package!r}, which is not installed: "
            f"pip install 'aquatic[{extra}]'"
        ) from error


class AffineParams(NamedTuple):
    """A uniform affine quantizer's grid: codes ``quant_min..quant_max``, value
    ``(code - zero_point) * scale``; per channel along ``ch_axis`` when that is set."""

    scale: Tensor
    zero_point: Tensor
    quant_min: int
    quant_max: int
    ch_axis: Optional[int]


def affine_params(quantizer: nn.Module, where: str) -> AffineParams:
    """The grid of ``quantizer`` (from its ``qparams()``), or a ValueError naming ``where``.

    Quantizers whose ``qparams()`` hold no ``scale``/``zero_point`` (bit-shift decays,
    for example) are not on an affine grid.
    """
    try:
        params: Dict[str, Any] = quantizer.qparams()
    except RuntimeError as error:
        raise ValueError(
            f"{where}: the quantizer ({type(quantizer).__name__}) has no scale yet ({error}); "
            "run the model on some data (calibration) before exporting"
        ) from None
    missing = [key for key in ("scale", "quant_min", "quant_max") if key not in params]
    if missing:
        raise ValueError(
            f"{where}: {type(quantizer).__name__} is not a uniform affine quantizer (its "
            f"qparams() lack {', '.join(missing)}), so it has no scale and zero point to export"
        )
    scale = torch.as_tensor(params["scale"]).detach().float()
    zero_point = params.get("zero_point")
    if zero_point is None:
        zero_point = torch.zeros_like(scale)
    zero_point = torch.as_tensor(zero_point).detach().round().to(torch.int64)
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise ValueError(
            f"{where}: the quantizer's scale is not positive and finite ({scale.tolist()}); "
            "run the model on some data (calibration) before exporting"
        )
    ch_axis = params.get("ch_axis")
    if scale.dim() == 0 or scale.numel() == 1 and ch_axis is None:
        scale, zero_point, ch_axis = scale.reshape(()), zero_point.reshape(()), None
    return AffineParams(
        scale, zero_point, int(params["quant_min"]), int(params["quant_max"]), ch_axis
    )


def active(module: nn.Module, name: str) -> Optional[nn.Module]:
    """``module.quantizers[name]`` if it exists and fake-quantizes, else ``None``."""
    quantizers = getattr(module, "quantizers", None)
    if quantizers is None or name not in quantizers:
        return None
    quantizer = quantizers[name]
    return quantizer if getattr(quantizer, "fake_quant_enabled", True) else None


def parameter_values(module: nn.Module) -> Dict[str, Tensor]:
    """``weight`` and ``bias`` of ``module`` as its forward uses them (quantized)."""
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
