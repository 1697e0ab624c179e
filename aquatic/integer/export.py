"""``layer.to_int()``: the integer codes of a layer's quantized parameters."""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from aquatic.nn.base import eval_mode

__all__ = ["layer_to_int"]


@torch.no_grad()
def layer_to_int(layer: nn.Module) -> Dict[str, Dict[str, Any]]:
    """Integer codes and quantization parameters of every quantized parameter of ``layer``.

    For each parameter name (``"weight"``, ``"bias"``, ``"tau_mem"``, ``"alpha_mem"``,
    ``"threshold"``, ...) a dict with ``"codes"`` (an integer tensor, from the
    quantizer's ``to_int``) and the quantizer's ``qparams()``: ``scale``,
    ``zero_point``, ``quant_min``, ``quant_max``, ``ch_axis`` for uniform quantizers
    (value ``(codes - zero_point) * scale``), or ``dash`` (bit-shift decays,
    :math:`\\alpha = 1 - 2^{-dash}`) or ``decrement`` with ``bits`` and ``param``. A decay
    computed from a quantized time constant (``alpha_mem`` of a layer built with
    ``tau_mem``) is listed under its ``alpha`` name. Quantizers run in eval mode, so
    observers only fill a range never observed.

    Raises:
        ValueError: a quantizer has no range yet (never saw data).
    """
    states = set(getattr(layer, "_quantized_states", ()))
    values = None
    result: Dict[str, Dict[str, Any]] = {}
    for name, quantizer in layer.quantizers.items():
        if name == "activation" or name in states:
            continue
        value = getattr(layer, name, None)
        if value is None:  # a decay computed from a time constant
            if values is None:
                values = layer.quantize_params()
            value = values[name]
        try:
            # A forward pass first, as the layer's own in eval mode: observers fill a range
            # never observed, and quantizers that record their scale record it.
            with eval_mode([quantizer]):
                quantizer(value.detach())
                codes = quantizer.to_int(value.detach())
                params = quantizer.qparams()
        except RuntimeError as error:
            raise ValueError(
                f"{type(layer).__name__}.to_int: the {name!r} quantizer has no range yet "
                f"({error}); run a forward pass (in training mode) first"
            ) from None
        result[name] = {"codes": codes, **params}
    return result
