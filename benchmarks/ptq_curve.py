"""Accuracy against weight size on the digits data set: mixed precision and uniform widths.

For the 64-128-128-10 perceptron of ``benchmarks/ptq.py`` (float training, 10
calibration batches of 64 training images, MSE ranges + bias correction), draws test
accuracy against weight bytes for

- uniform weight widths (2, 3, 4, 5, 6, 8 bits, per output channel);
- ``aquatic.mixed_precision`` (candidates 1, 2, 3, 4, 5, 6, 8 bits) at budgets from
  1.5 to 5 bits per weight on average, the uniform sizes among them;

each straight after calibration (solid) and after the same short QAT fine-tune
(dashed; ``--qat-epochs`` epochs of Adam at ``--qat-lr``, ranges frozen), averaged
over ``--seeds`` seeds. Prints the points and writes the plot (the one in
docs/_static/ptq_accuracy_vs_size.png comes from the defaults).

Usage::

    python benchmarks/ptq_curve.py [--seeds 3] [--out docs/_static/ptq_accuracy_vs_size.png]

Needs scikit-learn and matplotlib.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import time
from typing import Dict, List, Optional, Tuple

import torch

import aquatic
from aquatic.demo import load_digits
from aquatic.observers import MSEObserver

from ptq import accuracy, make_mlp, train, uniform, weight_bytes

LAYERS = ("0", "2", "4")
UNIFORM = (2, 3, 4, 5, 6, 8)
CANDIDATES = (1, 2, 3, 4, 5, 6, 8)
AVERAGE_BITS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)

Point = Tuple[int, float, float]  # weight bytes, PTQ accuracy, QAT accuracy


def points(seed: int, args: argparse.Namespace) -> Dict[str, List[Point]]:
    """The uniform and mixed points of one seed."""
    x_train, y_train, x_test, y_test = load_digits(seed=seed)
    torch.manual_seed(seed)
    model = make_mlp()
    train(model, x_train, y_train, args.epochs, 1e-3, seed)
    calib = [x_train[i : i + 64] for i in range(0, 640, 64)]

    def measure(qmodel) -> Tuple[float, float]:
        before = accuracy(qmodel, x_test, y_test)
        tuned = copy.deepcopy(qmodel)
        train(tuned, x_train, y_train, args.qat_epochs, args.qat_lr, seed)
        return before, accuracy(tuned, x_test, y_test)

    result: Dict[str, List[Point]] = {"uniform": [], "mixed": []}
    for bits in args.uniform:
        size = weight_bytes(model, {n: bits for n in LAYERS})
        qmodel = uniform(model, bits, MSEObserver, calib, bias_correction=True)
        result["uniform"].append((size, *measure(qmodel)))
    table = None
    for average in args.average_bits:
        weights = sum(dict(model.named_modules())[n].weight.numel() for n in LAYERS)
        budget = math.floor(weights * average / 8)
        mapping = aquatic.mixed_precision(
            model, calib, budget=budget, candidates=CANDIDATES, progress=False
        )
        assert mapping.cost <= budget
        table = mapping.table
        qmodel = aquatic.calibrate(
            aquatic.quantize(model, mapping), calib, progress=False, bias_correction=True
        )
        result["mixed"].append((mapping.cost, *measure(qmodel)))
        print(f"seed {seed}, {average} bits/weight: {mapping.bits}, {mapping.cost} bytes")
    return result


def average(runs: List[Dict[str, List[Point]]]) -> Dict[str, List[Point]]:
    """Mean accuracies over seeds, point by point (the sizes agree across seeds)."""
    out: Dict[str, List[Point]] = {}
    for kind in runs[0]:
        rows = list(zip(*(run[kind] for run in runs)))
        out[kind] = [
            (
                round(sum(p[0] for p in row) / len(row)),
                sum(p[1] for p in row) / len(row),
                sum(p[2] for p in row) / len(row),
            )
            for row in rows
        ]
    return out


def plot(curves: Dict[str, List[Point]], path: str, title: str) -> None:
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=100)
    for kind, color in (("uniform", "tab:blue"), ("mixed", "tab:orange")):
        pts = sorted(curves[kind])
        sizes = [p[0] / 1024 for p in pts]
        ax.plot(sizes, [p[1] for p in pts], "o-", color=color, label=f"{kind}, PTQ")
        ax.plot(sizes, [p[2] for p in pts], "s--", color=color, label=f"{kind}, + QAT")
    ax.set_xlabel("weight size (KiB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, List[Point]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--qat-lr", type=float, default=1e-3)
    parser.add_argument("--uniform", type=int, nargs="+", default=list(UNIFORM))
    parser.add_argument("--average-bits", type=float, nargs="+", default=list(AVERAGE_BITS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/_static/ptq_accuracy_vs_size.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    curves = average([points(seed, args) for seed in range(args.seeds)])
    print(f"\n{'kind':<8} {'weight bytes':>12} {'PTQ %':>7} {'QAT %':>7}")
    for kind, pts in curves.items():
        for size, before, after in sorted(pts):
            print(f"{kind:<8} {size:>12} {before:>7.2f} {after:>7.2f}")
    title = (
        f"digits MLP 64-128-128-10, mean of {args.seeds} seed(s); QAT: "
        f"{args.qat_epochs} epochs, Adam lr {args.qat_lr:g}"
    )
    plot(curves, args.out, title)
    print(f"wrote {args.out}; total {time.perf_counter() - start:.1f} s")
    return curves


if __name__ == "__main__":
    main()
