"""Quantization-aware training of an MLP on 8x8 digits, then integer-only inference.

Run ``python examples/qat_mlp_digits.py`` (needs scikit-learn for the digits). The
model is written with ``aquatic.nn.Linear`` in place of ``torch.nn.Linear``; everything
else is an ordinary PyTorch training loop. After training, ``aquatic.convert`` turns the
model into integer arithmetic and we check that it predicts what the trained model does.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import aquatic
from aquatic.demo import load_digits


def build_model() -> nn.Module:
    int8 = aquatic.qconfig.int8
    return nn.Sequential(
        aquatic.nn.Linear(64, 64, qconfig=int8),
        nn.ReLU(),
        # Only the argmax of the logits matters: leave them at the accumulator's full
        # precision rather than rounding them to 8 bits, where ties would be common.
        aquatic.nn.Linear(64, 10, qconfig=int8._replace(activation=None)),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(dim=1) == y).float().mean().item()


def main(epochs: int = 20, quiet: bool = False) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_digits()

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

    # eval() matters: the activation observers stop moving, so the scales that the
    # integer model bakes in are the ones the evaluation uses.
    model.eval()
    test_accuracy = accuracy(model, x_test, y_test)

    # Pixels are k/16 for integer k, so the input grid is 1/16 and the integer model
    # sees exactly the values the trained model saw.
    integer_model = aquatic.convert(model, input_scale=1 / 16)
    codes = integer_model(integer_model.quantize_input(x_test))
    integer_logits = integer_model.dequantize_output(codes)
    # int8 scales are not powers of two, so a requantized code can land one step from
    # the trained model's (integer_model.notes says where): compare the predictions.
    with torch.no_grad():
        same = integer_logits.argmax(dim=1) == model(x_test).argmax(dim=1)
    results = {
        "accuracy": test_accuracy,
        "integer_accuracy": (integer_logits.argmax(dim=1) == y_test).float().mean().item(),
        "agreement": same.float().mean().item(),
        "seconds": time.perf_counter() - start,
    }
    if not quiet:
        print(f"int8 QAT test accuracy:      {100 * results['accuracy']:.1f}%")
        print(f"integer model test accuracy: {100 * results['integer_accuracy']:.1f}%")
        print(f"integer model agrees on:     {100 * results['agreement']:.1f}% of test digits")
        print(f"took {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    # A model this small trains fastest on one thread: splitting its small matrix
    # products costs more than it saves, and much more on a busy machine.
    torch.set_num_threads(1)
    main()
