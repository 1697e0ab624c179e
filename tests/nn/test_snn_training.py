"""A small SNN learns a temporal task: which of two input channels fired first."""

import pytest
import torch
from torch import nn

import aquatic.nn as qnn
from aquatic import QConfig
from aquatic.quantizers import BitShiftDecay, UniformQuantizer

STEPS = 20


def first_spike_task(batch, generator):
    """Each channel fires once, at distinct times in [0, 15); label 1 if channel 1 was first."""
    times = torch.stack([torch.randperm(15, generator=generator)[:2] for _ in range(batch)])
    x = torch.zeros(batch, STEPS, 2)
    rows = torch.arange(batch)
    x[rows, times[:, 0], 0] = 1.0
    x[rows, times[:, 1], 1] = 1.0
    return x, (times[:, 1] < times[:, 0]).long()


@pytest.fixture
def one_thread(set_threads):
    # The tensors are tiny: thread start-up would cost more than the arithmetic.
    set_threads(1)


def make_model(qconfig):
    return nn.Sequential(
        qnn.Linear(2, 32, qconfig=qconfig),
        qnn.LIF(tau_mem=5.0, train_decay=True, qconfig=qconfig),
        qnn.Linear(32, 2, qconfig=qconfig),
        qnn.ExpLeak(tau_mem=10.0, train_decay=True, qconfig=qconfig),
    )


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x)[:, -1].argmax(1) == y).float().mean().item()


@pytest.mark.parametrize(
    "qconfig",
    [
        None,
        QConfig(
            weight=UniformQuantizer.with_args(bits=8),
            tau=BitShiftDecay.with_args(bits=4, param="tau"),
        ),
    ],
    ids=["float", "int8-weights-bitshift-decays"],
)
def test_learns_which_channel_fired_first(qconfig, one_thread):
    generator = torch.Generator().manual_seed(0)
    model = make_model(qconfig)
    test_x, test_y = first_spike_task(512, generator)
    before = accuracy(model, test_x, test_y)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        x, y = first_spike_task(128, generator)
        loss = nn.functional.cross_entropy(model(x)[:, -1], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy(model, test_x, test_y)
    assert after > 0.95 and after > before + 0.2
    lif = model[1]
    assert lif.tau_mem.grad is not None and lif.tau_mem.grad.abs().sum() > 0
    if qconfig is not None:
        # the decays actually used are bit-shift decays 1 - 2**-dash
        alpha = lif.quantize_params()["tau_mem"].neg().reciprocal().exp()
        dash = lif.quantizers["tau_mem"].to_int(lif.tau_mem).float()
        torch.testing.assert_close(alpha, 1 - 2**-dash)
