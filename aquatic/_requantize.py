"""Re-quantizing aquatic layers that :func:`aquatic.quantize` meets a second time."""

from __future__ import annotations

import warnings
from typing import List

from torch import nn

from aquatic.nn.twin import _HOOK_DICTS


def _float_twin(module: nn.Module) -> nn.Module:
    """The torch twin of an aquatic layer holding the *same* float parameters (not the
    quantized values, which :meth:`to_float` bakes in), hooks and training mode."""
    plain = module._float_module(
        **module._twin_kwargs(module), device="meta", dtype=module.weight.dtype
    )
    plain.weight = module.weight
    plain.bias = module.bias
    for hooks in _HOOK_DICTS:
        getattr(plain, hooks).update(getattr(module, hooks, {}))
    plain.train(module.training)
    return plain


def _warn_requantized(requantized: List[str], kept: List[str]) -> None:
    if requantized:
        warnings.warn(
            "aquatic.quantize: re-quantized with the new QConfig, as they were already "
            f"quantized with another one: {', '.join(requantized)} (float weights kept; old "
            "quantizers, observed ranges and learned quantizer parameters dropped). To keep "
            "a layer's quantizers, map its name to None: aquatic.quantize(model, "
            "{nn.Module: qconfig, 'name': None})",
            UserWarning,
            stacklevel=3,
        )
    if kept:
        warnings.warn(
            "aquatic.quantize: kept their quantizers although already quantized with another "
            f"QConfig: {', '.join(kept)}; a subclass of an aquatic layer, or one with "
            "parametrized parameters (quantize_parameter), cannot be rebuilt. Rebuild it "
            "yourself, or map its name to None to silence this",
            UserWarning,
            stacklevel=3,
        )
