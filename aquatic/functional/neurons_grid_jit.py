"""The forward loop of the fused sequence with quantized states on a compiled loop (Numba).

:func:`~aquatic.functional.neurons_grid_kernel.grid_forward` runs some twenty NumPy
operations per time step; with Numba installed (``aquatic[fast]``) it runs
:mod:`aquatic.functional.neurons_grid_jit_kernels` instead, one pass over the sequence,
where that applies: binary spikes (or a non-spiking neuron) and decay rules whose codes
are exact in the values' dtype (every chip preset). The results are the same bits and
the same tensors (the backward pass reads them as it reads the NumPy loop's).
:data:`aquatic.functional.neurons_jit.ENABLED` (``AQUATIC_NUMBA=0``) turns both compiled
loops off.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from aquatic.functional import jit_jobs, neurons_jit
from aquatic.functional.neuron_types import Options
from aquatic.functional.neurons_grid import GridRules
from aquatic.functional.neurons_grid_current import quantizer_after_decay_passes
from aquatic.functional.neurons_grid_steps import StepDecay, StepQuantizer

__all__ = ["SCAN_MAX", "grid_jit_decays", "grid_forward", "scan"]


def _decays(rules: GridRules, params, v0: Tensor, i0: Optional[Tensor]):
    alpha_mem, alpha_syn = params[:2]
    decay_v = StepDecay(rules.v_mem, alpha_mem, v0)
    decay_i = StepDecay(rules.i_syn, alpha_syn, i0) if alpha_syn is not None else None
    return decay_v, decay_i


def grid_forward_kernel():
    """The compiled loop (its module imports Numba: imported on first use)."""
    module = importlib.import_module("aquatic.functional.neurons_grid_jit_kernels")
    return module.grid_forward_kernel()


@functools.lru_cache(maxsize=None)
def _ready() -> bool:
    """Whether the kernel compiles (once)."""
    f32, f64 = np.float32, np.float64
    flat, wide = np.zeros(0, f32), np.zeros(0, f64)
    steps, three, mask = np.zeros((0, 0), f32), np.zeros((0, 0, 0), f32), np.zeros((0, 0), np.bool_)
    lanes = (flat, flat, flat, wide)
    return neurons_jit.compiles(
        "loop of quantized states",
        "NumPy loop",
        lambda: grid_forward_kernel()(np.array([0] * 21 + [1]), np.zeros(15, f32),
                                      np.zeros(2, f32), three, flat, flat, *lanes, *lanes,
                                      flat, flat, flat, three, three, steps, mask, steps,
                                      mask, flat, flat),  # fmt: skip
    )


def grid_jit_decays(options: Options, rules: GridRules, params, v0, i0):
    """The decays of the membrane and the current
    (:class:`~aquatic.functional.neurons_grid_steps.StepDecay`, ``None`` for the current
    without one) when the compiled loop runs this sequence (see the module docstring),
    else ``None``."""
    if not neurons_jit.available() or (options.spiking and options.max_spikes != 1):
        return None
    if not _ready():
        return None
    decays = _decays(rules, params, v0, i0)
    return decays if all(d is None or not d.rule or d.exact for d in decays) else None


def _decay_arrays(decay: Optional[StepDecay], step_shape, features, dtype):
    """``(rule, wide, alpha, factor, keep, keep64, scale, low, high)`` of a decay, each
    array one value per neuron, flat."""
    zeros = np.zeros(step_shape[0] * features, dtype)
    if decay is None:
        return 0, False, zeros, zeros, zeros, zeros.astype(np.float64), 0, 0, 0
    lanes = lambda value, d=dtype: _flat_lanes(value, step_shape, features, d)  # noqa: E731
    if not decay.rule:
        return 0, False, lanes(decay.alpha), zeros, zeros, zeros.astype(np.float64), 0, 0, 0
    rule = 1 if decay.rule == "bitshift" else 2
    factor = lanes(decay.factor) if rule == 1 else zeros
    wide = rule == 2 and decay.wide
    keep = lanes(decay.keep) if rule == 2 and not wide else zeros
    keep64 = lanes(decay.keep, np.float64) if wide else zeros.astype(np.float64)
    return rule, wide, zeros, factor, keep, keep64, decay.scale, decay.low, decay.high


def _flat_lanes(value, step_shape, features, dtype) -> np.ndarray:
    """:func:`~aquatic.functional.neurons_jit.lanes`, flat: one value per neuron."""
    return neurons_jit.lanes(value, step_shape, features, dtype, every_sample=True).reshape(-1)


def grid_forward(
    x: Tensor,
    v0: Tensor,
    i0: Optional[Tensor],
    params: Tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]],
    options: Options,
    rules: GridRules,
    need_grad: bool,
    record: bool,
    keep_current: bool,
    decays: Tuple[StepDecay, Optional[StepDecay]],
) -> Tuple[Optional[Tensor], ...]:
    """:func:`~aquatic.functional.neurons_grid_kernel.grid_forward` on the compiled loop
    (same arguments, with ``x`` already delayed for a neuron without a synaptic state,
    and ``decays`` from :func:`grid_jit_decays`; same results and bits)."""
    alpha_mem, alpha_syn, threshold, bias = params
    synaptic, spiking = alpha_syn is not None, options.spiking
    n, n_steps = x.shape[0], x.shape[1]
    step_shape = (n,) + tuple(x.shape[2:])
    features = math.prod(step_shape[1:])
    dtype = np.float32 if x.dtype == torch.float32 else np.float64
    decay_v, decay_i = decays
    quantize_v = StepQuantizer(rules.v_mem, x.dtype) if rules.v_mem is not None else None
    quantize_i = None
    if synaptic and rules.i_syn is not None and not quantizer_after_decay_passes(rules, x.dtype):
        quantize_i = StepQuantizer(rules.i_syn, x.dtype)
    keep_trace = record or not spiking
    keep_current = synaptic and keep_current

    def batch_major(t):  # (N, T, F)
        if t is None:
            return np.empty((0, 0, 0), dtype)
        return t.detach().view(n, n_steps, features).numpy()

    def step_runs(t, dtype=dtype):  # (T, N F): a step's results are one flat run
        if t is None:
            return np.empty((0, 0), dtype)
        return t.detach().view(n_steps, n * features).numpy()

    (rule_v, wide_v, *arrays_v), (rule_i, wide_i, *arrays_i) = (
        _decay_arrays(decay_v, step_shape, features, dtype),
        _decay_arrays(decay_i, step_shape, features, dtype),
    )
    flags = np.array(
        neurons_jit.option_flags(options, synaptic, bias is not None)
        + [
            keep_trace,
            keep_current,
            need_grad,
            rules.strict,
            rules.after_decay,
            synaptic and rules.delay,
            rule_v,
            wide_v,
            quantize_v is not None,
            rule_i,
            wide_i,
            quantize_i is not None,
            need_grad and quantize_v is not None,  # keeps v_mask
            need_grad and quantize_i is not None,  # keeps i_mask
            0,  # the share of the jobs: set by jit_jobs.run
            1,
        ],
        dtype=np.int64,
    )

    def quantizer_consts(q: Optional[StepQuantizer]):
        return (0, 0, 0) if q is None else (q.inverse, q.code_low, q.code_high)

    consts = np.array(
        [0, 1, options.min_v_mem or 0]
        + [float(c) for c in arrays_v[-3:]]
        + [float(c) for c in quantizer_consts(quantize_v)]
        + [float(c) for c in arrays_i[-3:]]
        + [float(c) for c in quantizer_consts(quantize_i)],
        dtype=dtype,
    )
    scales32 = np.array(
        [0 if q is None else float(q.value_scale) for q in (quantize_v, quantize_i)],
        dtype=np.float32,
    )
    lanes = lambda t: _flat_lanes(t, step_shape, features, dtype)  # noqa: E731
    unused = np.zeros(n * features, dtype)  # for the arrays a neuron has no use for
    # The inputs first, then the results in the NumPy loop's order (so the heap reuses
    # the same memory from one call to the next; see neurons_jit).
    inputs = (
        x.detach().reshape(n, n_steps, features).contiguous().numpy(),
        v0.detach().reshape(-1).contiguous().numpy(),
        i0.detach().reshape(-1).contiguous().numpy() if synaptic else unused,
        *arrays_v[:4],
        *arrays_i[:4],
        lanes(threshold),
        lanes(1 - alpha_mem) if options.norm_input else unused,
        lanes(bias) if bias is not None else unused,
    )
    time_major = lambda dtype=None: x.new_empty((n_steps,) + step_shape, dtype=dtype)  # noqa: E731
    trace = torch.empty_like(x) if keep_trace else None
    spikes = torch.empty_like(x) if spiking else None
    v_pre = time_major() if need_grad else None
    v_mask = time_major(torch.bool) if need_grad and quantize_v is not None else None
    current = time_major() if keep_current else None
    i_mask = time_major(torch.bool) if need_grad and quantize_i is not None else None
    v_final = x.new_empty(step_shape)
    i_final = x.new_empty(step_shape) if synaptic else None
    # The batch-major results take x's layout (as the NumPy loop's).
    buffers = neurons_jit.contiguous_buffers((spikes, trace), x)
    jit_jobs.run(
        grid_forward_kernel(),
        flags,
        consts,
        scales32,
        *inputs,
        batch_major(buffers[0]),
        batch_major(buffers[1]),
        step_runs(v_pre),
        step_runs(v_mask, np.bool_),
        step_runs(current),
        step_runs(i_mask, np.bool_),
        v_final.view(-1).numpy(),
        i_final.view(-1).numpy() if synaptic else unused,
        parts=jit_jobs.parts_for(n, n_steps, features),
        entry="grid",
    )
    neurons_jit.copy_back((spikes, trace), buffers)
    output = spikes if spiking else trace
    return output, trace, current, v_pre, v_mask, i_mask, v_final, i_final


#: The most values of one step (samples times neurons) for which :func:`scan` runs the
#: compiled recurrence: one thread, where PyTorch shares a step's ``addcmul_`` over its
#: threads from 32,768 values on. Measured (two threads, 100 steps in blocks of 17):
#: 0.34 against 0.70 ms at 16,384 values, 0.91 against 1.23 at 32,768, 1.70 against
#: 1.37 at 65,536; 0.008 against 0.22 ms at 512, where PyTorch's per-call cost is all.
SCAN_MAX = 32768


@functools.lru_cache(maxsize=None)
def _scan_kernels():
    """The compiled recurrences (:mod:`aquatic.functional.jit_scan`), or ``None`` where
    they fail to compile (with a ``RuntimeWarning``)."""
    module = importlib.import_module("aquatic.functional.jit_scan")
    g, f = np.zeros((1, 2, 1), np.float32), np.ones((1, 1, 1), np.float32)
    ready = neurons_jit.compiles(
        "recurrence of quantized states' gradients",
        "PyTorch steps",
        lambda: (module.scan(g, f, 0, 2), module.scan_scalar(g, np.float32(1), 0, 2)),
    )
    return module if ready else None


def scan(grads: Tensor, start: int, end: int, factors: Tensor) -> bool:
    """``grads[t] += grads[t + 1] * factors[t - start]`` (rounded once, as ``addcmul_``)
    from ``t = end - 2`` down to ``start``, compiled, on a time-major gradient buffer
    whose storage is batch major (``neurons_grid_backward``'s); ``factors`` 0-dim or
    ``(B, N, *)`` contiguous. Returns whether it ran: ``False`` (nothing done) without
    the compiled loops, off the CPU, for steps of more than :data:`SCAN_MAX` values or
    another layout, and the caller runs its ``addcmul_`` steps.

    Example:
        >>> grads = torch.ones(1, 3, 1).transpose(0, 1)  # 3 steps of 1 sample
        >>> ran = scan(grads, 0, 3, torch.tensor(0.5))  # 1 + 1 / 2, then 1 + 1.5 / 2
        >>> grads.flatten() if ran else torch.tensor([1.75, 1.5, 1.0])
        tensor([1.7500, 1.5000, 1.0000])
    """
    batch_major = grads.transpose(0, 1)
    n, steps = batch_major.shape[:2]
    values = math.prod(batch_major.shape[2:])
    if not (
        grads.is_cpu
        and grads.dtype in (torch.float32, torch.float64)
        and factors.dtype == grads.dtype
        and n * values <= SCAN_MAX
        and batch_major.is_contiguous()
        and neurons_jit.available()
    ):
        return False
    per_step = factors.dim() > 0
    if per_step and not (
        factors.is_contiguous()
        and factors.shape[1:] == grads.shape[1:]
        and factors.shape[0] >= end - start - 1
    ):
        return False
    kernels = _scan_kernels()
    if kernels is None:
        return False
    g = batch_major.detach().numpy().reshape(n, steps, values)
    if per_step:
        f = factors.detach().numpy().reshape(factors.shape[0], n, values)
        kernels.scan(g, f, start, end)
    else:
        kernels.scan_scalar(g, g.dtype.type(factors.item()), start, end)
    return True
