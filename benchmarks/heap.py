"""What the C library's heap does to CPU training: page faults per step and step times
under three heap settings.

On Linux with glibc, ``free`` hands large blocks back to the operating system: blocks
above the mmap threshold are unmapped, and the top of the heap is trimmed once more than
the trim threshold lies free there. A training step that frees a few tensors of several
megabytes (a spiking layer's saved states, its spikes, their gradients) and allocates
them again in the next step then finds fresh pages, and the kernel zero-fills each one
on first touch: a page fault per 4 KiB. Each workload runs in a process of its own (a
heap with no history) under each of three settings, alternating (``--rounds`` of each):

- ``settled``: aquatic as it runs. Before its first large CPU sequence,
  :func:`aquatic.functional.cpu_heap.settle` frees one block of nearly 32 MiB, which
  raises glibc's thresholds to their dynamic maximum (32 MiB, 64 MiB for trimming);
- ``untouched``: glibc's starting thresholds (128 KiB and 256 KiB), as before ``settle``
  existed (the child marks it done without running it);
- ``environment``: :data:`SETTINGS`, the environment variables::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824

  which make glibc serve blocks up to 1 GiB from its heap and keep up to 1 GiB free
  there (both are needed: setting one turns off glibc's adjustment of the other). They
  must be set before the process starts.

Either way the price is memory: the process keeps what it frees (up to the limit) rather
than handing it back. Workloads:

- ``LIF (64, 100, 512) fwd+bwd``: aquatic's default ``LIF`` (trained ``tau_mem``);
- ``float net step``, ``xylo net step``, ``loihi net step``: the training step of
  ``benchmarks/preset_speed.py``'s network in float and with two chip presets;
- ``QAT MLP step``: ``benchmarks/qat_overhead.py``'s MLP with ``aquatic.qconfig.int8``,
  whose tensors are small (little to gain).

Run: ``python benchmarks/heap.py [--rounds 3] [--steps 10] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

#: The environment variables of a heap that keeps what it frees (glibc reads them at start).
SETTINGS = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


#: The settings compared, in the order of the table.
SETTINGS_COMPARED = {
    "settled": "aquatic as it runs (cpu_heap.settle: glibc keeps up to 64 MiB of freed memory)",
    "untouched": "glibc's starting thresholds (cpu_heap.settle skipped)",
    "environment": " ".join(f"{k}={v}" for k, v in SETTINGS.items()),
}


#: PyTorch's switch (read once, at its start) for 2 MiB-aligned CPU tensors of 2 MiB or
#: more that ask the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``).
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def describe() -> str:
    """One line for a benchmark's header: the heap settings this process started with,
    and PyTorch's huge pages where :data:`HUGE_PAGES` is set."""
    names = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    set_here = [f"{name}={os.environ[name]}" for name in names if name in os.environ]
    line = "heap: " + " ".join(set_here)
    if not set_here:
        line = "heap: the C library's defaults, settled once by aquatic (benchmarks/heap.py)"
    if HUGE_PAGES in os.environ:
        line += f"; {HUGE_PAGES}={os.environ[HUGE_PAGES]} (PyTorch's huge pages)"
    return line


def _lif_step() -> Callable[[], None]:
    import torch

    from aquatic import nn as ann

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 100, 512, generator=generator) * 0.5 + 0.3
    grad = torch.randn(64, 100, 512, generator=generator)
    lif = ann.LIF(tau_mem=10.0)

    def step() -> None:
        lif(x.clone().requires_grad_()).backward(grad)

    return step


def _net_step(preset) -> Callable[[], None]:
    import preset_speed

    return preset_speed.make_step(preset_speed.aquatic_net(preset))


def _qat_step() -> Callable[[], None]:
    import torch

    import aquatic
    import qat_overhead

    torch.manual_seed(0)
    return qat_overhead.make_step(aquatic.quantize(qat_overhead.mlp(), aquatic.qconfig.int8))


#: Each workload's step, built in a process of its own (a heap with no history).
WORKLOADS: Dict[str, Callable[[], Callable[[], None]]] = {
    "LIF (64, 100, 512) fwd+bwd": _lif_step,
    "float net step": lambda: _net_step(None),
    "xylo net step": lambda: _net_step("xylo"),
    "loihi net step": lambda: _net_step("loihi"),
    "QAT MLP step": _qat_step,
}


def _child(workload: str, steps: int, threads: int, settle: bool) -> None:
    """Times ``workload`` in this process; prints ``[ms, faults per step]``."""
    import torch

    from aquatic.functional import cpu_heap

    if not settle:  # as if it had run already: the heap keeps glibc's starting thresholds
        cpu_heap._settled = True
    torch.set_num_threads(threads)
    step = WORKLOADS[workload]()
    for _ in range(3):  # warm-up: first ranges, compiled loops, the heap's high mark
        step()
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps
    print(json.dumps([statistics.median(times) * 1e3, faults]))


def environment(tuned: bool) -> Dict[str, str]:
    """This process's environment with :data:`SETTINGS` (``tuned``) or without them."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    if tuned:
        env.update(SETTINGS)
    return env


def _run(workload: str, setting: str, steps: int, threads: int) -> List[float]:
    env = environment(setting == "environment")
    command = [sys.executable, os.path.abspath(__file__), "--child", workload]
    command += ["--steps", str(steps), "--threads", str(threads)]
    if setting == "untouched":
        command.append("--no-settle")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes per workload and setting")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per workload")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--no-settle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.steps, args.threads, not args.no_settle)
        return
    runs: Dict[str, Dict[str, List[List[float]]]] = {
        name: {setting: [] for setting in SETTINGS_COMPARED} for name in WORKLOADS
    }
    for _ in range(args.rounds):
        for name in WORKLOADS:
            for setting in SETTINGS_COMPARED:
                runs[name][setting].append(_run(name, setting, args.steps, args.threads))
    print(
        f"{args.threads} threads, {args.rounds} processes per setting, median of {args.steps} "
        "steps each; ms: median step time, faults: page faults per step; x: median over "
        "rounds of the ratio to 'settled'"
    )
    for setting, text in SETTINGS_COMPARED.items():
        print(f"  {setting}: {text}")
    header = f"{'workload':<28}"
    for setting in SETTINGS_COMPARED:
        header += f"{setting + ' ms':>18}{'faults':>8}{'x':>6}"
    print(header)
    for name, by_setting in runs.items():
        line = f"{name:<28}"
        for setting, values in by_setting.items():
            reference = by_setting["settled"]
            ratio = statistics.median(v[0] / r[0] for v, r in zip(values, reference))
            line += f"{statistics.median(v[0] for v in values):>18.2f}"
            line += f"{statistics.median(v[1] for v in values):>8.0f}{ratio:>6.2f}"
        print(line)


if __name__ == "__main__":
    main()
