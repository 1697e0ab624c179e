"""Training steps of a network that falls silent: early against late steps, with and
without the backward passes' flush of subnormal gradients.

The network and step of ``benchmarks/preset_speed.py``, but driven by zero-mean input
(``torch.randn``) against a zero-mean target, so that within about ten steps its
neurons stop spiking and their surrogate gradients shrink towards the subnormal range
(see :mod:`aquatic.functional.subnormals`). Each variant trains ``--steps`` steps;
the figures are the median step time over the first and the last ``--window`` steps.
``no flush`` runs the same variant with :func:`aquatic.functional.subnormals.flushing`
replaced by a block that changes nothing. The variants run interleaved, a step each in
turn.

Run: ``python benchmarks/silent_speed.py [--threads 2] [--steps 60] [--window 10]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import preset_speed  # noqa: E402  (the network of that benchmark)

from aquatic.functional import neurons_grid_backward, neurons_kernel_backward  # noqa: E402
from aquatic.functional import subnormals  # noqa: E402

#: The modules whose backward passes run in ``flushing``.
BACKWARDS = (neurons_grid_backward, neurons_kernel_backward)


def make_step(preset: Optional[str], flush: bool) -> Callable[[], float]:
    torch.manual_seed(0)
    model = preset_speed.aquatic_net(preset)
    generator = torch.Generator().manual_seed(0)
    shape = (preset_speed.BATCH, preset_speed.T)
    x = torch.randn(*shape, preset_speed.INPUTS, generator=generator)
    target = torch.randn(*shape, preset_speed.OUTPUTS, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> float:
        # the backward passes look it up at each call
        for module in BACKWARDS:
            module.flushing = subnormals.flushing if flush else contextlib.nullcontext
        try:
            start = time.perf_counter()
            optimizer.zero_grad()
            loss = ((model(x) - target) ** 2).mean()
            loss.backward()
            optimizer.step()
            return time.perf_counter() - start
        finally:
            for module in BACKWARDS:
                module.flushing = subnormals.flushing

    return step


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args(argv)
    if not 1 <= args.window <= args.steps // 2:
        parser.error(f"--window must be 1 to half of --steps, got {args.window}")
    torch.set_num_threads(args.threads)
    variants: Dict[str, Callable[[], float]] = {}
    for preset in (None, "loihi", "xylo"):
        name = preset or "float"
        variants[name] = make_step(preset, flush=True)
        variants[f"{name}, no flush"] = make_step(preset, flush=False)
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, step in variants.items():
            times[name].append(step() * 1e3)
    print(
        f"Training steps of preset_speed's network driven silent (randn input and target), "
        f"{args.threads} threads, {args.steps} steps interleaved; median of the first and "
        f"the last {args.window} (ms)"
    )
    print(f"{'variant':<22}{'early':>8}{'late':>8}{'late/early':>12}")
    for name, values in times.items():
        early = statistics.median(values[1 : args.window + 1])  # the first compiles
        late = statistics.median(values[-args.window :])
        print(f"{name:<22}{early:>8.1f}{late:>8.1f}{late / early:>12.2f}")


if __name__ == "__main__":
    main()
