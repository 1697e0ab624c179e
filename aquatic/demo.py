"""The main job: train, quantize and deploy small networks on handwritten digits.

Run ``python -m aquatic.demo`` (``--help`` for options). It needs the ``[demo]`` extra
(scikit-learn for the 8x8 digits data set that ships with it, tqdm, matplotlib).

For each model it trains with an ordinary PyTorch loop, evaluates on held-out digits,
converts the quantized models to integer arithmetic with :func:`aquatic.convert` and
checks how often the integer model agrees with the fake-quant model. It prints one
table and saves a PNG (accuracy against bits per weight, and a spike raster of the
spiking network).
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import aquatic
import aquatic.nn as qnn
from aquatic.qconfig import QConfig
from aquatic.quantizers import UniformQuantizer

__all__ = ["main", "load_digits", "rate_code", "Result"]


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit(
            f"the demo needs {module.split('.')[0]!r}: install the demo extra with "
            "pip install -e '.[demo]'"
        ) from None


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Tuple[Tensor, ...]:
    """scikit-learn's 8x8 digits as float tensors in ``[0, 1]``, split train/test.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; ``x`` has shape ``(N, 64)``.
    """
    datasets = _require("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def rate_code(x: Tensor, steps: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Poisson-like rate code: a spike at each step with probability ``x``.

    Shape:
        - x: ``(N, F)`` intensities in ``[0, 1]``.
        - output: ``(N, steps, F)`` float tensor of 0 and 1.

    Example:
        >>> spikes = rate_code(torch.tensor([[0.0, 1.0]]), steps=4)
        >>> spikes[0, :, 0].tolist(), spikes[0, :, 1].tolist()
        ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    """
    probabilities = x.unsqueeze(1).expand(-1, steps, -1)
    return torch.bernoulli(probabilities, generator=generator)


class SpikeCount(qnn.Sum):
    """Sum spikes over time: ``(N, T, C) -> (N, C)``, the logits of a rate readout."""

    def __init__(self) -> None:
        super().__init__(dim=1)


def mlp(qconfig: Optional[QConfig], hidden: int = 64) -> nn.Module:
    """64-hidden-10 perceptron; the output layer keeps float activations (logits)."""
    output_qconfig = None if qconfig is None else qconfig._replace(activation=None)
    return nn.Sequential(
        qnn.Linear(64, hidden, qconfig=qconfig),
        nn.ReLU(),
        qnn.Linear(hidden, 10, qconfig=output_qconfig),
    )


def snn(qconfig: Optional[QConfig], hidden: int = 64) -> nn.Module:
    """Linear -> LIF -> Linear -> LIF, read out by counting output spikes."""
    return nn.Sequential(
        qnn.Linear(64, hidden, bias=False, qconfig=qconfig),
        qnn.LIF(tau_mem=8.0, threshold=1.0, qconfig=qconfig),
        qnn.Linear(hidden, 10, bias=False, qconfig=qconfig),
        qnn.LIF(tau_mem=8.0, threshold=1.0, qconfig=qconfig),
        SpikeCount(),
    )


@dataclass
class Result:
    """One row of the demo's table."""

    name: str
    bits: Optional[int]
    size_bytes: int
    accuracy: float
    agreement: Optional[float]
    seconds: float


def weight_bytes(model: nn.Module, bits: Optional[int]) -> int:
    """Storage of all weights and biases at ``bits`` per value (32 when float)."""
    count = sum(p.numel() for p in model.parameters() if p.dim() >= 1)
    return (count * (bits or 32) + 7) // 8


def train(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    epochs: int,
    lr: float,
    desc: str,
    batch_size: int = 64,
) -> float:
    """Adam on cross-entropy with a tqdm bar; returns the training time in seconds."""
    tqdm = _require("tqdm").tqdm
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(1)
    batches = (len(inputs) + batch_size - 1) // batch_size
    start = time.perf_counter()
    model.train()
    with tqdm(total=epochs * batches, desc=desc, leave=False, unit="batch") as bar:
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for index in order.split(batch_size):
                loss = loss_fn(model(inputs[index]), targets[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, targets: Tensor) -> float:
    model.eval()
    return (model(inputs).argmax(dim=1) == targets).float().mean().item()


@torch.no_grad()
def integer_agreement(model: nn.Module, inputs: Tensor, input_scale: float) -> float:
    """Share of test samples whose integer-model prediction equals the fake-quant one.

    ``input_scale`` is the grid of the inputs: pixels are multiples of 1/16, spikes of 1.
    """
    model.eval()
    integer_model = aquatic.convert(model, input_scale=input_scale)
    fake = model(inputs)
    exact = integer_model.dequantize_output(integer_model(integer_model.quantize_input(inputs)))
    return (fake.argmax(dim=1) == exact.argmax(dim=1)).float().mean().item()


def run(quick: bool = False, seed: int = 0, out: Path = Path("aquatic_demo.png")) -> List[Result]:
    """Train every model, print the table, save the plot; returns the rows."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits(seed)
    steps = 8 if quick else 16
    epochs, snn_epochs = (3, 2) if quick else (30, 12)
    if quick:
        x_train, y_train = x_train[:512], y_train[:512]
    coder = torch.Generator().manual_seed(seed)
    s_train, s_test = rate_code(x_train, steps, coder), rate_code(x_test, steps, coder)

    act8 = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False)
    conventional: Sequence[Tuple[str, Optional[int], Optional[QConfig]]] = [
        ("MLP float", None, None),
        ("MLP int8 w / int8 act", 8, aquatic.qconfig.int8),
        ("MLP int4 w / int8 act", 4, aquatic.qconfig.int4_weight._replace(activation=act8)),
        ("MLP binary w / int8 act", 1, aquatic.qconfig.binary_weight._replace(activation=act8)),
    ]
    results = []
    for name, bits, qconfig in conventional:
        torch.manual_seed(seed)
        model = mlp(qconfig)
        seconds = train(model, x_train, y_train, epochs, 1e-2, name)
        agreement = None if qconfig is None else integer_agreement(model, x_test, 1 / 16)
        acc = accuracy(model, x_test, y_test)
        results.append(Result(name, bits, weight_bytes(model, bits), acc, agreement, seconds))

    spiking: Sequence[Tuple[str, Optional[int], Optional[QConfig]]] = [
        ("SNN float", None, None),
        ("SNN Xylo preset", 8, aquatic.hw.xylo.qconfig()),
    ]
    raster = None
    for name, bits, qconfig in spiking:
        torch.manual_seed(seed)
        model = snn(qconfig)
        seconds = train(model, s_train, y_train, snn_epochs, 5e-3, name)
        agreement = None if qconfig is None else integer_agreement(model, s_test, 1.0)
        acc = accuracy(model, s_test, y_test)
        results.append(Result(name, bits, weight_bytes(model, bits), acc, agreement, seconds))
        raster = _hidden_spikes(model, s_test[:1])

    print_table(results)
    if save_plot(results, raster, out):
        print(f"plot saved to {out.resolve()}")
    return results


@torch.no_grad()
def _hidden_spikes(model: nn.Module, sample: Tensor) -> Tensor:
    model.eval()
    return model[1](model[0](sample))[0]


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'model':<26}{'bits/w':>7}{'bytes':>8}{'test acc':>10}{'int agrees':>12}{'train s':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        bits = "32f" if r.bits is None else str(r.bits)
        agreement = "-" if r.agreement is None else f"{100 * r.agreement:.1f}%"
        print(
            f"{r.name:<26}{bits:>7}{r.size_bytes:>8}{100 * r.accuracy:>9.1f}%"
            f"{agreement:>12}{r.seconds:>9.2f}"
        )


def save_plot(results: Sequence[Result], raster: Optional[Tensor], out: Path) -> bool:
    """Accuracy against bits per weight, and a raster of hidden spikes."""
    matplotlib = _require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for prefix, style in (("MLP", "o-"), ("SNN", "s--")):
        rows = [r for r in results if r.name.startswith(prefix)]
        bits = [r.bits or 32 for r in rows]
        left.plot(bits, [100 * r.accuracy for r in rows], style, label=prefix)
    left.set_xscale("log", base=2)
    left.set_xlabel("bits per weight")
    left.set_ylabel("test accuracy (%)")
    left.set_title("8x8 digits, held-out accuracy")
    left.legend()
    if raster is not None:
        t, n = torch.nonzero(raster, as_tuple=True)
        right.scatter(t.numpy(), n.numpy(), s=30, marker="|", color="black")
        right.set_xlabel("time step")
        right.set_ylabel("hidden neuron")
        right.set_title("SNN (Xylo preset): hidden spikes, one digit")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def main(argv: Optional[Sequence[str]] = None) -> List[Result]:
    """Command-line entry point of ``python -m aquatic.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m aquatic.demo",
        description=(
            "Train a float MLP, the same MLP with int8, int4 and binary weights, and a "
            "spiking network in float and with the Xylo hardware preset on scikit-learn's "
            "8x8 digits; convert the quantized models to integer arithmetic and report "
            "accuracy, size and integer agreement in one table plus a PNG plot."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a short run (under 30 s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: these small models gain nothing from more)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("aquatic_demo.png"), help="where to save the plot"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(quick=args.quick, seed=args.seed, out=args.out)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
