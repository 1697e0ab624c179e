"""Reference traces of Loihi CUBA networks from lava-nc's bit-accurate process models.

Run with a Python that has lava-nc 0.10 (it needs Python 3.10; no torch), e.g.::

    python3.10 -m venv /tmp/lava310 && /tmp/lava310/bin/pip install lava-nc h5py
    /tmp/lava310/bin/python tools/loihi_reference.py tests/hw/data/loihi_reference.npz

It draws random specifications (the format of ``aquatic.hw.loihi.check_spec``) of six
kinds: ``no_leak`` (current_decay 4096: no synaptic state), ``synaptic`` (a current
decay), ``bias``, ``limits`` (large weights and slow decays: the current wraps and the
voltage saturates at 24 bits), ``chain2`` and ``chain3`` (two and three layers with
biases), runs each on random input spikes with ``Loihi2SimCfg(select_tag="fixed_pt")``
(``PyDenseModelBitAcc`` and ``PyLifModelBitAcc``) and saves the specification, the input
and every layer's spikes, currents ``u`` and voltages ``v`` per step into one ``.npz``.
With ``--netx FILE.h5 --spikes FILE.npy`` it instead loads a netx file with lava-dl's
``lava.lib.dl.netx.hdf5.Network``, runs it on the spikes ``(T, Nin)`` and prints (or
saves, ``--out``) the output spikes ``(T, Nout)``.

This script does not import aquatic; the tests compare ``aquatic.hw.loihi.simulate``
with the file it writes.
"""

import argparse

import numpy as np

from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.dense.process import Dense
from lava.proc.io.sink import RingBuffer as Sink
from lava.proc.io.source import RingBuffer as Source
from lava.proc.lif.process import LIF
from lava.proc.monitor.process import Monitor

KINDS = ("no_leak", "synaptic", "bias", "limits", "chain2", "chain3")


def random_layer(rng, n_in, n_out, kind, last):
    """One layer's registers (units of 1/64 for weight, threshold and bias mantissa)."""
    if kind == "limits":
        weight = 2 * rng.integers(40, 128, size=(n_out, n_in))
        weight[rng.random((n_out, n_in)) < 0.2] *= -1
        return {
            "weight": weight,
            "current_decay": int(rng.integers(1, 4)),
            "voltage_decay": int(rng.integers(0, 3)),
            "threshold": int(rng.integers(100000, 131072)),
            "bias": rng.integers(-4096, 4096, size=n_out),
        }
    weight = 2 * rng.integers(-128, 128, size=(n_out, n_in))
    layer = {
        "weight": weight,
        "current_decay": 4096 if kind == "no_leak" else int(rng.integers(1, 4097)),
        "voltage_decay": int(rng.integers(0, 4096)),
        "threshold": int(rng.integers(50, 600)),
        "bias": np.zeros(n_out, dtype=np.int64),
    }
    if kind in ("bias", "chain2", "chain3") or (kind == "synaptic" and not last):
        layer["bias"] = rng.integers(-60, 60, size=n_out)
    return layer


def run_lava(layers, spikes):
    """Spikes, currents and voltages ``(T, N)`` of each layer, from lava-nc."""
    steps = spikes.shape[0]
    source = Source(data=spikes.T.astype(np.int32))
    port = source.s_out
    procs = []
    for layer in layers:
        n_out = layer["weight"].shape[0]
        dense = Dense(weights=layer["weight"].astype(np.int32))
        lif = LIF(
            shape=(n_out,),
            du=int(layer["current_decay"]) - 1,
            dv=int(layer["voltage_decay"]),
            vth=int(layer["threshold"]),
            bias_mant=np.asarray(layer["bias"], dtype=np.int32),
            bias_exp=6,
        )
        port.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        sink = Sink(shape=(n_out,), buffer=steps)
        lif.s_out.connect(sink.a_in)
        monitors = []
        for var in (lif.u, lif.v):
            monitor = Monitor()
            monitor.probe(var, steps)
            monitors.append(monitor)
        procs.append((lif, sink, monitors))
        port = lif.s_out
    source.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    traces = []
    for lif, sink, (mon_u, mon_v) in procs:
        u = mon_u.get_data()[lif.name]["u"]
        v = mon_v.get_data()[lif.name]["v"]
        traces.append((sink.data.get().T, u, v))
    source.stop()
    return traces


def reference(path, seed, cases_per_kind, steps):
    rng = np.random.default_rng(seed)
    arrays = {"kinds": np.array(KINDS), "seed": np.array(seed)}
    index = 0
    for kind in KINDS:
        for _ in range(cases_per_kind):
            depth = {"chain2": 2, "chain3": 3}.get(kind, 1)
            sizes = [int(rng.integers(4, 12)) for _ in range(depth + 1)]
            if kind == "limits":
                sizes = [32, 6]
            layers = [
                random_layer(rng, sizes[k], sizes[k + 1], kind, k == depth - 1)
                for k in range(depth)
            ]
            rate = 0.6 if kind == "limits" else rng.uniform(0.1, 0.5)
            spikes = (rng.random((steps, sizes[0])) < rate).astype(np.int64)
            traces = run_lava(layers, spikes)
            prefix = f"case{index}"
            arrays[f"{prefix}/kind"] = np.array(kind)
            arrays[f"{prefix}/input"] = spikes
            for k, (layer, (s, u, v)) in enumerate(zip(layers, traces)):
                for key, value in layer.items():
                    arrays[f"{prefix}/layer{k}/{key}"] = np.asarray(value, dtype=np.int64)
                arrays[f"{prefix}/layer{k}/spikes"] = s.astype(np.int8)
                arrays[f"{prefix}/layer{k}/current"] = u.astype(np.int32)
                arrays[f"{prefix}/layer{k}/voltage"] = v.astype(np.int32)
            index += 1
    arrays["cases"] = np.array(index)
    np.savez_compressed(path, **arrays)
    print(f"wrote {index} cases to {path}")


def run_netx(path, spikes):
    """Output spikes ``(T, Nout)`` of a netx HDF5 network run in lava-nc."""
    from lava.lib.dl.netx import hdf5  # lava-dl: only this mode needs it

    network = hdf5.Network(net_config=path)
    steps = spikes.shape[0]
    source = Source(data=spikes.T.astype(np.int32))
    sink = Sink(shape=network.out.shape, buffer=steps)
    source.s_out.connect(network.inp)
    network.out.connect(sink.a_in)
    network.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    output = sink.data.get().T.astype(np.int64)
    network.stop()
    return output


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the .npz to write (or, with --netx, unused)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--cases", type=int, default=3, help="cases per kind")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--netx", help="run this netx HDF5 file instead")
    parser.add_argument("--spikes", help="input spikes (T, Nin) for --netx, a .npy")
    args = parser.parse_args()
    if args.netx:
        inputs = np.load(args.spikes)
        outputs = np.stack([run_netx(args.netx, sample) for sample in inputs])
        np.save(args.path, outputs)
        print(f"wrote output spikes {outputs.shape} to {args.path}")
    else:
        reference(args.path, args.seed, args.cases, args.steps)


if __name__ == "__main__":
    main()
