"""The compiled forward loops (Numba, ``aquatic[fast]``) against aquatic's own PyTorch and
NumPy loops, in one run.

Cases: a ``LIF`` on input ``(64, 100, 512)`` (``ArcTan`` surrogate; and with trained
``tau_mem`` and ``tau_syn``), forward alone and forward + backward; and the training step
of ``benchmarks/preset_speed.py``'s network (``Linear 16->256 -> LIF -> Linear 256->8 ->
LIF``, batch 64, T=100, MSE, Adam) in float and with the Xylo and Loihi presets. Each
case runs with the compiled loops on and off (:data:`aquatic.functional.neurons_jit.ENABLED`),
and compiled with their jobs kept on the calling thread
(:data:`aquatic.functional.jit_jobs.ENABLED` off; by default they are shared over
PyTorch's threads), in interleaved rounds (in each, one call to settle and the median of ``--calls``
timed calls); a figure is the median over rounds, and the ratio the median of the
rounds' ratios (compiled / not).

Run: ``python benchmarks/compiled_loops.py [--rounds 7] [--calls 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch

import aquatic.functional.jit_jobs as jit_jobs
import aquatic.functional.neurons_jit as neurons_jit
import heap
from aquatic import nn as ann
from aquatic.hw import loihi, xylo

BATCH, T, INPUTS, HIDDEN, OUTPUTS = 64, 100, 16, 256, 8


def _lif_cases() -> Dict[str, Callable[[], None]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 100, 512, generator=generator) * 0.5 + 0.3
    grad = torch.randn(64, 100, 512, generator=generator)
    arctan = ann.LIF(alpha_mem=0.9, surrogate=ann.ArcTan())
    trained = ann.LIF(tau_mem=10.0, tau_syn=5.0)

    def forward(layer):
        def run():
            with torch.no_grad():
                layer(x)

        return run

    def training(layer):
        def run():
            leaf = x.clone().requires_grad_()
            layer(leaf).backward(grad)

        return run

    return {
        "LIF ArcTan, forward": forward(arctan),
        "LIF ArcTan, forward + backward": training(arctan),
        "LIF tau_mem + tau_syn, forward": forward(trained),
        "LIF tau_mem + tau_syn, forward + backward": training(trained),
    }


def _net(preset) -> torch.nn.Module:
    layers: List[torch.nn.Module] = []
    for inputs, outputs in ((INPUTS, HIDDEN), (HIDDEN, OUTPUTS)):
        q, options = None, {}
        if preset == "xylo":
            q = xylo.qconfig()
        elif preset == "loihi":
            q, options = loihi.qconfig(), loihi.neuron_options()
        layers += [
            ann.Linear(inputs, outputs, qconfig=q),
            ann.LIF(tau_mem=10.0, tau_syn=5.0, qconfig=q, **options),
        ]
    return torch.nn.Sequential(*layers)


def _step_cases() -> Dict[str, Callable[[], None]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, T, INPUTS, generator=generator)
    y = torch.randn(BATCH, T, OUTPUTS, generator=generator)
    cases = {}
    for preset in (None, "xylo", "loihi"):
        torch.manual_seed(0)
        net = _net(preset)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

        def step(net=net, optimizer=optimizer):
            optimizer.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            optimizer.step()

        cases[f"training step, {preset or 'float'}"] = step
    return cases


#: The ways each case runs: the compiled loops with their jobs shared over PyTorch's
#: threads (the default), the compiled loops on the calling thread, the PyTorch and
#: NumPy loops.
WAYS = {"compiled": (True, True), "one thread": (True, False), "not": (False, False)}


def _set(way: str) -> None:
    neurons_jit.ENABLED, jit_jobs.ENABLED = WAYS[way]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per way and round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not neurons_jit.available():
        raise SystemExit("Numba is not installed (pip install 'aquatic[fast]'): nothing to compare")
    cases = {**_lif_cases(), **_step_cases()}
    times: Dict[tuple, List[float]] = {}
    for run in cases.values():  # warm up (and compile) every way
        for way in WAYS:
            _set(way)
            run(), run()
    for _ in range(args.rounds):
        for name, run in cases.items():
            for way in WAYS:
                # A call right after the other way's finds the heap laid out for it (and
                # may fault fresh pages): settle, then take the median of a few calls.
                _set(way)
                run()
                calls = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    run()
                    calls.append(time.perf_counter() - start)
                times.setdefault((name, way), []).append(statistics.median(calls))
    _set("compiled")
    print(
        f"{args.threads} threads, {args.rounds} interleaved rounds of {args.calls} calls; medians "
        f"in ms; ratios: medians of the rounds' compiled / not and compiled / compiled on one "
        f"thread ({jit_jobs.describe()}); {heap.describe()}"
    )
    print(
        f"{'case':44s} {'compiled':>9s} {'1 thread':>9s} {'not':>9s} {'ratio':>6s} {'/1 thr':>6s}"
    )
    for name in cases:
        on, one, off = (times[(name, way)] for way in WAYS)
        ratio = statistics.median(a / b for a, b in zip(on, off))
        shared = statistics.median(a / b for a, b in zip(on, one))
        print(
            f"{name:44s} {statistics.median(on) * 1e3:9.2f} {statistics.median(one) * 1e3:9.2f}"
            f" {statistics.median(off) * 1e3:9.2f} {ratio:6.2f} {shared:6.2f}"
        )
    for preset in ("xylo", "loihi"):
        ratios = [
            a / b
            for a, b in zip(
                times[(f"training step, {preset}", "compiled")],
                times[("training step, float", "compiled")],
            )
        ]
        print(f"{preset} step / float step, both compiled: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
