"""The fused LIF sequence's forward loop compiled by Numba, when Numba is installed.

The fused sequence of :mod:`aquatic.functional.neurons_fused` runs its time loop as a
few PyTorch operations per step (:mod:`aquatic.functional.neurons_kernel`): on the CPU
each is a separate pass over the step with its own call overhead. With Numba
(``pip install aquatic[fast]``) the forward loop runs compiled instead
(:mod:`aquatic.functional.neurons_jit_kernels`): one pass that reads the input once and
writes the spikes, the membranes that backward reads and the final state once. The
backward pass (:mod:`aquatic.functional.neurons_kernel_backward`, on the same saved
tensors) runs compiled too where its surrogate allows
(:mod:`aquatic.functional.neurons_jit_backward`).

It runs where it applies: CPU float32 and float64 tensors with binary spikes
(``max_spikes=1``), in the layers and functions that take the fused path (not under
state quantizers, which run the loop). Its results are the bits of the PyTorch loop:
the same operations in the same order, without fast-math. The first call compiles the
loop (a few seconds; Numba caches it on disk for later processes).

Set the environment variable ``AQUATIC_NUMBA=0`` (before the first call) or
:data:`ENABLED` to ``False`` to use the PyTorch loops (forward and backward, and the
NumPy loop of quantized states, :mod:`aquatic.functional.neurons_grid_jit`).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from aquatic.functional import jit_jobs
from aquatic.functional.neuron_types import Options

__all__ = [
    "ENABLED",
    "available",
    "forward_ok",
    "sequence_forward",
    "option_flags",
    "lanes",
    "compiles",
    "contiguous_buffers",
    "copy_back",
]

#: Whether the compiled loops are used where they apply (``AQUATIC_NUMBA=0`` sets it
#: to ``False``).
ENABLED = os.environ.get("AQUATIC_NUMBA", "1") != "0"


def compiles(what: str, fallback: str, call) -> bool:
    """Whether ``call()`` (a first call of a kernel, which compiles it) runs; a
    ``RuntimeWarning`` naming ``what`` and the ``fallback`` that runs instead if not.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     compiles("loop", "PyTorch loop", lambda: 1 / 0), str(caught[0].message)[:48]
        (False, 'the compiled loop failed (ZeroDivisionError: div')
    """
    try:
        call()
    except Exception as error:  # an incompatible Numba (or NumPy) must not stop training
        warnings.warn(
            f"the compiled {what} failed ({type(error).__name__}: {error}); using the "
            f"{fallback}. Set AQUATIC_NUMBA=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    return True


@functools.lru_cache(maxsize=None)
def _ready() -> bool:
    """Whether Numba imports and compiles the kernel (once)."""
    if importlib.util.find_spec("numba") is None:
        return False
    two, three = np.zeros((1, 1), np.float32), np.zeros((1, 1, 1), np.float32)
    flags, consts = np.zeros(13, dtype=np.int64), np.ones(5, dtype=np.float32)
    flags[-1] = 1  # one share of the jobs
    return compiles(
        "LIF loop",
        "PyTorch loop",
        lambda: _kernel()(flags, consts, three, two, two, two, two, two, two, two, three,
                          three, three, three, two, two, three, three),  # fmt: skip
    )


def available() -> bool:
    """Whether the compiled loop can run (Numba installed and working, and
    :data:`ENABLED`)."""
    return ENABLED and _ready()


def forward_ok(x: Tensor, options: Options, *tensors: Optional[Tensor]) -> bool:
    """Whether the compiled forward loop runs the sequence ``x`` with ``options``."""
    return (
        available()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and options.max_spikes == 1
        and all(t is None or (t.dtype == x.dtype and t.device == x.device) for t in tensors)
    )


# ----------------------------------------------------------------------------- helpers


def _flat(t: Tensor, shape) -> np.ndarray:
    """``t`` as a contiguous array of ``shape`` (``(N, F)`` or ``(N, T, F)``)."""
    return t.detach().reshape(shape).contiguous().numpy()


def lanes(value, step_shape, features: int, dtype, every_sample: bool = False) -> np.ndarray:
    """A number, array or tensor broadcast to the neurons ``step_shape`` ``(N, *)``, as a
    contiguous ``(R, F)`` array of NumPy ``dtype`` (a kernel's per-neuron parameter):
    ``R = 1`` where the value is the same for every sample (the loops repeat that row,
    :func:`~aquatic.functional.neurons_jit_kernels.job_lanes`), else ``N``;
    ``every_sample=True``: always ``N``.

    Example:
        >>> lanes(torch.tensor([[0.5], [0.25]]), (2, 2, 3), 6, np.float32)  # per channel
        array([[0.5 , 0.5 , 0.5 , 0.25, 0.25, 0.25]], dtype=float32)
        >>> lanes(torch.tensor([[0.5], [0.25]]), (2, 3), 3, np.float32)  # per sample
        array([[0.5 , 0.5 , 0.5 ],
               [0.25, 0.25, 0.25]], dtype=float32)
        >>> lanes(0.5, (2, 3), 3, np.float32, every_sample=True)
        array([[0.5, 0.5, 0.5],
               [0.5, 0.5, 0.5]], dtype=float32)
    """
    rows = step_shape[0]
    if not every_sample and (np.ndim(value) < len(step_shape) or np.shape(value)[0] == 1):
        rows = 1
    shape = (rows,) + tuple(step_shape[1:])
    if isinstance(value, Tensor):
        if rows == 1 and value.numel() == 1:  # a layer's usual decay and threshold
            return np.full((1, features), value.item(), dtype)
        # A tensor's copy made by torch's allocator, as the PyTorch loop's temporaries:
        # NumPy's here changed the heap's layout enough that 13 MB were returned to the
        # system and faulted in again on every call.
        value = value.detach().cpu().to(_TORCH_DTYPES[np.dtype(dtype)])
        return _flat(value.broadcast_to(shape), (rows, features))
    full = np.broadcast_to(np.asarray(value, dtype=dtype), shape)
    return np.ascontiguousarray(full).reshape(rows, features)


#: The torch dtype of each NumPy dtype of the loops.
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _none(dtype, rank: int) -> np.ndarray:
    return np.empty((0,) * rank, dtype=dtype)


def option_flags(options: Options, synaptic: bool, bias: bool) -> List[bool]:
    """The kernels' first six flags: ``synaptic, norm_input, bias, spiking, zero_reset,
    clamp``.

    Example:
        >>> option_flags(Options("zero", None, 1, -1.0, False, False, True), False, True)
        [False, False, True, True, True, True]
    """
    return [
        synaptic,
        options.norm_input,
        bias,
        options.spiking,
        options.reset == "zero",
        options.min_v_mem is not None,
    ]


def contiguous_buffers(results, like: Tensor) -> List[Optional[Tensor]]:
    """For each of ``results`` (each ``None`` or of ``like``'s shape and layout, as
    ``torch.empty_like`` makes them), itself when contiguous, else a contiguous tensor
    for a kernel to write; :func:`copy_back` then copies those into the results.

    Example:
        >>> like = torch.zeros(3, 2).t()  # a transposed layout, kept by empty_like
        >>> results = (torch.empty_like(like), None)
        >>> buffers = contiguous_buffers(results, like)
        >>> buffers[0].is_contiguous(), buffers[1] is None
        (True, True)
        >>> buffers[0].fill_(1.0); copy_back(results, buffers); results[0].stride()
        tensor(...)
        (1, 2)
    """
    return [
        t if t is None or t.is_contiguous() else torch.empty(like.shape, dtype=like.dtype)
        for t in results
    ]


def copy_back(results, buffers) -> None:
    """The buffers of :func:`contiguous_buffers` into their results."""
    for result, buffer in zip(results, buffers):
        if buffer is not result:
            result.copy_(buffer)


def _kernel():
    # The kernels' module imports Numba: imported on first use, not with aquatic (then
    # found in sys.modules, a tenth of import_module's time).
    name = "aquatic.functional.neurons_jit_kernels"
    return (sys.modules.get(name) or importlib.import_module(name)).forward_kernel()


# ----------------------------------------------------------------------------- forward


def sequence_forward(
    x: Tensor,
    v0: Tensor,
    i0: Optional[Tensor],
    alpha_mem: Tensor,
    alpha_syn: Optional[Tensor],
    threshold: Tensor,
    bias: Optional[Tensor],
    options: Options,
    record: bool,
    need_grad: bool,
    keep_current: bool,
    checkpoint: Optional[int] = None,
    slopes: Optional[Tuple[int, float, float]] = None,
) -> Tuple[Optional[Tensor], ...]:
    """:func:`aquatic.functional.neurons_kernel.sequence_forward` on the compiled loop
    (same arguments, results and bits)."""
    n, n_steps = x.shape[0], x.shape[1]
    step_shape = tuple(v0.shape)
    features = math.prod(step_shape[1:])
    dtype = x.dtype
    ndtype = np.float32 if dtype == torch.float32 else np.float64
    synaptic, spiking = alpha_syn is not None, options.spiking
    min_v_mem = options.min_v_mem
    shared = not spiking and min_v_mem is None
    keep_v = need_grad and not shared

    none2 = _none(ndtype, 2)
    # The inputs first, then the results in the PyTorch loop's order: the heap then
    # reuses the same memory from one call to the next (a different order of the
    # temporaries and results made the allocator return and re-fault 13 MB per call).
    inputs = (
        _flat(x, (n, n_steps, features)),
        _flat(v0, (n, features)),
        _flat(i0, (n, features)) if synaptic else none2,
        lanes(alpha_mem, step_shape, features, ndtype),
        lanes(1 - alpha_mem, step_shape, features, ndtype) if options.norm_input else none2,
        lanes(alpha_syn, step_shape, features, ndtype) if synaptic else none2,
        lanes(threshold, step_shape, features, ndtype),
        lanes(bias, step_shape, features, ndtype) if bias is not None else none2,
    )
    # The results take x's layout, as in the PyTorch loop (torch.compile's fake
    # implementation promises it); the kernel writes contiguous buffers.
    output = torch.empty_like(x)
    trace = torch.empty_like(x) if spiking and record else None
    current = torch.empty_like(x) if keep_current and synaptic else None
    buffers = contiguous_buffers((output, trace, current), x)
    v_pre = x.new_empty(x.shape) if keep_v else None
    v_states = i_states = None
    if checkpoint is not None:
        count = -(-n_steps // checkpoint)
        v_states = x.new_empty((count,) + step_shape)
        i_states = x.new_empty((count,) + step_shape) if synaptic else None
    v_final = x.new_empty(step_shape)
    i_final = x.new_empty(step_shape) if synaptic else None

    def arr3(t):
        return _none(ndtype, 3) if t is None else t.view(t.shape[0], t.shape[1], features).numpy()

    flags = np.array(
        option_flags(options, synaptic, bias is not None)
        + [
            trace is not None,
            current is not None,
            keep_v,
            checkpoint or 0,
            slopes[0] if slopes is not None and keep_v else 0,
            0,  # the share of the jobs: set by jit_jobs.run
            1,
        ],
        dtype=np.int64,
    )
    form = (1.0, 1.0) if slopes is None else slopes[1:]
    consts = np.array([0, 1, 0 if min_v_mem is None else min_v_mem, *form], dtype=ndtype)
    jit_jobs.run(
        _kernel(),
        flags,
        consts,
        *inputs,
        arr3(buffers[0]),
        arr3(buffers[1]),
        arr3(buffers[2]),
        arr3(v_pre),
        v_final.view(n, features).numpy(),
        i_final.view(n, features).numpy() if synaptic else none2,
        arr3(v_states),
        arr3(i_states),
        parts=jit_jobs.parts_for(n, n_steps, features),
        entry="forward",
    )
    del inputs
    copy_back((output, trace, current), buffers)
    if shared and need_grad:
        v_pre = output
    return output, trace, current, v_pre, v_final, i_final, v_states, i_states
