"""A spiking network trained for the SynSense Xylo chip, exported and run on its simulator.

Run ``python examples/snn_xylo.py`` (needs scikit-learn for the digits). Xylo Audio 2
takes at most 16 input channels and 8 readout neurons, so the task is sized to fit: each
8x8 digit is averaged down to 4x4 = 16 intensities, rate-coded as spike trains, and the
network tells the digits 0-7 apart. Training uses ``xylo.qconfig``, which makes the model
compute the chip's integer arithmetic in float; ``xylo.export`` then gives the chip's
integer parameters, and ``xylo.simulate`` runs them bit-exactly.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

import aquatic
from aquatic.demo import SpikeCount, load_digits, rate_code
from aquatic.hw import xylo

CLASSES = 8  # Xylo's readout has 8 neurons
STEPS = 16


def digits_for_xylo(seed: int = 0):
    """Digits 0-7 as 16 rate-coded input channels: ``(N, STEPS, 16)`` spikes and labels."""
    x_train, y_train, x_test, y_test = load_digits(seed)
    coder = torch.Generator().manual_seed(seed)
    data = []
    for x, y in ((x_train, y_train), (x_test, y_test)):
        keep = y < CLASSES
        pooled = F.avg_pool2d(x[keep].view(-1, 1, 8, 8), 2).flatten(1)  # (N, 16) in [0, 1]
        data += [rate_code(pooled, STEPS, coder), y[keep]]
    return data


def build_network() -> nn.Sequential:
    # Xylo has one scale per neuron population: one QConfig (so one shared scale) for
    # the input weights and hidden neurons, another for the readout. Power-of-two
    # scales make every float sum in training exact, so the chip can match it spike
    # for spike.
    hidden, readout = xylo.qconfig(power_of_two=True), xylo.qconfig(power_of_two=True)
    return nn.Sequential(
        # Xylo's synapses have no bias.
        aquatic.nn.Linear(16, 32, bias=False, qconfig=hidden),
        # Every Xylo neuron has a decaying synaptic current (tau_syn); hidden neurons
        # may fire up to 31 times in a step, readout neurons once.
        aquatic.nn.LIF(tau_mem=8.0, tau_syn=4.0, max_spikes=31, qconfig=hidden),
        aquatic.nn.Linear(32, CLASSES, bias=False, qconfig=readout),
        aquatic.nn.LIF(tau_mem=8.0, tau_syn=4.0, max_spikes=1, qconfig=readout),
    )


def main(epochs: int = 10, quiet: bool = False) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    s_train, y_train, s_test, y_test = digits_for_xylo()

    network = build_network()
    # The chip runs the network; counting the readout spikes over time (a rate
    # readout) happens off the chip, so it wraps the network rather than joining it.
    classifier = nn.Sequential(network, SpikeCount())
    optimizer = torch.optim.Adam(classifier.parameters(), lr=5e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        classifier.train()
        for batch in torch.randperm(len(s_train)).split(64):
            loss = loss_fn(classifier(s_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if not quiet and (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.3f}")

    classifier.eval()
    with torch.no_grad():
        hidden_spikes = network[:2](s_test)
        model_spikes = network[2:](hidden_spikes)
    # export checks everything the chip needs (sizes, bit widths, decays of the form
    # 1 - 2**-dash) and raises naming the layer if something does not fit.
    spec = xylo.export(network)
    # The chip's readout receives the hidden spikes one step late: its step t + 1 is
    # the model's step t. One silent step at the end lets the last hidden spikes in.
    silence = torch.zeros_like(s_test[:, :1])
    chip_out, chip = xylo.simulate(spec, torch.cat([s_test, silence], 1).long(), record=True)
    chip_hidden = chip["spikes"][:, :-1]  # the silent step's hidden spikes reach no one
    results = {
        "accuracy": (model_spikes.sum(1).argmax(1) == y_test).float().mean().item(),
        "chip_accuracy": (chip_out.sum(1).argmax(1) == y_test).float().mean().item(),
        "hidden_identical": torch.equal(chip_hidden, hidden_spikes.long()),
        "output_identical": torch.equal(chip_out[:, 1:], model_spikes.long()),
        "hidden_spikes": int(chip_hidden.sum()),
        "max_spikes_per_step": int(chip_hidden.max()),
        "output_spikes": int(chip_out.sum()),
        "seconds": time.perf_counter() - start,
    }
    if not quiet:
        n_in, n_hidden, _ = spec["weights_in"].shape
        print(f"exported for Xylo: {n_in} inputs, {n_hidden} hidden and {CLASSES} readout neurons")
        print(
            f"test accuracy on digits 0-{CLASSES - 1}: model {100 * results['accuracy']:.1f}%, "
            f"chip {100 * results['chip_accuracy']:.1f}%"
        )
        print(
            f"hidden spikes identical on the chip: {results['hidden_identical']} "
            f"({results['hidden_spikes']} spikes, up to {results['max_spikes_per_step']} "
            "per neuron and step)"
        )
        print(
            f"readout spikes identical, one step later: {results['output_identical']} "
            f"({results['output_spikes']} spikes)"
        )
        print(f"took {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    # A model this small trains fastest on one thread: splitting its small matrix
    # products costs more than it saves, and much more on a busy machine.
    torch.set_num_threads(1)
    main()
