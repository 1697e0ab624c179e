"""What QAT costs a network stepped in a Python loop over time: training-step time / float.

The snnTorch way of writing a spiking network: at each of ``T`` time steps, a
``Linear(700, 256)`` (700 input channels, as in the Spiking Heidelberg Digits), an
``aquatic.nn.LIFCell`` and a ``Linear(256, 20)`` read-out summed over time; batch 32,
cross-entropy, Adam. The two ``Linear`` layers are called ``T`` times a step on the
same weights, which their quantizers quantize once a step and hand to every time step
(:class:`aquatic.quantizers.fused.Plan`): each repeat compared with a copy of the
weight (the default), or told by its version alone
(:func:`aquatic.trust_weight_versions`), or, for comparison, quantized afresh at every
time step. Rows: int8 weights (``aquatic.qconfig.int8`` without activations), then
int8 weights and activations, each of the three ways; ratios to the float network in
interleaved rounds (``benchmarks/qat_overhead.py``'s ``measure``). Usage::

    python benchmarks/qat_time_loop.py [--threads 2] [--rounds 10] [--steps 3] [--time-steps 50]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.quantizers import Quantizer
from qat_overhead import Variant, measure


class Net(nn.Module):
    """``Linear(700, 256)``, ``LIFCell``, ``Linear(256, 20)``, stepped over the input's
    first dimension (time)."""

    def __init__(self, qconfig=None) -> None:
        super().__init__()
        self.inp = aquatic.nn.Linear(700, 256, qconfig=qconfig)
        self.lif = aquatic.nn.LIFCell(tau_mem=10.0)
        self.out = aquatic.nn.Linear(256, 20, qconfig=qconfig)

    def forward(self, x):
        state, total = None, 0
        for t in range(x.shape[0]):
            spikes, state = self.lif(self.inp(x[t]), state)
            total = total + self.out(spikes)
        return total


def every_time(model: nn.Module) -> None:
    """Turn off the repeats of ``model``'s quantizers' plans (made by a first step)."""
    for module in model.modules():
        if isinstance(module, Quantizer) and module._plan is not None:
            module._plan.repeats = False


def step_for(time_steps: int):
    def make(model: nn.Module):
        generator = torch.Generator().manual_seed(0)
        batches = [
            (
                torch.rand(time_steps, 32, 700, generator=generator),
                torch.randint(0, 20, (32,), generator=generator),
            )
            for _ in range(4)
        ]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        count = [0]

        def step() -> None:
            x, y = batches[count[0] % len(batches)]
            count[0] += 1
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if getattr(model, "every_time", False):
                every_time(model)

        return step

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and variant")
    parser.add_argument("--time-steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    float_model = Net()
    models = {"float": Variant(float_model)}
    for name, qconfig in (
        ("int8 weights", aquatic.qconfig.int8._replace(activation=None)),
        ("int8", aquatic.qconfig.int8),
    ):
        for way in ("compared", "trusted", "every time step"):
            model = Net(qconfig)
            model.load_state_dict(float_model.state_dict(), strict=False)
            if way == "trusted":
                aquatic.trust_weight_versions(model)
            model.every_time = way == "every time step"
            models[f"{name}, {way}"] = Variant(model)
    print(
        f"torch {torch.__version__}, aquatic {aquatic.__version__}, {args.threads} threads, "
        f"batch 32, T={args.time_steps}, {args.rounds} rounds of {args.steps} steps"
    )
    print(f"{'variant':<32} {'median step (ms)':>17} {'ratio':>7} {'p10-p90':>12}")
    for name, r in measure(models, args.rounds, args.steps, step_for(args.time_steps)).items():
        print(
            f"{name:<32} {r.seconds * 1e3:>17.2f} {r.ratio:>6.2f}x "
            f"{f'{r.low:.2f}-{r.high:.2f}':>12}"
        )


if __name__ == "__main__":
    main()
