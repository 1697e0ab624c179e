"""Post-training quantization of a trained float MLP on the bundled digits data set.

Trains a 64-128-128-10 perceptron in float on scikit-learn's 8x8 digits (as
``python -m aquatic.demo`` does), then, with 10 calibration batches of 64 training
images, reports test accuracy for:

- int8 PTQ: ``aquatic.quantize(model, aquatic.qconfig.int8)`` + ``aquatic.calibrate``;
- 4-, 3- and 2-bit weights (per output channel, activations float) with min/max
  ranges, MSE-optimal ranges, and MSE ranges + bias correction;
- mixed precision (``aquatic.mixed_precision``, candidates 2, 4, 8 bits, or 1 (binary),
  2, 3, 4, 8 bits; MSE ranges + bias correction) at the weight-byte size of uniform
  3-bit and of uniform 2-bit weights, against
  uniform weights of that size, straight after calibration and after the same short
  QAT fine-tune (2 epochs, Adam, lr 1e-4, ranges frozen);
- torch.ao eager-mode PTQ (x86 default qconfig: per-channel int8 weights, histogram
  int8 activations) as a reference row, when the quantized engine is available.

Usage::

    python benchmarks/ptq.py [--epochs 40] [--seed 0] [--threads 1]

Needs scikit-learn (``pip install -e '.[demo]'``).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

import aquatic
from aquatic.demo import load_digits
from aquatic.observers import MinMaxObserver, MSEObserver
from aquatic.ptq import weight_qconfig


def make_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, seed: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 64):
            batch = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return 100.0 * (model(x).argmax(dim=1) == y).float().mean().item()


def weight_bytes(model: nn.Module, bits: dict) -> int:
    layers = dict(model.named_modules())
    return sum(math.ceil(layers[n].weight.numel() * b / 8) for n, b in bits.items())


def uniform(model: nn.Module, bits: int, observer, calib, bias_correction=False) -> nn.Module:
    qmodel = aquatic.quantize(model, weight_qconfig(bits, observer=observer))
    return aquatic.calibrate(qmodel, calib, progress=False, bias_correction=bias_correction)


def torch_ao_ptq(model: nn.Module, calib: List[Tensor], x: Tensor, y: Tensor) -> Optional[float]:
    try:
        from torch.ao import quantization as tq

        engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
        torch.backends.quantized.engine = engine
        wrapped = nn.Sequential(tq.QuantStub(), copy.deepcopy(model), tq.DeQuantStub()).eval()
        wrapped.qconfig = tq.get_default_qconfig(engine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = tq.prepare(wrapped)
            with torch.no_grad():
                for batch in calib:
                    prepared(batch)
            converted = tq.convert(prepared)
        return accuracy(converted, x, y)
    except Exception as error:  # the reference row is optional
        print(f"(torch.ao PTQ unavailable: {type(error).__name__}: {error})")
        return None


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--qat-epochs", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_digits(seed=args.seed)
    torch.manual_seed(args.seed)
    model = make_mlp()
    train(model, x_train, y_train, args.epochs, 1e-3, args.seed)
    calib = [x_train[i : i + 64] for i in range(0, 640, 64)]
    labelled = [(x_train[i : i + 64], y_train[i : i + 64]) for i in range(0, 640, 64)]
    rows: List[Tuple[str, str, float]] = []
    float_acc = accuracy(model, x_test, y_test)
    all_bytes = {n: 32 for n in ("0", "2", "4")}
    rows.append(("float32", f"{weight_bytes(model, all_bytes)}", float_acc))

    int8 = aquatic.calibrate(aquatic.quantize(model, aquatic.qconfig.int8), calib, progress=False)
    rows.append(("int8 PTQ (aquatic.qconfig.int8)", "", accuracy(int8, x_test, y_test)))
    reference = torch_ao_ptq(model, calib, x_test, y_test)
    if reference is not None:
        rows.append(("int8 PTQ, torch.ao eager (x86 qconfig)", "", reference))

    for bits in (4, 3, 2):
        size = str(weight_bytes(model, {n: bits for n in ("0", "2", "4")}))
        minmax = uniform(model, bits, MinMaxObserver, calib)
        mse = uniform(model, bits, MSEObserver, calib)
        corrected = uniform(model, bits, MSEObserver, calib, bias_correction=True)
        rows.append((f"{bits}-bit weights, min/max", size, accuracy(minmax, x_test, y_test)))
        rows.append((f"{bits}-bit weights, MSE", size, accuracy(mse, x_test, y_test)))
        rows.append(
            (f"{bits}-bit weights, MSE + bias corr.", size, accuracy(corrected, x_test, y_test))
        )

    qat_rows = []
    for bits, candidates in ((3, (2, 4, 8)), (3, (1, 2, 3, 4, 8)), (2, (1, 2, 3, 4, 8))):
        budget = weight_bytes(model, {n: bits for n in ("0", "2", "4")})
        same = uniform(model, bits, MSEObserver, calib, bias_correction=True)
        t = time.perf_counter()
        mapping = aquatic.mixed_precision(
            model, calib, budget=budget, candidates=candidates, progress=False
        )
        seconds = time.perf_counter() - t
        mixed = aquatic.calibrate(
            aquatic.quantize(model, mapping), calib, progress=False, bias_correction=True
        )
        label = "/".join(str(mapping.bits[n]) for n in ("0", "2", "4"))
        choices = ",".join(map(str, candidates))
        rows.append(
            (
                f"mixed {label} of {{{choices}}} (<= {bits}-bit, {seconds:.1f} s)",
                str(mapping.cost),
                accuracy(mixed, x_test, y_test),
            )
        )
        for name, qmodel in ((f"uniform {bits}-bit", same), (f"mixed {label}", mixed)):
            before = accuracy(qmodel, x_test, y_test)
            train(qmodel, x_train, y_train, args.qat_epochs, 1e-4, args.seed)
            qat_rows.append((name, before, accuracy(qmodel, x_test, y_test)))

    print(f"\nDigits MLP 64-128-128-10, test set of {len(x_test)} images")
    print(f"{'model':<50} {'weight bytes':>12} {'accuracy %':>10}")
    for name, size, acc in rows:
        print(f"{name:<50} {size:>12} {acc:>10.2f}")
    print(f"\nQAT fine-tune ({args.qat_epochs} epochs, Adam lr 1e-4, ranges frozen)")
    print(f"{'model':<50} {'PTQ %':>8} {'QAT %':>8}")
    for name, before, after in qat_rows:
        print(f"{name:<50} {before:>8.2f} {after:>8.2f}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
