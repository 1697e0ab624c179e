"""Keep the C library from handing a training step's memory back to the system every step.

On Linux, glibc's ``malloc`` serves a block from its heap when the block is below the
*mmap threshold* and maps fresh pages for it otherwise; ``free`` trims the top of the
heap, handing its pages back to the system, once more than the *trim threshold* (twice
the mmap threshold) lies free there. Both start small (128 KiB and 256 KiB), and glibc
raises them to the size of the largest mapped block freed so far, up to 32 MiB (64 MiB
for trimming) on 64-bit systems (``mallopt(3)``, "M_MMAP_THRESHOLD").

The fused sequences of the spiking layers allocate results of several megabytes per
call (spikes, the membranes kept for backward, their gradients) and free them at the end
of each backward pass. Until the process has freed a block of 32 MiB, the top of the
heap can exceed the trim threshold at that moment, so the next step faults in fresh
pages, which the kernel zero-fills: measured here, about 2,400 page faults (9 MB) per
call of a Xylo-preset ``LIF`` on ``(64, 100, 256)`` inside a training step, which then
took 10.5 ms instead of 7 ms. Whether a step meets them depends on the order of every
allocation in the process, so it comes and goes between runs.

Quantization-aware training meets the same: a CNN's activations of a few megabytes
each, with their fake-quantized copies and masks, made ``benchmarks/qat_overhead.py``'s
int8 CNN step fault in 1,500 to 2,500 pages and take 9 to 10 ms instead of 7.4 ms, in
some processes and not others (the float model's step too, 8 ms instead of 5.9 ms).

:func:`settle` frees one block just under 32 MiB, once per process, before the first
large CPU sequence of a spiking layer or the first large tensor that a quantizer's
compiled step (:func:`aquatic.quantizers.fused.fused_step`) observes: glibc then keeps
up to 64 MiB free at the top of its heap, as it does in any process that has freed such
a block. The block's pages are never touched (mapped
and unmapped, a few microseconds), and with another C library the call is a harmless
allocation. Where ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` is set, glibc
keeps those values and the call changes nothing. ``benchmarks/heap.py`` measures the
effect of the environment settings.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["settle", "SETTLE_BYTES", "MIN_BYTES"]

#: The block freed: just under glibc's largest dynamic mmap threshold (32 MiB on 64-bit
#: systems), leaving room for the chunk header and page rounding.
SETTLE_BYTES = (32 << 20) - (64 << 10)
#: Sequences with inputs smaller than this do not call for it.
MIN_BYTES = 1 << 20

_settled = False


def settle(input: Tensor) -> bool:
    """Once per process, for a CPU ``input`` of at least :data:`MIN_BYTES`, allocate and
    free a block of :data:`SETTLE_BYTES` (see the module docstring); return whether this
    call did.

    Example:
        >>> settle(torch.zeros(4, 100, 8))  # small: not yet
        False
    """
    global _settled
    # The size first: the cheapest test, and the one most calls fail.
    if _settled or input.numel() * input.element_size() < MIN_BYTES:
        return False
    if input.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    _settled = True
    torch.empty(SETTLE_BYTES, dtype=torch.uint8)  # freed at once, its pages untouched
    return True
