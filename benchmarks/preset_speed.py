"""Training for a chip at float speed: the training-step time of each hardware preset / float.

The network: ``Linear 16->256 -> LIF(tau_mem, tau_syn) -> Linear 256->8 -> LIF``,
batch 64, T=100 steps, one training step (forward, mean-squared error, backward, Adam
step). Variants:

- ``float``: aquatic without a QConfig;
- ``xylo``: :func:`aquatic.hw.xylo.qconfig` (one per population: 16-bit states on the
  shared scale, bit-shift decays);
- ``loihi``: :func:`aquatic.hw.loihi.qconfig` with :func:`aquatic.hw.loihi.neuron_options`
  (24-bit states on the grid 1/4096, 12-bit uniform decays, strict threshold, input after
  decay, input delay);
- ``dynapcnn``: :func:`aquatic.hw.dynapcnn.qconfig` with ``IAF`` neurons in place of
  ``LIF`` (the chip's neurons), against the same ``IAF`` network in float (``float-iaf``);
- ``*-loop``: the same preset forced to run step by step (``method="loop"``), what every
  preset ran before the fused path covered quantized states;
- ``rockpool``: rockpool's ``LIFTorch`` (float, ``torch.nn.Linear`` between), when installed.
  Importing rockpool probes for ``samna``; the probe is answered "not installed" here
  (``sys.modules["samna"] = None``) so that nothing is imported or installed.

Variants are timed in interleaved rounds (a change of machine load affects all alike);
each figure is the median over rounds of the median step time, and each ratio the median
over rounds of that round's ratio to its float reference.

``--ablate`` adds the Loihi and Xylo presets with the backward passes' flush of subnormal
gradients left out (``no flush``: :mod:`aquatic.functional.subnormals`), with
``SingleExponential``'s slopes by PyTorch's plain ``exp`` (``plain exp``: without the
floor of :mod:`aquatic.functional.exp_floor`), and with neither: what each contributes.

``--hidden`` sets the hidden layer's width (256; a network the size of those Xylo runs
has a few dozen, where the per-call work of each layer weighs more).

Run: ``python benchmarks/preset_speed.py [--threads 2] [--rounds 7] [--steps 3] [--no-loop]
[--ablate] [--hidden 256]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

import aquatic.functional.jit_jobs as jit_jobs
import aquatic.functional.neurons_jit as neurons_jit
from aquatic.functional import neurons_grid_backward, neurons_kernel_backward, subnormals
from aquatic.functional import exp_floor
import heap
from aquatic import nn as ann
from aquatic.hw import dynapcnn, loihi, xylo

BATCH, T, INPUTS, HIDDEN, OUTPUTS = 64, 100, 16, 256, 8
TAU_MEM, TAU_SYN = 10.0, 5.0


def aquatic_net(preset: Optional[str], method: str = "auto") -> nn.Module:
    def pair(inputs: int, outputs: int) -> List[nn.Module]:
        if preset == "xylo":
            q = xylo.qconfig()
            neuron = ann.LIF(tau_mem=TAU_MEM, tau_syn=TAU_SYN, qconfig=q)
        elif preset == "loihi":
            q = loihi.qconfig()
            options = loihi.neuron_options()
            neuron = ann.LIF(tau_mem=TAU_MEM, tau_syn=TAU_SYN, qconfig=q, **options)
        elif preset == "dynapcnn":
            q = dynapcnn.qconfig()
            neuron = ann.IAF(qconfig=q)
        elif preset == "float-iaf":
            q, neuron = None, ann.IAF()
        else:
            q, neuron = None, ann.LIF(tau_mem=TAU_MEM, tau_syn=TAU_SYN)
        neuron.method = method
        return [ann.Linear(inputs, outputs, qconfig=q), neuron]

    return nn.Sequential(*pair(INPUTS, HIDDEN), *pair(HIDDEN, OUTPUTS))


def rockpool_net() -> Optional[nn.Module]:
    # rockpool asks whether samna is installed when imported; answer "no" without
    # importing it (the samna package here would try to install itself).
    sys.modules.setdefault("samna", None)
    try:
        lif = importlib.import_module("rockpool.nn.modules.torch.lif_torch")
    except ImportError:
        return None

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(INPUTS, HIDDEN), nn.Linear(HIDDEN, OUTPUTS)
            self.n1 = lif.LIFTorch(HIDDEN, tau_mem=TAU_MEM * 1e-3, tau_syn=TAU_SYN * 1e-3)
            self.n2 = lif.LIFTorch(OUTPUTS, tau_mem=TAU_MEM * 1e-3, tau_syn=TAU_SYN * 1e-3)

        def forward(self, x):
            out, _, _ = self.n1(self.l1(x), record=False)
            out, _, _ = self.n2(self.l2(out), record=False)
            return out

    return Net()


def make_step(model: nn.Module) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, T, INPUTS, generator=generator) * 2
    target = torch.rand(BATCH, T, OUTPUTS, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        optimizer.step()

    step()  # warm-up (and the observers' first ranges)
    return step


_BOUNDS = dict(exp_floor._BOUNDS)


def ablated(step: Callable[[], None], flush: bool, floor: bool) -> Callable[[], None]:
    """``step`` with the backward passes' flush of subnormal gradients and the
    exponential's floor on or off (restored after each step)."""

    def run() -> None:
        for module in (neurons_grid_backward, neurons_kernel_backward):
            module.flushing = subnormals.flushing if flush else contextlib.nullcontext
        if not floor:
            exp_floor._BOUNDS.clear()
        try:
            step()
        finally:
            for module in (neurons_grid_backward, neurons_kernel_backward):
                module.flushing = subnormals.flushing
            exp_floor._BOUNDS.update(_BOUNDS)

    return run


def median_ms(step: Callable[[], None], steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: Optional[List[str]] = None) -> None:
    global HIDDEN
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-loop", action="store_true", help="skip the *-loop variants")
    parser.add_argument(
        "--ablate", action="store_true", help="add Loihi and Xylo without the flush or floor"
    )
    parser.add_argument(
        "--hidden", type=int, default=HIDDEN, help="hidden neurons (Xylo holds up to 1000)"
    )
    args = parser.parse_args(argv)
    if args.hidden < 1:
        parser.error(f"--hidden must be at least 1 neuron, got {args.hidden}")
    HIDDEN = args.hidden
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    references = {"xylo": "float", "loihi": "float", "dynapcnn": "float-iaf"}
    variants: Dict[str, nn.Module] = {"float": aquatic_net(None)}
    variants["float-iaf"] = aquatic_net("float-iaf")
    for preset in references:
        variants[preset] = aquatic_net(preset)
        if not args.no_loop:
            variants[f"{preset}-loop"] = aquatic_net(preset, method="loop")
    peer = rockpool_net()
    if peer is not None:
        variants["rockpool"] = peer
    steps = {name: make_step(model) for name, model in variants.items()}
    if args.ablate:
        for preset in ("loihi", "xylo"):
            for label, flush, floor in (
                ("no flush", False, True),
                ("plain exp", True, False),
                ("neither", False, False),
            ):
                steps[f"{preset}, {label}"] = ablated(make_step(aquatic_net(preset)), flush, floor)

    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(median_ms(step, args.steps))

    def ratio(name: str, reference: str) -> float:
        return statistics.median(a / b for a, b in zip(times[name], times[reference]))

    print(
        f"Training step (fwd + MSE + bwd + Adam), Linear {INPUTS}->{HIDDEN} -> neurons -> "
        f"Linear {HIDDEN}->{OUTPUTS} -> neurons, batch {BATCH}, T={T}, "
        f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps, compiled loops "
        f"{'on' if neurons_jit.available() else 'off (AQUATIC_NUMBA=0 or no Numba)'} "
        f"({jit_jobs.describe()}); {heap.describe()}"
    )
    print(f"{'variant':<20}{'ms':>10}{'x float':>10}")
    for name in steps:
        reference = references.get(name.replace("-loop", "").split(",")[0], "float")
        if name == "float-iaf":
            reference = "float-iaf"
        median = statistics.median(times[name])
        print(f"{name:<20}{median:>10.1f}{ratio(name, reference):>10.2f}")
    print("(presets against their float network: xylo, loihi vs float; dynapcnn vs float-iaf)")


if __name__ == "__main__":
    main()
