"""Quantize an existing float model with ``aquatic.quantize``, then fine-tune it.

Run ``python examples/quantize_pretrained.py`` (needs scikit-learn for the digits). The
model is plain ``torch.nn`` code that knows nothing about aquatic. ``aquatic.quantize``
swaps its layers for quantization-aware twins, keeping the trained weights; a few
epochs of fine-tuning recover what rounding the weights to 2 bits cost; and
``aquatic.dequantize`` gives back plain ``torch.nn`` with the quantized weights baked in.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import aquatic
from aquatic.demo import load_digits
from aquatic.quantizers import UniformQuantizer


class Net(nn.Module):
    """A small CNN for 1x8x8 digits, as anyone might have written it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            loss = loss_fn(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def main(epochs: int = 10, finetune_epochs: int = 5, quiet: bool = False) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_digits()
    x_train, x_test = x_train.view(-1, 1, 8, 8), x_test.view(-1, 1, 8, 8)

    model = Net()
    train(model, x_train, y_train, epochs, lr=1e-2)
    float_accuracy = accuracy(model, x_test, y_test)

    # Ternary weights: 2 bits with a narrow range leave the codes -1, 0 and +1, times
    # one scale per output channel. Rounding to so few values costs accuracy at first,
    # which fine-tuning wins back. Activations stay in float, so the dequantized model
    # below computes exactly what the quantized one does.
    w2 = aquatic.QConfig(weight=UniformQuantizer.with_args(bits=2, narrow_range=True, ch_axis=0))
    qconfig = {
        nn.Conv2d: w2,
        nn.Linear: w2,
        # The most specific key wins: a name beats a type. The first layer has few
        # weights and sees the raw pixels, so it is the usual one to keep in float.
        "features.0": None,
    }
    qmodel = aquatic.quantize(model, qconfig)  # a copy; `model` stays as it was
    quantized_accuracy = accuracy(qmodel, x_test, y_test)

    # A smaller learning rate than for training from scratch: the weights are close.
    train(qmodel, x_train, y_train, finetune_epochs, lr=2e-3)
    finetuned_accuracy = accuracy(qmodel, x_test, y_test)

    plain = aquatic.dequantize(qmodel)
    with torch.no_grad():
        same_outputs = torch.equal(plain.eval()(x_test), qmodel(x_test))
    results = {
        "float_accuracy": float_accuracy,
        "quantized_accuracy": quantized_accuracy,
        "finetuned_accuracy": finetuned_accuracy,
        "quantized_layers": [n for n, m in qmodel.named_modules() if hasattr(m, "quantizers")],
        "dequantized": plain,
        "dequantized_matches": same_outputs,
        "seconds": time.perf_counter() - start,
    }
    if not quiet:
        print(f"quantized layers: {', '.join(results['quantized_layers'])} (features.0 in float)")
        rows = [
            ("float model", float_accuracy),
            ("ternary weights, before fine-tuning", quantized_accuracy),
            (f"ternary weights, after {finetune_epochs} epochs", finetuned_accuracy),
        ]
        for label, value in rows:
            print(f"{label + ':':<37} {100 * value:.1f}%")
        print(f"dequantized to plain torch.nn, same outputs: {same_outputs}")
        print(f"took {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    # A model this small trains fastest on one thread: splitting its small matrix
    # products costs more than it saves, and much more on a busy machine.
    torch.set_num_threads(1)
    main()
