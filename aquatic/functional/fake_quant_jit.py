"""Fake quantization in compiled loops (:mod:`aquatic.functional.jit_fake_quant`) on
contiguous float32 CPU tensors, where Numba is installed: the same bits as the PyTorch
operations, in fewer passes and calls.

- :func:`quantize_scalar`: fake quantization with one scale and zero point given as
  Python numbers, the eager per-tensor path of
  :func:`~aquatic.functional.fake_quant_nearest.fake_quantize_nearest_scalar` (every
  per-tensor :class:`~aquatic.quantizers.UniformQuantizer` with an observer on the CPU
  reaches it).
- :func:`minmax_rows_step`: a per-channel weight quantizer's observer update and fake
  quantization in one call (:class:`~aquatic.observers.MinMaxObserver`, symmetric
  signed codes), and :func:`observe_scalar_step`, a per-tensor quantizer's observer
  update (min/max or moving average) and fake quantization in one too, for
  :mod:`aquatic.quantizers.fused`.

The two steps return ``None`` where they do not apply, and then nothing has changed: the
caller runs the PyTorch operations (:func:`quantize_scalar` is called only where
:func:`applies` says it may). Gradients: the identity where no code clips, else the
incoming gradient times the mask, which the loop writes in the same pass as the values
(:mod:`aquatic.functional.fake_quant_outputs`, with :data:`PRODUCT_LIMIT` and
:data:`CLONE_LIMIT`).

Inside training steps here (two threads), sharing a call on PyTorch's OpenMP team and
taking a masked gradient through an autograd.Function gained from a quarter of a
million elements and cost below: :data:`PARALLEL_ABOVE` and :data:`PRODUCT_LIMIT`
(then one limit for both gradients), measured in
interleaved rounds of int8 QAT steps (``benchmarks/qat_overhead.py``'s models; median
step, 2^19 against 2^18): the CNN (activations of 401,408 and 802,816 values) 7.82
against 7.61 ms per tensor and 7.43 against 7.28 ms per channel; the 784-512-512-10
MLP (weights of 262,144 and 401,408) 2.11 against 2.08 ms and 2.10 against 2.02 ms;
the 784-256-256-10 MLP (a weight of 200,704) 1.145 against 1.142 ms, and 2^17 cost it
1.176 ms. An identity gradient's copy, read and quantized in place, pays up to 2^19
(:data:`CLONE_LIMIT`): the 784-256-256-10 MLP 1.028 ms against 1.055 ms reading the
input, 1.450x against 1.488x float; 784-N-N-10 MLPs, N = 512, 1024, 2048 (weights of
262,144 to 4,194,304 values): 1.975 ms with 2^20 against 2.015 with 2^18, 4.141 with
2^19 against 4.216 with 2^21, 10.61 with 2^20 against 10.92 with 2^23; per channel,
the 784-256-256-10 MLP 1.077 against 1.094 ms.
A per-tensor observer's step is shared from :data:`SHARE_OBSERVE_FROM`
elements, its extrema and its quantization alike. ``AQUATIC_NUMBA=0`` (before import)
or :data:`ENABLED` turn the loops off.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

import torch
from torch import Tensor
from torch.nn import Parameter

from aquatic.functional import jit_calls
from aquatic.functional.fake_quant_outputs import finish, mask_kind, prepare
from aquatic.functional.fake_quant_rules import AVERAGE, AVERAGE_FROM_BATCH, MIN_MAX

__all__ = [
    "ENABLED", "PARALLEL_ABOVE", "PRODUCT_LIMIT", "CLONE_LIMIT", "SHARE_OBSERVE_FROM", "EPS", "available", "applies",
    "quantize_scalar", "minmax_rows_step", "observe_scalar_step", "same_bits", "MIN_MAX",
    "AVERAGE", "AVERAGE_FROM_BATCH",
]  # fmt: skip

#: Whether the compiled loops run where they apply (``False``: the PyTorch operations,
#: the same bits).
ENABLED = os.environ.get("AQUATIC_NUMBA", "1") != "0"
#: From this many elements, a call is shared out on PyTorch's OpenMP threads
#: (:func:`aquatic.functional.jit_openmp.run_on_team`).
PARALLEL_ABOVE = 1 << 18
#: From this many elements, a tensor whose gradient is masked (codes may clip) gets it
#: through a Python autograd.Function rather than a product with the mask
#: (``input * mask``) that the loop overwrites; and a layer's own output
#: (:data:`~aquatic.functional.fake_quant_outputs.OWNED`) is quantized in place.
PRODUCT_LIMIT = 1 << 18
#: From this many elements, a tensor whose gradient is the identity gets it through a
#: Python autograd.Function rather than a copy (``clone``), which the loop reads and
#: quantizes in place.
CLONE_LIMIT = 1 << 19
#: From this many elements (and more than one thread), a per-tensor quantizer's step
#: (:func:`observe_scalar_step`) is shared out on PyTorch's OpenMP team: each thread
#: takes the extrema of the spans it claims, then quantizes those spans with the merged
#: range (:mod:`aquatic.functional.jit_fake_quant_team`). Where no team can run it, the
#: step declines from this size, and the observer takes its extrema with
#: ``torch.aminmax`` on PyTorch's threads, faster there than one compiled call on one.
#: Measured inside training steps (``benchmarks/qat_overhead.py``'s models, int8 per
#: tensor, interleaved, median step), shared against the ``aminmax`` path: the
#: 784-256-256-10 MLP 1.158 against 1.205 ms, the 784-512-512-10 MLP 2.061 against
#: 2.194 ms, the CNN 7.31 against 7.37 ms; 2^17 gave the same times, 2^14 and 2^15 (the
#: MLPs' activations shared too) cost 20 to 40 µs a step. Since a clone is quantized in
#: place (:data:`CLONE_LIMIT`), one call on this thread gains below 2^18: the
#: 784-256-256-10 MLP's weights (200,704 and 65,536 values) 1.009 against 1.033 ms
#: (1.415x against 1.449x the float step; the 784-512-512-10 MLP 1.901 against 1.919 ms).
SHARE_OBSERVE_FROM = 1 << 18
#: The smallest scale (float32 epsilon, as :func:`~aquatic.functional.qparams.calculate_qparams`).
EPS = torch.finfo(torch.float32).eps

_loops = None  # aquatic.functional.jit_fake_quant, once compiled
_team = None  # aquatic.functional.jit_fake_quant_team
_tried = False


def available() -> bool:
    """Whether the compiled loops run: :data:`ENABLED`, Numba installed, and the loops
    compiled (on the first call; where they fail to, a ``RuntimeWarning`` says so once
    and the PyTorch operations run instead).

    Example:
        >>> isinstance(available(), bool)
        True
    """
    global _loops, _team, _tried
    if not ENABLED:
        return False
    if not _tried:
        _tried = True
        try:
            loops = importlib.import_module("aquatic.functional.jit_fake_quant")
            team = importlib.import_module("aquatic.functional.jit_fake_quant_team")
        except ImportError:  # pragma: no cover - Numba is missing
            return False
        if loops.quantize_at is None:  # pragma: no cover - Numba is missing
            return False
        compiles = importlib.import_module("aquatic.functional.neurons_jit").compiles
        if compiles("fake quantization", "PyTorch operations", lambda: _compile(loops, team)):
            _loops, _team = loops, team
    return _loops is not None


def _compile(loops, team) -> None:
    one, out, low, high = (torch.zeros(1) for _ in range(4))
    loops.quantize_at(one.data_ptr(), out.data_ptr(), low.data_ptr(), 1, 1.0, 1.0, -1.0, 1.0, 1)
    pointers = (t.data_ptr() for t in (one, out, low, high))
    loops.observe_rows_at(*pointers, 1, 1, 1.0, 1, EPS)
    loops.commit(low.data_ptr(), high.data_ptr(), out.data_ptr(), 0)
    loops.same_bits_at(one.data_ptr(), out.data_ptr(), 1)
    loops.observe_scalar_at(one.data_ptr(), out.data_ptr(), 0, 1, low.data_ptr(), high.data_ptr(),
                            0, 0.0, False, False, 0, 255, 1.0, EPS, 0)  # fmt: skip
    loops.mask_product_at(one.data_ptr(), out.data_ptr(), high.data_ptr(), 1)
    for name in ("rows", "quantize", "scalar", "product"):
        team.entry(name)


def applies(input: Tensor, dense: bool = False) -> bool:
    """Whether the loops take ``input``: a non-empty contiguous float32 CPU tensor, in
    eager mode, with the loops :func:`available`; with ``dense``, contiguous in a
    channels-last format too (:func:`quantize_scalar` works on the memory as it lies,
    and its results take the input's strides).

    Not a subclass of ``Tensor`` other than ``Parameter`` (its operations may mean
    something else), a tensor of a ``torch.func`` transform (it has no memory of its
    own), nor under ``torch.jit.trace``, ``torch.compile`` or ``torch.export``, which
    record operations and would miss what a loop writes: those take the PyTorch
    operations.

    Example:
        >>> x = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
        >>> applies(x) or applies(x, dense=True) == available()
        True
    """
    return (
        input.dtype == torch.float32
        and input.is_cpu
        and (type(input) is Tensor or type(input) is Parameter)
        and (input.is_contiguous() or (dense and _channels_last(input)))
        and input.numel() > 0
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not (_wrapped is not None and _wrapped(input))
        and available()
    )


# Tensors of torch.func's transforms (grad, vmap) wrap others and have no memory of
# their own; torch has no public test for them.
_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def _channels_last(input: Tensor) -> bool:
    if input.dim() == 4:
        return input.is_contiguous(memory_format=torch.channels_last)
    return input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d)


def quantize_scalar(
    input: Tensor, scale: float, inv_scale: float, low: float, high: float, clips: bool
) -> Tensor:
    """``clamp(rint(input * inv_scale), low, high) * scale + 0`` (float32 arithmetic;
    ``scale`` and ``inv_scale``, its float32 reciprocal, are float32 values as Python
    floats; ``low`` and ``high`` the range moved by the zero point), with the gradient
    of :func:`~aquatic.functional.fake_quant_nearest.fake_quantize_nearest_scalar`:
    masked where ``clips`` (a code may clip), else the identity. ``input`` must pass
    :func:`applies` (``dense=True``): the loop reads its memory in order, and the
    output, made with ``clone``, ``*_like`` or a product with a mask shaped like it,
    has the same strides.

    Shape:
        - input: any shape; output: the same shape and strides.

    Example:
        >>> x = torch.tensor([-1.0, 0.26, 13.0], requires_grad=True)
        >>> if available():
        ...     y = quantize_scalar(x, 0.1, 10.0, -128.0, 127.0, clips=True)
        ... else:
        ...     y = torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)
        >>> y.detach(), torch.autograd.grad(y.sum(), x)[0]
        (tensor([-1.0000,  0.3000, 12.7000]), tensor([1., 1., 0.]))
    """
    size = input.numel()
    written = prepare(input, clips, CLONE_LIMIT, PRODUCT_LIMIT)
    out, mask = written.out, written.mask
    kind = mask_kind(mask)
    parts = _parts(size)
    source = out if written.copy else input  # a clone: read and quantized in place
    # fmt: off
    if parts > 1:
        call = _call(source, out, 1, size, parts, 0)
        call.words[4] = mask.data_ptr() if mask is not None else 0
        call.constants[:5] = scale, inv_scale, low, high, kind
        ran = call.run("quantize", parts)
    else:
        ran = False
    if not ran:
        _loops.quantize_at(source.data_ptr(), out.data_ptr(),
                           mask.data_ptr() if mask is not None else 0, size, scale,
                           inv_scale, low, high, kind)
    # fmt: on
    return finish(input, written, _mask_product)


def minmax_rows_step(
    input: Tensor, min_val: Tensor, max_val: Tensor, levels: int, limit: float
) -> Optional[Tensor]:
    """Widen each row's ``[min_val, max_val]`` by its extrema and return the
    fake-quantized ``input`` (symmetric, scale ``max(-min, max) / levels`` per row, at
    least float32 ``eps``), with the identity gradient; ``None`` where an extremum is
    non-finite or above ``limit``, and then nothing has changed.

    ``input`` passes :func:`applies`, its rows along the first dimension; ``min_val``
    and ``max_val`` are the observer's float32 buffers, one value per row.

    Shape:
        - input: any shape; output: the same shape and strides.

    Example:
        >>> low, high = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
        >>> w = torch.tensor([[0.5, -2.54], [0.26, 1.0]], requires_grad=True)
        >>> y = minmax_rows_step(w, low, high, 127, 3e38) if available() else None
        >>> y is None or (torch.equal(low, torch.tensor([-2.54, -1.0])), y.detach()[0])
        (True, tensor([ 0.5000, -2.5400]))
    """
    written = prepare(input, False, CLONE_LIMIT, PRODUCT_LIMIT, in_place=False)
    out = written.out
    source = out if written.copy else input  # a clone: read and quantized in place
    rows = min_val.numel()
    cols = input.numel() // rows
    parts = min(_parts(input.numel()), rows)
    if parts > 1:
        call = _call(source, out, rows, cols, parts, rows)
        call.words[5:7] = min_val.data_ptr(), max_val.data_ptr()
        call.constants[:3] = limit, levels, EPS
        call.status[:] = 0
        if call.run("rows", parts):
            if not call.status.all():
                return None
            _loops.commit(min_val.data_ptr(), max_val.data_ptr(), call.scratch.data_ptr(), rows)
            return finish(input, written)
    # fmt: off
    if not _loops.observe_rows_at(source.data_ptr(), out.data_ptr(), min_val.data_ptr(),
                                  max_val.data_ptr(), rows, cols, limit, levels, EPS):
        return None
    # fmt: on
    return finish(input, written)


def observe_scalar_step(
    input: Tensor,
    min_val: Tensor,
    max_val: Tensor,
    rule: int,
    factor: float,
    initialized: bool,
    symmetric: bool,
    quant_min: int,
    quant_max: int,
    limit: float,
    clips: bool = True,
) -> Optional[Tensor]:
    """A per-tensor quantizer's observer update and fake quantization in one compiled
    call (:func:`~aquatic.functional.jit_fake_quant.observe_scalar_at`): the bits of its
    observer's ``update_scalar`` and ``calculate_qparams_scalar`` and of
    :func:`quantize_scalar`. ``clips=False`` promises that no code can leave the range
    (a symmetric signed range that holds every batch it observes): the gradient is then
    the identity, with no mask; otherwise it is masked (all ones where nothing
    clipped). ``rule`` and ``factor`` say how the range merges
    (:mod:`aquatic.functional.fake_quant_rules`: ``MIN_MAX``, or the moving average's
    form and its :math:`c` or :math:`1 - c`); ``min_val`` and ``max_val`` are the
    observer's float32 buffers (one value each), written in place. ``None`` where an
    extremum is non-finite or above ``limit`` (nothing has changed). From
    :data:`SHARE_OBSERVE_FROM` elements on more than one thread, the call is shared out
    on PyTorch's OpenMP team; where no team can run it, ``None`` there too (the
    observer's ``aminmax`` on PyTorch's threads is faster than one compiled call).

    Shape:
        - input: any shape; output: the same shape and strides.

    Example:
        >>> low, high = torch.tensor(0.0), torch.tensor(0.0)
        >>> x = torch.tensor([-1.0, 0.26, 2.0], requires_grad=True)
        >>> args = (low, high, MIN_MAX, 0.0, False, False, 0, 255, 3e38)
        >>> y = observe_scalar_step(x, *args) if available() else None
        >>> y is None or (low.item(), high.item(), y.detach())
        (-1.0, 2.0, tensor([-1.0000,  0.2588,  2.0000]))
    """
    size = input.numel()
    parts = 1
    if size >= SHARE_OBSERVE_FROM and torch.get_num_threads() > 1:
        parts = jit_calls.team_parts()
        if parts == 1:
            return None  # no team to share it: the observer's aminmax on PyTorch's threads
    written = prepare(input, clips, CLONE_LIMIT, PRODUCT_LIMIT)
    out, mask = written.out, written.mask
    kind = mask_kind(mask)
    # A clone is read where it lies and quantized in place: one array, in the cache.
    source = out if written.copy else input
    if parts > 1:
        call = _call(source, out, 1, size, parts, parts)
        call.words[4:7] = (
            mask.data_ptr() if mask is not None else 0,
            min_val.data_ptr(),
            max_val.data_ptr(),
        )
        call.counts[:] = 0
        # fmt: off
        call.constants[:] = (rule, factor, initialized, symmetric, quant_min, quant_max, limit,
                             EPS, kind)
        # fmt: on
        if call.run("scalar", parts):
            return finish(input, written, _mask_product) if call.counts[2] else None
    # fmt: off
    if not _loops.observe_scalar_at(
        source.data_ptr(), out.data_ptr(), mask.data_ptr() if mask is not None else 0, size,
        min_val.data_ptr(), max_val.data_ptr(), rule, factor, initialized, symmetric,
        quant_min, quant_max, limit, EPS, kind,
    ):
        return None
    # fmt: on
    return finish(input, written, _mask_product)


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether two contiguous float32 CPU tensors hold the same bits (signed zeros and
    NaN payloads told apart), in one compiled pass; else, or without the loops, ``False``.

    Shape:
        - a, b: any shapes with as many values (compared in memory order).

    Example:
        >>> x, y = torch.tensor([0.0, 1.5]), torch.tensor([-0.0, 1.5])
        >>> same_bits(x, x.clone()) == available(), same_bits(x, y)
        (True, False)
    """
    plain = (t.dtype == torch.float32 and t.is_cpu and t.is_contiguous() for t in (a, b))
    if not (available() and a.numel() == b.numel() and all(plain)):
        return False
    return bool(_loops.same_bits_at(a.data_ptr(), b.data_ptr(), a.numel()))


def _mask_product(grad: Tensor, mask: Tensor) -> Optional[Tensor]:
    """``grad * mask`` (a ``uint8`` mask) in a compiled loop, shared out on the team
    from :data:`PARALLEL_ABOVE` values: the bits of PyTorch's product; ``None`` where
    the gradient is not a contiguous float32 CPU tensor of the mask's shape."""
    if not (
        grad.dtype == torch.float32
        and mask.dtype == torch.uint8
        and grad.is_cpu
        and grad.shape == mask.shape
        and grad.is_contiguous()
        and mask.is_contiguous()
        and type(grad) is Tensor
    ):
        return None
    out = torch.empty_like(grad)
    size = grad.numel()
    parts = _parts(size)
    if parts > 1:
        call = _call(grad, out, 1, size, parts, 0)
        call.words[4] = mask.data_ptr()
        if call.run("product", parts):
            return out
    _loops.mask_product_at(grad.data_ptr(), mask.data_ptr(), out.data_ptr(), size)
    return out


def _parts(size: int) -> int:
    """Shares for the OpenMP team: two per thread from :data:`PARALLEL_ABOVE` elements
    where the team can run them, else 1 (this thread)."""
    return 1 if size < PARALLEL_ABOVE else jit_calls.team_parts()


def _call(source: Tensor, out: Tensor, rows: int, cols: int, parts: int, extra: int):
    return jit_calls.call_for(_team.entry, _team.WORDS, source, out, rows, cols, parts, extra)
