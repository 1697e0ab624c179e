"""Checks of the arguments of the neuron functions in :mod:`aquatic.functional.neurons`.

Each check raises a ``ValueError`` or ``TypeError`` that names the bad value and the
fix, and returns the value in the form the step functions use.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from aquatic.functional.neuron_types import METHODS, RESET_MODES, LIFState, Number, Options
from aquatic.functional.neuron_values import (
    check_min_v_mem,
    check_scalar_values,
    check_steps,
    check_tensor_values,
)
from aquatic.functional.surrogate import check_surrogate

__all__ = [
    "check_reset",
    "check_max_spikes",
    "check_method",
    "check_checkpoint",
    "check_input",
    "check_finite_input",
    "as_param",
    "check_state",
    "prepare",
]


def check_reset(reset: str) -> str:
    if reset not in RESET_MODES:
        raise ValueError(
            f"unknown reset mode {reset!r}; use one of {', '.join(map(repr, RESET_MODES))}"
        )
    return reset


def check_max_spikes(max_spikes: int) -> int:
    if isinstance(max_spikes, bool) or not isinstance(max_spikes, int) or max_spikes < 1:
        raise ValueError(
            f"max_spikes must be an int >= 1 (1 for binary spikes), got {max_spikes!r}"
        )
    return max_spikes


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(map(repr, METHODS))}")
    return method


def check_checkpoint(checkpoint: Optional[int]) -> Optional[int]:
    if checkpoint is not None and (
        isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1
    ):
        raise ValueError(
            "checkpoint must be None (keep every membrane for backward) or an int >= 1 "
            f"(keep the state every that many steps and recompute the rest), got {checkpoint!r}"
        )
    return checkpoint


def check_input(input: Tensor, min_dim: int, layout: str) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be floating point, got {input.dtype}; use input.float()")
    if input.dim() < min_dim:
        hint = " (add a time axis with input.unsqueeze(1))" if "T" in layout else ""
        raise ValueError(
            f"expected input of shape {layout} with at least {min_dim} dimensions, got "
            f"shape {tuple(input.shape)}{hint}"
        )


def check_finite_input(input: Tensor, quantized_states: bool) -> None:
    """A ``ValueError`` for a NaN or infinite input to neurons with quantized states.

    A state on an integer grid has no code for NaN or infinity (a chip's states are
    integers), and rounding one to the grid has no defined result: the step-by-step
    loop and the fused sequence would disagree, silently. Float neurons pass NaN and
    infinity through, as torch does. Not checked while ``torch.compile`` traces (a
    data-dependent test).
    """
    if not quantized_states or torch.compiler.is_compiling() or input.numel() == 0:
        return
    values = input.detach()
    # A finite sum is the quick answer (one fast pass, a twentieth of isfinite's);
    # a sum that overflowed or met a NaN or infinity is looked at element by element.
    if math.isfinite(float(values.sum())) or bool(torch.isfinite(values).all()):
        return
    bad = values[~torch.isfinite(values)]
    raise ValueError(
        f"the input holds {bad.numel()} NaN or infinite value(s) (e.g. {float(bad[0])}), "
        "which neurons with quantized states (a chip preset, QConfig.state or a decay "
        "rule) cannot represent; clean or clamp the input first, e.g. "
        "torch.nan_to_num(x, nan=0.0, posinf=m, neginf=-m)"
    )


def as_param(name: str, value: Optional[Number], like: Tensor, step_shape) -> Optional[Tensor]:
    """``value`` as a tensor of ``like``'s dtype and device that broadcasts to ``step_shape``."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        return torch.tensor(float(value), dtype=like.dtype, device=like.device)
    # torch.broadcast_shapes(value.shape, step_shape) == step_shape, without its cost
    # (tens of microseconds, on every call of a layer).
    shape, step = tuple(value.shape), tuple(step_shape)
    fits = len(shape) <= len(step) and all(
        size == 1 or size == full for size, full in zip(reversed(shape), reversed(step))
    )
    if not fits:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to the neurons of the "
            f"input, shape {tuple(step_shape)}; give a scalar or one value per neuron"
        )
    return value.to(dtype=like.dtype, device=like.device)


def check_state(state, batch_shape, synaptic: bool, like: Tensor) -> LIFState:
    """A :class:`LIFState` of zeros, or ``state`` checked against the batch shape."""
    if state is None:
        zeros = torch.zeros(batch_shape, dtype=like.dtype, device=like.device)
        return LIFState(zeros, zeros.clone() if synaptic else None)
    if isinstance(state, Tensor):
        state = LIFState(state)
    if not isinstance(state, tuple) or not isinstance(state[0], Tensor):
        raise TypeError(f"state must be a LIFState(v_mem, i_syn), got {type(state).__name__}")
    state = LIFState(*state)
    for name, value in (("v_mem", state.v_mem), ("i_syn", state.i_syn)):
        if value is not None and tuple(value.shape) != tuple(batch_shape):
            raise ValueError(
                f"state.{name} has shape {tuple(value.shape)}, but this input needs "
                f"{tuple(batch_shape)} (batch, *neurons)"
            )
    if state.i_syn is not None and not synaptic:
        raise ValueError("state.i_syn was given, but these neurons have no synaptic state")
    i_syn = state.i_syn
    if synaptic and i_syn is None:
        i_syn = torch.zeros(batch_shape, dtype=like.dtype, device=like.device)
    return LIFState(state.v_mem.to(like.dtype), None if i_syn is None else i_syn.to(like.dtype))


def prepare(
    input: Tensor,
    state: Optional[LIFState],
    params: Tuple[Optional[Number], ...],
    options: Options,
    sequence: bool = True,
    values: bool = True,
) -> Tuple[Tuple[Optional[Tensor], ...], LIFState, Options]:
    """Check the arguments of a neuron function; ``(params, state, options)`` as checked.

    Args:
        input: ``(N, T, *)`` for a sequence function, ``(N, *)`` for one step
            (``sequence=False``).
        state: the initial :class:`LIFState`, or ``None`` for zeros.
        params: ``(alpha_mem, alpha_syn, threshold, bias)`` as given.
        options: the :class:`Options` as given (``surrogate`` ``None`` for the default).
        values: check the parameters' values (:mod:`aquatic.functional.neuron_values`);
            ``False`` where the same values were checked already (later steps of a loop).
    """
    if sequence:
        check_input(input, 3, "(N, T, *)")
        check_steps(input)
    else:
        check_input(input, 2, "(N, *)")
    check_reset(options.reset)
    check_max_spikes(options.max_spikes)
    if values:
        check_min_v_mem(options.min_v_mem)
        check_scalar_values(params, options.spiking)
    options = options._replace(surrogate=check_surrogate(options.surrogate))
    step_shape = input.shape[2:] if sequence else input.shape[1:]
    names = ("alpha_mem", "alpha_syn", "threshold", "bias")
    given = params
    params = tuple(as_param(name, value, input, step_shape) for name, value in zip(names, params))
    if values:
        check_tensor_values(given, params, options.spiking)
    batch_shape = (input.shape[0],) + tuple(step_shape)
    state = check_state(state, batch_shape, params[1] is not None, input)
    return params, state, options
