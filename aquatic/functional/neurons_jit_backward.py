"""The fused LIF sequence's backward pass on a loop compiled by Numba, when Numba is
installed.

:func:`aquatic.functional.neurons_kernel_backward.sequence_backward` computes the
membranes' gradients in blocks of steps, about a dozen PyTorch operations per block and
a multiply-add per step. Where this applies, it hands each segment of steps to
:func:`segment_backward` instead: one compiled pass
(:mod:`aquatic.functional.neurons_jit_backward_kernels`) from the last step back that
reads the saved membranes and the incoming gradients once, writes the membranes'
gradients once, and adds up the decay's, threshold's and bias's gradients of each
neuron as it goes; with a synaptic current it runs the current's gradient back in the
same pass. The synaptic decay's gradient and the input's (a product) are then computed
by the PyTorch code, as before. Checkpointed sequences are one call too: the loop
recomputes each segment's membranes from its checkpointed state (the forward loop's
operations), one job of neurons at a time, in the cache; large sequences take such
checkpoints by themselves (:func:`own_checkpoint`).

It applies where the compiled forward loop does
(:func:`~aquatic.functional.neurons_jit.forward_ok`: Numba installed and enabled, CPU
float32 or float64, binary spikes). The loop computes the surrogate's slopes itself for
``SingleExponential`` (the default), ``ArcTan``, ``FastSigmoid`` and ``Triangle``
(:meth:`~aquatic.functional.surrogate.Surrogate.kernel_form`; the exponential is
:func:`~aquatic.functional.jit_math.exp_nonpositive`), or reads the slopes that the
forward loop kept in place of the membranes where nothing else reads those
(:func:`kept_slopes`); any other surrogate (a subclass,
any object with a ``derivative``) computes them with its own ``derivative_``, a block of
steps at a time (on sequences of at most :data:`GIVEN_LIMIT` elements, where that is
set; beyond, the PyTorch backward runs).
Its gradients are those of the PyTorch backward up to rounding: PyTorch's kernels fuse
some multiplies and adds into one rounding, and the parameters' sums run in another
order. ``AQUATIC_NUMBA=0`` turns it off with the forward loop, :data:`ENABLED` alone.
The loop's jobs run on several threads (:mod:`aquatic.functional.jit_jobs`).
"""

from __future__ import annotations

import functools
import importlib
import math
import sys
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from aquatic.functional import jit_jobs, neurons_jit
from aquatic.functional.neuron_types import Options
from aquatic.functional.neurons_kernel import block_steps

__all__ = [
    "ENABLED", "GIVEN_LIMIT", "RECOMPUTE_ABOVE", "RECOMPUTE_BYTES", "SURROGATE_CODES",
    "SAVED_CODE", "SAVED_HERE_CODE", "KEEP_SLOPES", "backward_ok", "kept_slopes",
    "slopes_suffice", "recomputes", "own_checkpoint",
    "segment_backward",
]  # fmt: skip

#: Whether the compiled backward runs where it applies (with the compiled forward loop:
#: :data:`aquatic.functional.neurons_jit.ENABLED` turns both off). ``False`` keeps the
#: PyTorch backward's bits with the compiled forward.
ENABLED = True

#: A surrogate whose slopes its own ``derivative_`` computes (a subclass, any other
#: object with a ``derivative``) runs the compiled loop on sequences (or checkpointed
#: segments) of at most this many elements; ``None``: on every sequence. (Measured with
#: slopes given this way, two threads: 7% to 27% less time for a whole step on (32,
#: 100, 256) to (16, 1000, 512); one thread: the PyTorch backward as fast above 2**18.)
GIVEN_LIMIT: Optional[int] = None

#: Sequences above this many bytes recompute their membranes in backward instead of
#: keeping them (:func:`own_checkpoint`): glibc maps such blocks afresh on every call (a
#: page fault every 4 KiB); 27-33% faster steps on 52-65 MB sequences.
RECOMPUTE_ABOVE = 1 << 25

#: The bytes of membranes that one job of neurons recomputes at a time in backward: half
#: the second-level cache measured, where they stay until the job's loop reads them.
RECOMPUTE_BYTES = 1 << 19

#: The kernel's code of each ``Surrogate.kernel_form`` kind (``given``: by ``derivative_``).
SURROGATE_CODES = {"given": 0, "fast_sigmoid": 1, "arctan": 2, "triangle": 3, "exp": 4}
#: The backward kernel's codes (not surrogate kinds) for slopes kept by forward
#: (:func:`kept_slopes`) in the membranes' array, or in the gradient's, written over.
SAVED_CODE, SAVED_HERE_CODE = 5, 6

#: Whether forward keeps slopes where :func:`kept_slopes` allows (for measurements, tests).
KEEP_SLOPES = True


def backward_ok(options: Options, steps: int, v0: Tensor, *tensors: Optional[Tensor]) -> bool:
    """Whether :func:`segment_backward` runs the backward pass of a sequence whose
    state is ``v0``, in segments of ``steps`` steps (the other tensors: the parameters
    and saved tensors it reads)."""
    if not ENABLED:
        return False
    if options.spiking and options.max_spikes != 1:
        return False
    if options.spiking and _slopes_form(options.surrogate)[0] == "given":
        if GIVEN_LIMIT is not None and steps * v0.numel() > GIVEN_LIMIT:
            return False
    return neurons_jit.forward_ok(v0, options, *tensors) and _ready()


def kept_slopes(
    options: Options, needs, record: bool, checkpoint: Optional[int], *tensors: Optional[Tensor]
) -> Optional[Tuple[int, float, float]]:
    """``(code, width, scale)`` of the surrogate (:data:`SURROGATE_CODES`) where the
    compiled forward loop keeps its slopes at each step's membrane for backward, in
    place of the membranes, else ``None``. ``needs``: whether each of ``x, v0, i0,
    alpha_mem, alpha_syn, threshold, bias`` needs its gradient; ``tensors``: those seven.

    The forward loop, which waits on memory, computes them at no cost measured; the
    backward loop reads them (``SingleExponential``'s exponential had made it
    compute-bound) and, where the graph is not kept, writes the gradient over them
    (figures: ``docs/spiking.rst``, Speed). The same function, so the same bits. Where
    backward reads nothing else of the membranes (:func:`slopes_suffice`, and no
    recorded membrane), for surrogates whose slopes the loops compute, with the
    compiled loops running both passes; not under ``torch.compile``.

    Example:
        >>> from aquatic.functional.surrogate import SingleExponential
        >>> options = Options("subtract", SingleExponential(), 1, None, False, False, True)
        >>> x, v0, th = torch.zeros(2, 5, 3), torch.zeros(2, 3), torch.ones(())
        >>> tensors = (x, v0, None, torch.full((), 0.9), None, th, None)
        >>> kept_slopes(options, [True] + [False] * 6, False, None, *tensors)[0]
        4
        >>> # the threshold's gradient reads the membranes: they are kept
        >>> kept_slopes(options, [True] * 6 + [False], False, None, *tensors) is None
        True
    """
    x, v0, _, _, alpha_syn = tensors[:5]
    if not (KEEP_SLOPES and slopes_suffice(options, needs, alpha_syn is not None, checkpoint)):
        return None
    if record:  # (a recorded membrane's gradient reads the membranes)
        return None
    kind, width, scale = _slopes_form(options.surrogate)
    if kind == "given" or not backward_ok(options, x.shape[1], v0, *tensors):
        return None
    return SURROGATE_CODES[kind], width, scale


def slopes_suffice(options: Options, needs, synaptic: bool, checkpoint: Optional[int]) -> bool:
    """Whether backward reads only the slopes at the membranes (none recorded): binary
    spikes, subtract reset, no clamp, gain, synaptic current, checkpoint, trained
    decay or threshold (``needs[3]``, ``needs[5]``).

    Example:
        >>> from aquatic.functional.surrogate import ArcTan
        >>> options = Options("zero", ArcTan(), 1, None, False, False, True)
        >>> slopes_suffice(options, [True] * 7, False, None)  # the zero reset reads them
        False
    """
    if not (options.spiking and options.reset == "subtract" and options.max_spikes == 1):
        return False
    if options.min_v_mem is not None or options.norm_input or synaptic:
        return False
    return checkpoint is None and not (needs[3] or needs[5])


def recomputes(options: Options) -> bool:
    """Whether the compiled backward recomputes the membranes of checkpointed segments
    itself (it reads them where the surrogate's own ``derivative_`` gives the slopes:
    that runs on the membranes)."""
    return not options.spiking or _slopes_form(options.surrogate)[0] != "given"


def own_checkpoint(x: Tensor, options: Options) -> Optional[int]:
    """The checkpoint that the fused sequence ``x`` takes where none is given: ``None``
    (forward keeps every step's membrane) up to :data:`RECOMPUTE_ABOVE` bytes, above
    that the steps of :data:`RECOMPUTE_BYTES` of a job's membranes where the compiled
    loops run forward and backward and backward :func:`recomputes` them.

    Forward then writes no membranes, and backward recomputes them a job and a segment
    at a time, in the cache: the same bits, so the same gradients. Forward keeps the
    input instead (the same size). Under ``torch.compile`` this is decided while
    tracing.

    Example:
        >>> from aquatic.functional.neuron_types import Options
        >>> from aquatic.functional.surrogate import ArcTan
        >>> options = Options("subtract", ArcTan(), 1, None, False, False, True)
        >>> own_checkpoint(torch.zeros(4, 100, 32), options) is None  # 51 KB: kept
        True
    """
    if x.numel() * x.element_size() <= RECOMPUTE_ABOVE:
        return None
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    if options.max_spikes != 1 or not recomputes(options):
        return None
    if not options.spiking and options.min_v_mem is None:  # the membrane is the output
        return None
    return _segment_steps(x.dtype == torch.float32) or None


@torch.compiler.assume_constant_result
def _segment_steps(single: bool) -> int:
    """The steps of :data:`RECOMPUTE_BYTES` of a job's membranes in single (else double)
    precision where the compiled loops run, else 0 (a constant while tracing)."""
    if not (ENABLED and neurons_jit.available() and _ready()):
        return 0
    return max(1, RECOMPUTE_BYTES // (jit_jobs.JOB_LANES * (4 if single else 8)))


def _slopes_form(surrogate) -> Tuple[str, float, float]:
    """``(kind, parameter, scale)`` of the surrogate's slopes in the kernel: its
    ``kernel_form()`` where the kernel knows that kind, else ``("given", 1, 1)`` (also
    for an object without ``kernel_form``: any object with a ``derivative`` is a
    surrogate)."""
    kernel_form = getattr(surrogate, "kernel_form", None)
    form = kernel_form() if callable(kernel_form) else None
    return form if form is not None and form[0] in SURROGATE_CODES else ("given", 1.0, 1.0)


def _kernel():
    name = "aquatic.functional.neurons_jit_backward_kernels"
    return (sys.modules.get(name) or importlib.import_module(name)).backward


@functools.lru_cache(maxsize=None)
def _ready() -> bool:
    """Whether the backward kernel compiles (once; a ``RuntimeWarning`` if not, and the
    PyTorch backward runs)."""
    two, three = np.zeros((1, 1), np.float32), np.zeros((1, 1, 1), np.float32)
    flags = np.zeros(24, np.int64)
    flags[[0, 4, 12, 13, 14, 23]] = 1, 1, 1, 1, SURROGATE_CODES["arctan"], 1
    consts = np.array([0, 1, 0, 1, 1], np.float32)
    return neurons_jit.compiles(
        "LIF backward loop",
        "PyTorch backward",
        lambda: _kernel()(flags, consts, three, two, three, three, two, three, two, two,
                          three, two, two, two, three, two, two, two, two, three, three, two,
                          three, three),  # fmt: skip
    )


def _gradient(g: Optional[Tensor], shape, ndtype) -> Tuple[int, np.ndarray]:
    """``(mode, array)`` of an incoming gradient of ``shape`` ``(N, T, F)``: 0 and an
    empty array for ``None``, 2 and its one value when every element is that value (the
    gradient of a sum, expanded), 1 and a contiguous array otherwise."""
    if g is None or g.numel() == 0:
        return 0, np.empty((0, 0, 0), ndtype)
    if all(stride == 0 for stride in g.stride()):
        return 2, g.detach().as_strided((1, 1, 1), (1, 1, 1)).numpy()
    return 1, g.detach().contiguous().view(shape).numpy()


def segment_backward(
    options: Options,
    first: int,
    last: int,
    v_seg: Tensor,
    v_before: Tensor,
    inflow: Optional[Tensor],
    alpha_mem: Tensor,
    threshold: Tensor,
    g_spikes: Optional[Tensor],
    g_trace: Optional[Tensor],
    g_vfinal: Optional[Tensor],
    grad_v: Tensor,
    needs: Tuple[bool, bool, bool],
    synaptic: Optional[Tuple[Tensor, Optional[Tensor], Optional[Tensor], Tensor]] = None,
    states: Optional[Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], int]] = None,
    slopes: bool = False,
) -> Tuple[Optional[Tensor], ...]:
    """Steps ``first:last`` of ``grad_v`` ``(N, T, *)``, the membranes' gradients (the
    steps from ``last`` on already in it), and the segment's sums of the decay's,
    threshold's and bias's gradients (``needs``) over its steps, one per neuron
    (``v_before``'s shape; ``None`` where not needed).

    ``v_seg``: the membranes before the reset of the segment's steps ``(N, S, *)``;
    ``v_before``: the membrane entering step ``first``; ``inflow``: the segment's input
    to the membrane ``(N, S, *)``, read for the decay's gradient with ``norm_input``;
    ``g_spikes``, ``g_trace`` ``(N, T, *)`` and ``g_vfinal``: the gradients of the
    spikes, the recorded (or, non-spiking, output) membrane and the final membrane.

    ``synaptic``: ``(alpha_syn, g_itrace, g_ifinal, carry)`` for a neuron with a
    synaptic current: then ``grad_v`` receives the current's gradient instead (the scan
    of :func:`~aquatic.functional.neurons_kernel_backward.sequence_backward`'s tail,
    ``(1 - alpha_mem)`` applied with ``norm_input``), and ``carry`` ``(N, *)`` holds the
    membrane's gradient at step ``last`` on entry (where ``last`` is not the end) and
    at step ``first`` on return.

    A surrogate whose slopes the loop does not compute gives them by its
    ``derivative_``, for a block of steps at a time (the PyTorch backward's blocks), and
    the loop runs once per block.

    ``states``: ``(x, v_states, i_states, bias, every)`` to recompute the membranes
    instead of reading them (``v_seg`` is then ``None``, and ``first:last`` the whole
    sequence): the input ``(N, T, *)``, the states entering steps ``0, every, 2 every,
    ...`` (forward's checkpoints) and the bias. Each job of neurons recomputes one
    segment of ``every`` steps at a time, from the last, into a buffer that stays in
    the cache (:func:`recomputes` says where this applies), and runs the segment back.

    ``slopes``: ``v_seg`` holds the surrogate's slopes that forward kept in place of the
    membranes (:func:`kept_slopes`, which says where nothing else reads them); where
    ``v_seg`` is ``grad_v`` itself, the loop writes the gradient over them.
    """
    n, n_steps = grad_v.shape[0], grad_v.shape[1]
    step_shape = tuple(v_before.shape)
    features = math.prod(step_shape[1:])
    ndtype = np.float32 if grad_v.dtype == torch.float32 else np.float64
    steps = last - first
    need_alpha, need_threshold, need_bias = needs
    need_threshold = need_threshold and options.spiking
    v_arr = None if v_seg is None else v_seg.contiguous().view(n, steps, features)
    full = (n, n_steps, features)
    gs_mode, gs = _gradient(g_spikes, full, ndtype)
    gt_mode, gt = _gradient(g_trace, full, ndtype)
    has_final = g_vfinal is not None and last == n_steps
    wanted = (need_alpha, need_threshold, need_bias)
    sums = [grad_v.new_zeros((n, features)) if need else None for need in wanted]
    empty2, empty3 = np.empty((0, 0), ndtype), np.empty((0, 0, 0), ndtype)
    # (the surrogate is not read without spikes)
    surrogate = _slopes_form(options.surrogate) if options.spiking else ("arctan", 1.0, 1.0)
    norm = options.norm_input and need_alpha
    lanes = neurons_jit.lanes
    gain = lanes(1 - alpha_mem, step_shape, features, ndtype) if options.norm_input else empty2
    if synaptic is not None:
        alpha_syn, g_itrace, g_ifinal, carry = synaptic
        gi_mode, gi = _gradient(g_itrace, full, ndtype)
        has_ifinal = g_ifinal is not None and last == n_steps
        syn_arrays = (
            gi,
            g_ifinal.detach().contiguous().view(n, features).numpy() if has_ifinal else empty2,
            lanes(alpha_syn, step_shape, features, ndtype),
            gain,
            carry.view(n, features).numpy(),
        )
    else:
        gi_mode, has_ifinal = 0, False
        syn_arrays = (empty3, empty2, empty2, gain, empty2)
    every, has_bias = 0, False
    state_arrays = (empty3, empty2, empty3, empty3)
    if states is not None:
        x, v_states, i_states, bias, every = states
        has_bias = bias is not None
        state_arrays = (
            x.detach().contiguous().view(n, n_steps, features).numpy(),
            lanes(bias, step_shape, features, ndtype) if has_bias else empty2,
            v_states.detach().contiguous().view(len(v_states), n, features).numpy(),
            (
                i_states.detach().contiguous().view(len(v_states), n, features).numpy()
                if synaptic
                else empty3
            ),
        )
    code = SURROGATE_CODES[surrogate[0]]
    if slopes:
        code = SAVED_HERE_CODE if v_seg.data_ptr() == grad_v.data_ptr() else SAVED_CODE
    flags = np.array(
        [options.spiking, options.reset == "zero", options.detach_reset,
         options.min_v_mem is not None, gs_mode, gt_mode, has_final, need_alpha,
         need_threshold, need_bias, norm, first, last, n_steps,
         code, synaptic is not None, gi_mode, has_ifinal,
         options.norm_input, first, every, has_bias, 0, 1],
        dtype=np.int64,
    )  # fmt: skip
    min_v_mem = options.min_v_mem
    consts = np.array(
        [0, 1, 0 if min_v_mem is None else min_v_mem, surrogate[1], surrogate[2]], dtype=ndtype
    )
    arrays = (
        empty3 if v_arr is None else v_arr.detach().numpy(),
        v_before.detach().contiguous().view(n, features).numpy(),
        gs,
        gt,
        g_vfinal.detach().contiguous().view(n, features).numpy() if has_final else empty2,
        (
            inflow.detach().contiguous().view(n, steps, features).numpy()
            if norm and every == 0
            else empty3
        ),
        lanes(alpha_mem, step_shape, features, ndtype),
        lanes(threshold, step_shape, features, ndtype),
        grad_v.view(n, n_steps, features).numpy(),
        *(empty2 if s is None else s.numpy() for s in sums),
        *syn_arrays,
    )
    kernel = _kernel()
    if slopes or surrogate[0] != "given":
        parts = jit_jobs.parts_for(n, steps, features)
        arguments = (consts, *arrays, empty3, *state_arrays)
        jit_jobs.run(kernel, flags, *arguments, parts=parts, entry="backward")
        return tuple(None if s is None else s.view(step_shape) for s in sums)
    # The surrogate's slopes, a block of steps at a time from the last (its own code, as
    # the PyTorch backward runs it), and the kernel on each block.
    block = block_steps(v_before.numel())
    buffer = grad_v.new_empty(min(block, steps) * v_before.numel())
    for start in reversed(range(first, last, block)):
        stop = min(start + block, last)
        v_block = v_seg[:, start - first : stop - first]
        u = torch.sub(v_block, threshold, out=buffer[: v_block.numel()].view(v_block.shape))
        slopes = options.surrogate.derivative_(u)
        slopes = slopes.to(grad_v.dtype).expand(v_block.shape).contiguous()
        flags[11], flags[12] = start, stop
        block_slopes = slopes.view(n, stop - start, features).numpy()
        parts = jit_jobs.parts_for(n, stop - start, features)
        arguments = (consts, *arrays, block_slopes, *state_arrays)
        jit_jobs.run(kernel, flags, *arguments, parts=parts, entry="backward")
    return tuple(None if s is None else s.view(step_shape) for s in sums)
