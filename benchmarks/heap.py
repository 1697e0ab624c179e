"""What the C library's heap settings do to CPU training: glibc defaults against a heap that
keeps the memory it frees.

On Linux with glibc, ``free`` hands large blocks back to the operating system: blocks
above the mmap threshold are unmapped, and the top of the heap is trimmed once more than
the trim threshold lies free there. A training step that frees a few tensors of several
megabytes (a spiking layer's saved states, its spikes, their gradients) and allocates
them again in the next step then finds fresh pages, and the kernel zero-fills each one
on first touch: a page fault per 4 KiB. The two environment variables::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824

make glibc serve blocks up to 1 GiB from its heap and keep up to 1 GiB of free memory
there (both are needed: setting one turns off glibc's adjustment of the other). The
price is memory: the process keeps what it has freed, up to the peak of a step, and does
not hand it back until it exits. They must be set before the process starts (glibc reads
them once); :data:`SETTINGS` holds them.

This script runs each workload in child processes, with glibc's defaults and with those
settings, alternating (``--rounds`` of each), and prints the median step time, the
page faults per step (``getrusage``'s minor faults) and the ratio tuned / default:

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


def describe() -> str:
    """One line for a benchmark's header: the heap settings this process started with."""
    names = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    set_here = [f"{name}={os.environ[name]}" for name in names if name in os.environ]
    if not set_here:
        return "heap: glibc defaults (see benchmarks/heap.py for a heap that keeps memory)"
    return "heap: " + " ".join(set_here)


def _workloads() -> Dict[str, Callable[[], None]]:
    import torch
    import torch.nn.functional as F

    import aquatic
    import preset_speed
    import qat_overhead
    from aquatic import nn as ann

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 100, 512, generator=generator) * 0.5 + 0.3
    grad = torch.randn(64, 100, 512, generator=generator)
    lif = ann.LIF(tau_mem=10.0)

    def lif_step() -> None:
        lif(x.clone().requires_grad_()).backward(grad)

    torch.manual_seed(0)
    mlp = aquatic.quantize(qat_overhead.mlp(), aquatic.qconfig.int8)
    return {
        "LIF (64, 100, 512) fwd+bwd": lif_step,
        "float net step": preset_speed.make_step(preset_speed.aquatic_net(None)),
        "xylo net step": preset_speed.make_step(preset_speed.aquatic_net("xylo")),
        "loihi net step": preset_speed.make_step(preset_speed.aquatic_net("loihi")),
        "QAT MLP step": qat_overhead.make_step(mlp),
    }


def _child(steps: int, threads: int) -> None:
    """Times every workload in this process; prints ``{name: [ms, faults per step]}``."""
    import torch

    torch.set_num_threads(threads)
    results = {}
    for name, step in _workloads().items():
        for _ in range(3):  # warm-up: first ranges, compiled loops, the heap's high mark
            step()
        times = []
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps
        results[name] = [statistics.median(times) * 1e3, faults]
    print(json.dumps(results))


def environment(tuned: bool) -> Dict[str, str]:
    """This process's environment with :data:`SETTINGS` (``tuned``) or without them."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    if tuned:
        env.update(SETTINGS)
    return env


def _run(tuned: bool, steps: int, threads: int) -> Dict[str, List[float]]:
    env = environment(tuned)
    command = [sys.executable, os.path.abspath(__file__), "--child"]
    command += ["--steps", str(steps), "--threads", str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="child processes per setting")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per workload")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.steps, args.threads)
        return
    runs: Dict[bool, List[Dict[str, List[float]]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for tuned in (False, True):
            runs[tuned].append(_run(tuned, args.steps, args.threads))
    settings = " ".join(f"{k}={v}" for k, v in SETTINGS.items())
    print(
        f"glibc defaults against {settings}; {args.threads} threads, {args.rounds} processes "
        f"per setting, median of {args.steps} steps each"
    )
    print(
        f"{'workload':<28}{'default ms':>11}{'faults':>8}{'tuned ms':>10}{'faults':>8}"
        f"{'tuned/default':>15}"
    )
    for name in runs[False][0]:
        default = [run[name] for run in runs[False]]
        tuned = [run[name] for run in runs[True]]
        ratio = statistics.median(t[0] / d[0] for t, d in zip(tuned, default))
        print(
            f"{name:<28}{statistics.median(d[0] for d in default):>11.2f}"
            f"{statistics.median(d[1] for d in default):>8.0f}"
            f"{statistics.median(t[0] for t in tuned):>10.2f}"
            f"{statistics.median(t[1] for t in tuned):>8.0f}{ratio:>15.2f}"
        )


if __name__ == "__main__":
    main()
