"""When a :class:`~aquatic.quantizers.UniformQuantizer` may observe and fake-quantize in
compiled calls (:mod:`aquatic.functional.fake_quant_jit`) rather than run its observer
and its fake quantization as PyTorch operations and Python code.

It may where the result is the same bits: nearest rounding, an observer of aquatic's
own range rules (:class:`~aquatic.observers.MinMaxObserver` or
:class:`~aquatic.observers.MovingAverageMinMaxObserver`, not a subclass that merges
otherwise) on the quantizer's range without ``power_of_two``, and a contiguous float32
CPU tensor in eager mode outside ``torch.distributed`` (whose observers reduce extrema
across ranks first):

- per channel of axis 0 (a weight's output channels), with a min/max observer on a
  symmetric signed range that has seen a tensor:
  :func:`~aquatic.functional.fake_quant_jit.minmax_rows_step`;
- per tensor: :func:`~aquatic.functional.fake_quant_jit.observe_scalar_step`.

Beside saving passes over the tensor, this saves the dozen small operations and the
Python calls of the two steps, which weigh more inside a training step than alone: the
step's larger tensors push their code and data out of the caches (measured here: an
activation quantizer's forward and backward took 46 µs in a loop, 149 µs after a pass
over 16 MB; a 10 x 256 weight's forward 10 µs, 63 µs after such a pass).

For the same reason a quantizer in training keeps what :func:`fused_step` decided, a
:class:`Plan`, and its next steps check only what can change from call to call.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
from torch import Tensor

from aquatic.functional import cpu_heap, fake_quant_jit
from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver
from aquatic.observers.range_checks import distributed, range_limit

__all__ = ["fused_step", "fits", "Plan"]

# Codes of a covered range stay in it for ranges up to 2**21 codes
# (UniformQuantizer._covers).
_MAX_LEVELS = 1 << 21
_RULES = {
    MinMaxObserver._combine_float: "min_max",
    MovingAverageMinMaxObserver._combine_float: "average",
}


def fits(quantizer: Any, observer: Any) -> bool:
    """Whether ``quantizer`` and its ``observer`` are of a kind the compiled calls
    compute (not yet whether the tensor is).

    Example:
        >>> from aquatic.quantizers import UniformQuantizer
        >>> per_tensor, per_channel = UniformQuantizer(), UniformQuantizer(ch_axis=0)
        >>> fits(per_tensor, per_tensor.observer)
        True
        >>> fits(per_channel, per_channel.observer)  # once it has a range
        False
        >>> _ = per_channel(torch.randn(3, 4)); fits(per_channel, per_channel.observer)
        True
        >>> stochastic = UniformQuantizer(rounding="stochastic")
        >>> fits(stochastic, stochastic.observer)
        False
    """
    rule = _RULES.get(getattr(type(observer), "_combine_float", None))
    if rule is None or not isinstance(observer, (MinMaxObserver, MovingAverageMinMaxObserver)):
        return False
    if (
        quantizer.rounding != "nearest"
        or observer.power_of_two
        or observer.ch_axis != quantizer.ch_axis
        or observer.quant_min != quantizer.quant_min
        or observer.quant_max != quantizer.quant_max
    ):
        return False
    if quantizer.ch_axis is None:
        return True  # and observer.supports_scalars(the tensor): see fused_step
    return (
        quantizer.ch_axis == 0
        and rule == "min_max"
        and type(observer)._combine is MinMaxObserver._combine
        and observer.covers_last_batch()
        and observer.symmetric
        and quantizer.quant_min < 0
        and quantizer.quant_max - quantizer.quant_min < _MAX_LEVELS
        and observer.initialized
    )


def fused_step(quantizer: Any, input: Tensor) -> Optional[Tensor]:
    """The fake-quantized ``input`` after observing it, in compiled calls; ``None``
    where the quantizer, the tensor or the installation do not allow it (nothing has
    changed then).

    Shape:
        - input: any shape (per channel: the channels first); output: the same.

    Example:
        >>> from aquatic.quantizers import UniformQuantizer
        >>> q = UniformQuantizer(bits=8)
        >>> y = fused_step(q, torch.tensor([-1.0, 0.26, 2.54]))
        >>> y is None or (y, q.observer.max_val)  # None without Numba
        (tensor([-1.0000,  0.2600,  2.5400]), tensor(2.5400))
        >>> fused_step(q, torch.tensor([1.0, 2.0], dtype=torch.float64)) is None
        True
    """
    observer = quantizer._modules.get("observer")
    if not (
        fits(quantizer, observer)
        and fake_quant_jit.applies(input)
        and not (observer.training and distributed())
        # per tensor: a range its _combine_float merges (the observer's own methods)
        and (quantizer.ch_axis is not None or observer.supports_scalars(input))
    ):
        return None
    cpu_heap.settle(input)  # a large activation: the heap keeps what a step frees
    buffers = observer._buffers
    min_val, max_val = buffers["min_val"], buffers["max_val"]
    channels = () if quantizer.ch_axis is None else (input.shape[0],) if input.dim() else None
    if not (
        min_val.dtype == torch.float32
        and max_val.dtype == torch.float32
        and min_val.shape == channels
        and max_val.shape == channels
        and min_val.is_contiguous()  # the loops read and write them by address
        and max_val.is_contiguous()
    ):
        return None
    quant_min, quant_max = quantizer.quant_min, quantizer.quant_max
    limit = range_limit(input.dtype, quant_min, quant_max)
    if quantizer.ch_axis is not None:
        arguments = (min(quant_max, -quant_min), limit)
        output = fake_quant_jit.minmax_rows_step(input, min_val, max_val, *arguments)
        if output is not None and quantizer.training:
            trusted = quantizer.trusts_weight_versions
            quantizer.keep_plan(Plan(observer, channels[0], arguments, trusted))
        return output
    rule, factor = fake_quant_jit.MIN_MAX, 0.0
    if isinstance(observer, MovingAverageMinMaxObserver):
        c = observer.averaging_constant
        # MovingAverageMinMaxObserver._combine_float's two forms
        if c < 0.5:
            rule, factor = fake_quant_jit.AVERAGE, c
        else:
            rule, factor = fake_quant_jit.AVERAGE_FROM_BATCH, 1.0 - c
    initialized = observer.initialized
    arguments = (rule, factor, True, observer.symmetric, quant_min, quant_max, limit,
                 not quantizer._covers(observer))  # fmt: skip
    output = fake_quant_jit.observe_scalar_step(
        input, min_val, max_val, rule, factor, initialized, *arguments[3:]
    )
    if output is not None and not initialized:
        observer.initialized = True
    if output is not None and quantizer.training:
        quantizer.keep_plan(Plan(observer, 0, arguments, quantizer.trusts_weight_versions))
    return output


class Plan:
    """What :func:`fused_step` decided for a quantizer in training, kept for its next
    steps (:meth:`~aquatic.quantizers.Quantizer.keep_plan`): the observer, its range
    buffers, the number of channels (0: per tensor) and the compiled step's arguments.

    Called with the next input, it runs the compiled step after checking only what can
    change between calls without the quantizer knowing: the tensor
    (:func:`~aquatic.functional.fake_quant_jit.applies`, and its channels), the
    observer's attributes (:attr:`~aquatic.observers.edits.CountsEdits.edits`), its
    buffers (the same tensors at the same addresses: ``.to()`` replaces them) and
    ``torch.distributed``; where one fails it returns ``None`` and nothing has changed.
    The quantizer drops the plan when any of its own attributes is set (its mode, its
    switches, its observer).

    A repeat of the last input returns the last output, where observing it again would
    change nothing and backward reads nothing the step saved: a range that only widens
    (min/max) and the identity gradient (a weight's). That is a layer called at every
    time step of a sequence (a ``Linear`` before a ``LIFCell``, a recurrent cell), which
    quantizes the same weight each time. The plan notices the first repeat (the same
    tensor, its version, autograd's mode and the range's versions as they were) and
    from then on keeps the last output, a copy of the input and of the range (until two
    calls in a row are no repeat: a quantizer shared by alternating tensors). A repeat
    then returns that output where the input and the range have the same bits as those
    copies (one compiled pass, :func:`~aquatic.functional.fake_quant_jit.same_bits`),
    so that changes no version counter sees (``weight.data.mul_(2)``, a range shared
    with another quantizer) make it quantize afresh; and where the output is unchanged.
    That holds two copies of the weight between steps, for a layer that repeats only.
    A quantizer that trusts the weight's versions (:func:`aquatic.trust_weight_versions`)
    skips the input's copy and comparison.

    Measured in training steps here (``benchmarks/qat_overhead.py``'s models, int8 per
    tensor, interleaved rounds, median step): the 784-256-256-10 MLP 1.076 ms with plans
    against 1.121 ms without (1.496x against 1.558x the float step), the CNN 6.85
    against 6.92 ms (1.168x against 1.179x).

    Shape:
        - input: any shape (per channel: the channels first); output: the same.

    Example:
        >>> from aquatic.quantizers import UniformQuantizer
        >>> q = UniformQuantizer(bits=8)
        >>> _ = q(torch.tensor([-1.0, 2.54]))  # the first step decides, and keeps a plan
        >>> y = q._plan(torch.tensor([0.26, 3.0])) if q._plan is not None else None
        >>> y is None or (y, q.observer.max_val)  # None without Numba
        (tensor([0.2598, 3.0000]), tensor(3.))
    """

    __slots__ = (
        "observer", "min_val", "max_val", "pointers", "edits", "channels", "arguments",
        "repeats", "repeating", "misses", "trusted", "last",
    )  # fmt: skip

    def __init__(
        self, observer: Any, channels: int, arguments: tuple, trusted: bool = False
    ) -> None:
        buffers = observer._buffers
        self.observer = observer
        self.min_val, self.max_val = buffers["min_val"], buffers["max_val"]
        self.pointers = (self.min_val.data_ptr(), self.max_val.data_ptr())
        self.edits = observer.edits
        self.channels = channels
        self.arguments = arguments
        # Per channel: min/max and the identity gradient. Per tensor, no clips (the last
        # argument) means a range that only widens and holds what it observed (see
        # UniformQuantizer._covers): observing the same tensor again leaves it as it is.
        self.repeats = channels > 0 or not arguments[-1]
        self.repeating = False  # a repeat was seen: keep what checking the next takes
        self.misses = 0  # calls in a row, while repeating, that were no repeat
        self.trusted = trusted  # the input's version suffices (no copy, no comparison)
        # (state, input): then, repeating, (output, its version, copies of the input
        # and of the range)
        self.last: Optional[tuple] = None

    def __call__(self, input: Tensor) -> Optional[Tensor]:
        observer, min_val, max_val = self.observer, self.min_val, self.max_val
        buffers = observer._buffers
        if not (
            fake_quant_jit.applies(input)
            and observer.edits == self.edits
            and buffers["min_val"] is min_val
            and buffers["max_val"] is max_val
            and (min_val.data_ptr(), max_val.data_ptr()) == self.pointers
            and not (observer.training and distributed())
        ):
            return None
        repeats = self.repeats and not input.is_inference()  # which keeps no versions
        # The step writes the range by address and the input not at all (a repeat's
        # output is not the input): the state after it is this one.
        state = self._state(input) if repeats else None
        last = self.last
        if repeats and last is not None and last[1]() is input and last[0] == state:
            self.misses = 0
            if not self.repeating:
                self.repeating = True
            elif self._unchanged(input, *last[2:]):
                return last[2]
        elif self.repeating:
            # A new weight version misses once between runs of repeats; two misses in
            # a row are another pattern (a quantizer shared by alternating tensors),
            # whose copies would only cost: stop keeping them until the next repeat.
            self.misses += 1
            if self.misses > 1:
                self.repeating = False
        cpu_heap.settle(input)
        if self.channels:
            if input.dim() == 0 or input.shape[0] != self.channels:
                return None
            output = fake_quant_jit.minmax_rows_step(input, min_val, max_val, *self.arguments)
        else:
            output = fake_quant_jit.observe_scalar_step(input, min_val, max_val, *self.arguments)
        if repeats and output is not None and output is not input:
            if self.repeating:
                kept = None if self.trusted else input.detach().clone()
                copies = (kept, min_val.clone(), max_val.clone())
                self.last = (state, weakref.ref(input), output, output._version, *copies)
            else:
                self.last = (state, weakref.ref(input))
        return output

    def _unchanged(self, input: Tensor, output: Tensor, version: int, *copies: Tensor) -> bool:
        """Whether the last output still holds for ``input``: unchanged itself, and the
        input and the range the same bits as the copies kept with it."""
        same = fake_quant_jit.same_bits
        return (
            output._version == version
            and (self.trusted or same(input, copies[0]))
            and same(self.min_val, copies[1])
            and same(self.max_val, copies[2])
        )

    def _state(self, input: Tensor) -> tuple:
        """What a repeat of ``input`` must find as it was: the input's version and
        whether it needs a gradient, autograd's mode, the range's versions (the loops
        write the range by address, which leaves them as they are)."""
        return (
            input._version,
            input.requires_grad,
            torch.is_grad_enabled(),
            self.min_val._version,
            self.max_val._version,
        )
