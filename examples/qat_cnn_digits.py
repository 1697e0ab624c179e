"""Quantization-aware training of a small CNN with 4-bit weights on 8x8 digits.

Run ``python examples/qat_cnn_digits.py`` (needs scikit-learn for the digits). Weights
are 4-bit with one scale per output channel, activations 8-bit; the trained model is
converted to integer arithmetic with ``aquatic.convert``, and we check that it predicts
what the trained model does.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import aquatic
from aquatic.demo import load_digits

# 4 bits leave 15 levels per weight: one scale per output channel (the preset's
# ch_axis=0) keeps filters with small weights from rounding away. The preset leaves
# activations in float, but in the integer model each layer's accumulator needs its
# input on one grid, so the activations are int8.
W4A8 = aquatic.qconfig.int4_weight._replace(activation=aquatic.qconfig.int8.activation)


def build_model() -> nn.Module:
    return nn.Sequential(
        aquatic.nn.Conv2d(1, 16, kernel_size=3, padding=1, qconfig=W4A8),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        aquatic.nn.Conv2d(16, 32, kernel_size=3, padding=1, qconfig=W4A8),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(),
        # The logits keep the accumulator's precision: only their argmax is used.
        aquatic.nn.Linear(32 * 2 * 2, 10, qconfig=W4A8._replace(activation=None)),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(dim=1) == y).float().mean().item()


def main(epochs: int = 15, quiet: bool = False) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_digits()
    # load_digits gives flat rows of 64 pixels; convolutions want (N, C, H, W).
    x_train, x_test = x_train.view(-1, 1, 8, 8), x_test.view(-1, 1, 8, 8)

    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(x_train)).split(64):
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if not quiet and (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.3f}")

    model.eval()  # freezes the activation ranges the integer model will use
    test_accuracy = accuracy(model, x_test, y_test)

    # Pixels are multiples of 1/16: that is the grid of the integer model's input.
    integer_model = aquatic.convert(model, input_scale=1 / 16)
    logits = integer_model.dequantize_output(integer_model(integer_model.quantize_input(x_test)))
    with torch.no_grad():
        same = logits.argmax(dim=1) == model(x_test).argmax(dim=1)
    results = {
        "accuracy": test_accuracy,
        "integer_accuracy": (logits.argmax(dim=1) == y_test).float().mean().item(),
        "agreement": same.float().mean().item(),
        "seconds": time.perf_counter() - start,
    }
    if not quiet:
        print(f"4-bit-weight CNN test accuracy: {100 * results['accuracy']:.1f}%")
        print(f"integer model test accuracy:    {100 * results['integer_accuracy']:.1f}%")
        print(f"integer model agrees on:        {100 * results['agreement']:.1f}% of test digits")
        print(f"took {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    # A model this small trains fastest on one thread: splitting its small matrix
    # products costs more than it saves, and much more on a busy machine.
    torch.set_num_threads(1)
    main()
