"""Train a small Loihi model with aquatic and write its netx file and test input.

Run from the repository root (the main environment, with torch and h5py)::

    python tools/loihi_trained_model.py tests/hw/data

It writes ``loihi_trained.net`` (lava-dl's netx HDF5), ``loihi_trained_input.npy``
(input spikes ``(N, T, 16)``) and ``loihi_trained_model.npy`` (the model's own output
spikes). Then run the netx file in lava-nc (Python 3.10)::

    /tmp/lava310/bin/python tools/loihi_reference.py tests/hw/data/loihi_trained_lava.npy \\
        --netx tests/hw/data/loihi_trained.net --spikes tests/hw/data/loihi_trained_input.npy
"""

import sys
from pathlib import Path

import numpy as np
import torch

from aquatic import nn as ann
from aquatic.hw import loihi


def trained_model(tau_syn=None, seed=0, steps=60):
    """Linear(16, 12) -> LIF(bias) -> Linear(12, 8) -> LIF, a few Adam steps; and its input."""
    torch.manual_seed(seed)
    q, options = loihi.qconfig(), loihi.neuron_options()
    model = torch.nn.Sequential(
        ann.Linear(16, 12, bias=False, qconfig=q),
        ann.LIF(tau_mem=4.0, tau_syn=tau_syn, bias=0.1, train_decay=True, qconfig=q, **options),
        ann.Linear(12, 8, bias=False, qconfig=q),
        ann.LIF(alpha_mem=0.9, tau_syn=tau_syn, threshold=0.5, qconfig=q, **options),
    )
    x = (torch.rand(4, steps, 16) < 0.3).float()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(5):
        loss = (model(x).mean() - 0.2) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x


def main():
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/hw/data")
    model, x = trained_model(tau_syn=3.0)
    with torch.no_grad():
        y = model(x)
    loihi.export(model, path=folder / "loihi_trained.net")
    np.save(folder / "loihi_trained_input.npy", x.to(torch.int8).numpy())
    np.save(folder / "loihi_trained_model.npy", y.to(torch.int8).numpy())
    print(f"wrote {folder}/loihi_trained.net, its input and the model's spikes ({int(y.sum())})")


if __name__ == "__main__":
    main()
