"""Checks of the values of a neuron's parameters, for the neuron functions.

The layers of :mod:`aquatic.nn` check their parameters when they are built and loaded;
the functions of :mod:`aquatic.functional.neurons` take any number or tensor, so they
check the values on every call, as cheaply as the hot path allows: Python numbers in
Python, tensors with one reduction and one host synchronisation for all of them together,
and tensors not at all while ``torch.compile`` traces (a data-dependent branch would
break the graph).

- decays ``alpha_mem``, ``alpha_syn``: in ``[0, 1]`` (the fraction kept per step);
- ``threshold`` (spiking neurons): positive and finite;
- ``bias``: finite;
- ``min_v_mem``: a finite number, or ``None`` for no bound.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["check_scalar_values", "check_tensor_values", "check_min_v_mem", "check_steps"]

#: Parameter names, in the order the neuron functions pass them.
NAMES = ("alpha_mem", "alpha_syn", "threshold", "bias")

_RULES = {
    "alpha_mem": "must lie in [0, 1] (the fraction of the membrane kept per step)",
    "alpha_syn": "must lie in [0, 1] (the fraction of the synaptic current kept per step)",
    "threshold": "must be positive and finite (scale the input instead of a negative threshold)",
    "bias": "must be finite",
}


def _valid(name: str, value: float) -> bool:
    if name == "threshold":
        return value > 0 and math.isfinite(value)
    if name == "bias":
        return math.isfinite(value)
    return 0.0 <= value <= 1.0  # False for NaN


def _error(name: str, shown: str) -> ValueError:
    return ValueError(f"{name} {_RULES[name]}, got {shown}")


def check_scalar_values(params: Sequence, spiking: bool) -> None:
    """Check the parameters given as Python numbers (``None`` and tensors are skipped).

    Args:
        params: ``(alpha_mem, alpha_syn, threshold, bias)``.
        spiking: whether the threshold is used (a leaky integrator ignores it).

    Raises:
        TypeError: a parameter that is neither a number, a tensor nor ``None``.
        ValueError: a value outside its range (the message names it and the rule).
    """
    for name, value in zip(NAMES, params):
        if value is None or isinstance(value, Tensor) or (name == "threshold" and not spiking):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number or a tensor, got {value!r}")
        if not _valid(name, float(value)):
            raise _error(name, f"{value!r}")


def check_tensor_values(given: Sequence, params: Sequence[Optional[Tensor]], spiking: bool) -> None:
    """Check the parameters that were given as tensors (``given``) by their values as the
    step functions use them (``params``, on the input's device): the extrema of each
    (``aminmax``, which propagates NaN), read with one host synchronisation (where each
    is a single value on the CPU, that value is read: no reduction to run); skipped while
    ``torch.compile`` traces.

    Raises:
        ValueError: the first parameter with a value outside its range, with the index of
            the first such value.
    """
    checked: List[Tuple[str, Tensor]] = [
        (name, value.detach())
        for name, original, value in zip(NAMES, given, params)
        if isinstance(original, Tensor) and value.numel() and (spiking or name != "threshold")
    ]
    if not checked or torch.compiler.is_compiling():
        return
    if all(value.numel() == 1 and value.device.type == "cpu" for _, value in checked):
        # most layers' decays and thresholds: each value its own extrema, no device to wait for
        extrema = [(value.item(),) * 2 for _, value in checked]
    else:
        pairs = [torch.stack(torch.aminmax(value)) for _, value in checked]
        extrema = torch.stack(pairs).tolist()
    for (name, value), (low, high) in zip(checked, extrema):
        if _valid(name, low) and _valid(name, high):
            continue
        if value.numel() == 1:
            raise _error(name, f"{float(value):g}")
        flat = value.flatten()
        index = int((~_elementwise(name, flat)).nonzero()[0])
        raise _error(name, f"{float(flat[index]):g} at index {index} of shape {tuple(value.shape)}")


def _elementwise(name: str, value: Tensor) -> Tensor:
    if name == "threshold":
        return (value > 0) & torch.isfinite(value)
    if name == "bias":
        return torch.isfinite(value)
    return (value >= 0) & (value <= 1)


def check_min_v_mem(min_v_mem) -> None:
    """``min_v_mem`` must be ``None`` or a finite number (``-inf`` bounds nothing: ``None``)."""
    if min_v_mem is None:
        return
    if isinstance(min_v_mem, Tensor):
        if min_v_mem.numel() != 1:
            raise ValueError(
                f"min_v_mem must be one number, got a tensor of shape {tuple(min_v_mem.shape)}"
            )
        if torch.compiler.is_compiling():
            return
        value = float(min_v_mem)
    elif isinstance(min_v_mem, bool) or not isinstance(min_v_mem, (int, float)):
        raise TypeError(f"min_v_mem must be a number or None, got {min_v_mem!r}")
    else:
        value = float(min_v_mem)
    if not math.isfinite(value):
        raise ValueError(
            f"min_v_mem must be a finite number, got {value}; use min_v_mem=None for a "
            "membrane without lower bound"
        )


def check_steps(input: Tensor) -> None:
    """A sequence ``(N, T, *)`` needs at least one time step."""
    if input.shape[1] == 0:
        raise ValueError(
            f"input of shape {tuple(input.shape)} has no time steps (T = 0, axis 1); "
            "give at least one step"
        )
