"""Writing a Loihi specification as lava-dl's netx HDF5 network.

The layout is the one ``lava.lib.dl.netx.hdf5.Network`` reads (lava-dl 0.6,
``lava/lib/dl/netx/hdf5.py``): a group ``layer`` with one numbered group per layer, the
first an ``input`` layer holding only its ``shape``, then one ``dense`` layer per
specification layer with ``shape``, ``weight`` (the 8-bit integers, units of 1/64),
``bias`` (the bias mantissa, which netx gives exponent 6) and a ``neuron`` group of
type ``CUBA`` holding ``iDecay`` (netx sets lava-nc's ``du = iDecay - 1``), ``vDecay``
(``dv``), ``vThMant`` (``vth``), ``refDelay`` and ``gradedSpike``. netx builds each
dense layer from lava-nc's ``Dense`` and ``LIF`` processes, so the network computes
what :func:`aquatic.hw.loihi.simulate` computes. netx holds one decay and one threshold
per layer; a specification with several is refused.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, List, Mapping, Union

import numpy as np

from aquatic.hw._common import DoesNotFitError
from aquatic.hw._loihi_sim import check_spec

__all__ = ["write_netx"]


def _h5py() -> ModuleType:
    """h5py, imported when needed, or an ImportError naming the extra."""
    try:
        return importlib.import_module("h5py")
    except ImportError as error:
        raise ImportError(
            "writing lava-dl's netx HDF5 format needs the optional package 'h5py', which "
            "is not installed: pip install 'aquatic[loihi]'"
        ) from error


def _one_value(layer: Mapping[str, Any], key: str) -> int:
    values = layer[key].unique()
    if values.numel() != 1:
        raise DoesNotFitError(
            f"{layer['name']}.{key} holds {values.numel()} different values; lava-dl's netx "
            f"format takes one {key} per layer: train the layer with a shared (scalar) value"
        )
    return int(values)


def write_netx(spec: Mapping[str, Any], path: Union[str, os.PathLike]) -> List[str]:
    """Write the Loihi ``spec`` to ``path`` as a netx HDF5 network; returns the layer names.

    Run the file with lava-dl and lava-nc (Python 3.10), e.g.::

        from lava.lib.dl.netx import hdf5
        from lava.magma.core.run_configs import Loihi2SimCfg
        net = hdf5.Network(net_config="model.net")
        # connect a spike source to net.inp and a sink to net.out, then
        net.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))

    Raises:
        DoesNotFitError: a value outside the chip's fields, or per-neuron decays or
            thresholds (netx holds one per layer).
        ImportError: h5py is not installed (``pip install 'aquatic[loihi]'``).
    """
    layers = check_spec(spec)
    values = [
        {key: _one_value(layer, key) for key in ("current_decay", "voltage_decay", "threshold")}
        for layer in layers
    ]
    h5py = _h5py()
    with h5py.File(path, "w") as file:
        group = file.create_group("layer")
        first = group.create_group("0")
        first.create_dataset("type", data=np.bytes_("input"))
        first.create_dataset("shape", data=np.array([layers[0]["weight"].shape[1]]))
        for index, (layer, scalars) in enumerate(zip(layers, values), start=1):
            entry = group.create_group(str(index))
            entry.create_dataset("type", data=np.bytes_("dense"))
            entry.create_dataset("shape", data=np.array([layer["weight"].shape[0]]))
            entry.create_dataset("weight", data=layer["weight"].numpy().astype(np.int64))
            entry.create_dataset("bias", data=layer["bias"].numpy().astype(np.int64))
            neuron = entry.create_group("neuron")
            neuron.create_dataset("type", data=np.bytes_("CUBA"))
            neuron.create_dataset("iDecay", data=scalars["current_decay"])
            neuron.create_dataset("vDecay", data=scalars["voltage_decay"])
            neuron.create_dataset("vThMant", data=scalars["threshold"])
            neuron.create_dataset("refDelay", data=1)
            neuron.create_dataset("gradedSpike", data=False)
    return [layer["name"] for layer in layers]
