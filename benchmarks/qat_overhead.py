"""What quantization-aware training costs: training-step time of int8 QAT models / float.

For an MLP (784-256-256-10) and a small CNN (two 3x3 convolutions and a linear layer
on 28x28 inputs), times one training step (forward, cross-entropy, backward, SGD step;
batch 64) of the float model and of the same model with int8 per-tensor weights and
activations, and prints the median times and the ratios QAT / float:

- aquatic: ``aquatic.quantize(model, aquatic.qconfig.int8)``;
- torch.ao eager QAT: ``prepare_qat`` with ``default_qat_qconfig`` (per-tensor weights
  and activations) and with ``default_qat_qconfig_v2`` (the same, fused observer and
  fake quantization);
- Brevitas, when installed: ``QuantLinear``/``QuantConv2d`` with int8 per-tensor weight
  and output quantizers.

Variants are timed in interleaved rounds, so that a change of machine load affects all
of them alike; the ratio printed is the median over rounds of each round's ratio of
median step times. Usage::

    python benchmarks/qat_overhead.py [--threads 2] [--rounds 60] [--steps 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

import aquatic


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


def torch_ao(model: nn.Module, fused: bool) -> nn.Module:
    import torch.ao.quantization as tq

    model = copy.deepcopy(model).train()
    model.qconfig = tq.default_qat_qconfig_v2 if fused else tq.default_qat_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.prepare_qat(model)


def brevitas(model: nn.Module) -> nn.Module:
    import brevitas.nn as bnn
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat

    layers = []
    for module in model:
        kwargs = dict(
            weight_quant=Int8WeightPerTensorFloat,
            output_quant=Int8ActPerTensorFloat,
            return_quant_tensor=False,
        )
        if isinstance(module, nn.Linear):
            new = bnn.QuantLinear(module.in_features, module.out_features, bias=True, **kwargs)
        elif isinstance(module, nn.Conv2d):
            new = bnn.QuantConv2d(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                padding=module.padding,
                bias=True,
                **kwargs,
            )
        else:
            layers.append(module)
            continue
        new.load_state_dict(module.state_dict(), strict=False)
        layers.append(new)
    return nn.Sequential(*layers).train()


def make_step(model: nn.Module) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (64,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def variants(float_model: nn.Module) -> Dict[str, nn.Module]:
    result = {
        "float": float_model,
        "aquatic": aquatic.quantize(float_model, aquatic.qconfig.int8),
        "torch.ao": torch_ao(float_model, fused=False),
        "torch.ao fused": torch_ao(float_model, fused=True),
    }
    try:
        result["brevitas"] = brevitas(float_model)
    except ImportError:
        pass
    return result


def measure(models: Dict[str, nn.Module], rounds: int, steps: int) -> Dict[str, tuple]:
    """Median step time (seconds) of each model and its median per-round ratio to float.

    Each round times ``steps`` steps of every model in turn; the ratio of a round is
    the ratio of its medians, so a burst of load on the machine that hits one round
    moves one of many ratios, not the result.
    """
    runners = {name: make_step(model) for name, model in models.items()}
    for run in runners.values():  # warm-up: allocator, observers' first batch
        for _ in range(10):
            run()
    times: Dict[str, List[float]] = {name: [] for name in runners}
    ratios: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        medians = {}
        for name, run in runners.items():
            samples = []
            for _ in range(steps):
                start = time.perf_counter()
                run()
                samples.append(time.perf_counter() - start)
            times[name].extend(samples)
            medians[name] = statistics.median(samples)
        for name in runners:
            ratios[name].append(medians[name] / medians["float"])
    return {
        name: (statistics.median(times[name]), statistics.median(ratios[name])) for name in runners
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=5, help="steps per round and variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, aquatic {aquatic.__version__}, {args.threads} threads, "
        f"batch 64, {args.rounds} rounds of {args.steps} steps per variant"
    )
    print(f"{'model':<6} {'variant':<15} {'median step (ms)':>17} {'QAT/float':>10}")
    for name, build in (("mlp", mlp), ("cnn", cnn)):
        torch.manual_seed(0)
        results = measure(variants(build()), args.rounds, args.steps)
        for variant, (seconds, ratio) in results.items():
            print(f"{name:<6} {variant:<15} {seconds * 1e3:>17.3f} {ratio:>9.2f}x")


if __name__ == "__main__":
    main()
