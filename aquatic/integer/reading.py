"""Reading a quantization-aware model for conversion: ranges, scales, codes."""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from aquatic.functional.grid import Grid, NoRangeError
from aquatic.observers import RangeObserver
from aquatic.quantizers.bias import AccumulatorBiasQuantizer
from aquatic.quantizers.learned import LSQQuantizer

__all__ = ["check_observed", "describe", "grid_steps", "read_grid"]

#: Rounding modes the integer model reproduces (stochastic rounding becomes nearest).
_ROUNDS = ("nearest", "floor", "stochastic")


def describe(name: str, module: nn.Module) -> str:
    """``layer '0' (Linear)``: how messages name a layer."""
    return f"layer {name!r} ({type(module).__name__})"


def read_grid(quantizer: nn.Module, where: str, notes: List[str], rounds: bool = True) -> Grid:
    """``quantizer.grid()`` as the integer model computes with it, or a clear error.

    The scale comes back as float64 and the zero point as int64 (exact arithmetic);
    stochastic rounding becomes nearest, with a note appended to ``notes``.

    Args:
        quantizer: any aquatic quantizer.
        where: how to name it in messages, e.g. ``"layer '0' (Linear), quantizer 'activation'"``.
        notes: where to add why the integer model may differ from the float one.
        rounds: the integer model will quantize with it (activations, states, the input),
            so it must round to a uniform grid; ``False`` when only the scale of values
            it already produced is needed (weights).

    Raises:
        ValueError: it has no range yet, it is not on a uniform grid, or it does not
            round (binary and ternary quantizers threshold).
    """
    grid, failure = None, None
    try:
        grid = quantizer.grid()
    except ValueError as error:
        failure = error
    if rounds and grid is not None and grid.rounding not in _ROUNDS:
        what = (
            "thresholds rather than rounds to a uniform grid"
            if grid.rounding in ("sign", "threshold")
            else f"reaches its grid by {grid.rounding!r} rounding, which it cannot reproduce"
        )
        raise ValueError(
            f"{where} is a {type(quantizer).__name__}, which {what}; the integer model "
            "requantizes with uniform quantizers only (e.g. aquatic.quantizers.UniformQuantizer)"
        )
    if not getattr(quantizer, "fake_quant_enabled", True):
        raise ValueError(
            f"{where} has fake quantization switched off, so the model computes in float "
            "there; switch it back on (aquatic.enable_fake_quant(model)) before converting"
        )
    if isinstance(failure, NoRangeError):
        raise ValueError(
            f"{where}: {failure}; run the model on representative data in training mode "
            "before aquatic.convert"
        ) from None
    if failure is not None:
        raise ValueError(
            f"{where}: {failure}; the integer model needs a uniform affine quantizer here "
            "(e.g. aquatic.quantizers.UniformQuantizer)"
        ) from None
    grid.check_scale(where)
    rounding = grid.rounding
    if rounding == "stochastic":
        notes.append(f"{where} rounds stochastically; the integer model rounds to nearest instead")
        rounding = "nearest"
    return grid._replace(
        scale=grid.scale.detach().to(torch.float64),
        zero_point=grid.zero_point.detach().to(torch.int64),
        ch_axis=grid.ch_axis if grid.per_channel else None,
        rounding=rounding,
    )


def grid_steps(value: Tensor, grid: Grid, where: str) -> Tensor:
    """``(code - zero_point)`` (``int64``) of quantized values ``value``, checked on ``grid``."""
    return grid.steps(
        value, where, hint="the quantizer's grid() does not describe its forward pass"
    )


def check_observed(model: nn.Module) -> None:
    """Raise a ``ValueError`` naming every quantizer of ``model`` that has no range yet.

    An observer that never saw data has no range, and an activation quantizer without a
    range would take it from the first batch that the quantization-aware model sees in
    eval mode, which the integer model cannot know.
    """
    unused = set()
    for module in model.modules():
        if isinstance(module, AccumulatorBiasQuantizer):
            follows = module.__dict__.get("_input_quantizer") is not None
            if (follows or module.input_scale is not None) and module.input_observer is not None:
                unused.update(id(m) for m in module.input_observer.modules())
    missing = []
    for name, module in model.named_modules():
        if id(module) in unused:
            continue
        if isinstance(module, (RangeObserver, LSQQuantizer)) and not module.initialized:
            missing.append(name)
        elif isinstance(module, AccumulatorBiasQuantizer) and bool(torch.isnan(module.scale).any()):
            missing.append(name)
    if missing:
        raise ValueError(
            "these quantizers have never seen data, so they have no range: "
            + ", ".join(repr(n) for n in missing)
            + ". Run the model on representative data in training mode (or train it) "
            "before aquatic.convert"
        )
