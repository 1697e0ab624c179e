"""Intel Loihi (CUBA neurons, as lava-nc's bit-accurate models compute them): QAT preset,
simulator and export (a spec for :func:`simulate`, and lava-dl's netx HDF5).

Registers are integers in units of 1/64 (lava-dl's ``w_scale``): weights lie on a grid
of 2/64 with 8 bits (-4 .. 3.97), thresholds are ``theta * 64`` and biases
``b * 64``; the 12-bit decays ``du``/``dv`` give :math:`\\alpha = 1 - d / 4096`. The
chip holds its states in units of 1/4096 (registers shifted left by 6 bits); see
:mod:`aquatic.hw._loihi_sim` for the arithmetic of :func:`simulate`, which is lava-nc's.

Exactness: with :func:`qconfig` the states are quantized to the chip's 24-bit grid of
1/4096 (the voltage saturating at :math:`\\pm(2^{23} - 1)`) before the spike
decision, and the 12-bit decays are applied as Loihi applies them
(``(4096 - d) * x >> 12`` rounded toward zero,
:meth:`aquatic.quantizers.UniformDecay.decay_state`). With the neuron options of
:func:`neuron_options` (reset to zero, spike on :math:`v > \\vartheta`, input added
after the current decay, one step of delay per connection) a trained ``Linear -> LIF``
stack then spikes exactly as ``simulate(export(model), x)`` and as its netx file run in
lava-nc, with or without ``tau_syn``. One difference remains: the chip wraps a current
that leaves its 24 bits, training saturates it (both are a failure of scaling).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from aquatic.walk import refuse_shared_layers
from aquatic.functional.fake_quant import fake_quantize_affine, quantize_affine
from aquatic.functional.grid import Grid
from aquatic.functional.integer import int_range
from aquatic.quantizers.base import Quantizer

from aquatic.hw._common import (
    DoesNotFitError,
    layer_sequence,
    on_grid,
    per_neuron,
    quantized_param,
    require,
)
from aquatic.hw._loihi_netx import write_netx
from aquatic.hw._loihi_sim import (
    BIAS_MAX,
    DECAY_BITS,
    STATE_BITS,
    STATE_SHIFT,
    THRESHOLD_MAX,
    V_MAX,
    W_SCALE,
    check_spec,
    simulate,
)
from aquatic.nn import LIF, LIFRecurrent
from aquatic.ptq.chip_budget import ChipBudget
from aquatic.qconfig import QConfig
from aquatic.quantizers.decay import UniformDecay
from aquatic.quantizers.uniform import UniformQuantizer

__all__ = [
    "BIAS_MAX",
    "DECAY_BITS",
    "STATE_BITS",
    "STATE_SHIFT",
    "THRESHOLD_MAX",
    "V_MAX",
    "W_SCALE",
    "StateQuantizer",
    "budget",
    "check_spec",
    "export",
    "export_netx",
    "neuron_options",
    "qconfig",
    "simulate",
]


class StateQuantizer(Quantizer):
    """Loihi's neuron states: signed ``bits``-bit integers in units of ``scale``.

    A fixed grid (lava-dl's state unit :math:`1/64` and Loihi's 24-bit currents and
    voltages by default), rounded to nearest and saturating at the range, with torch's
    fake-quantization gradient (straight through inside the range). Unlike
    :class:`~aquatic.quantizers.UniformQuantizer` (at most 16 bits) it holds the
    24-bit states.

    Args:
        bits: width of the signed integer state, 2 to 32.
        scale: the state unit (positive).
        narrow_range: saturate at :math:`\\pm(2^{bits-1} - 1)` (Loihi's voltage) rather
            than at :math:`-2^{bits-1}` and :math:`2^{bits-1} - 1`.

    Example:
        >>> q = StateQuantizer()
        >>> q(torch.tensor([1.0, 1.01, -300.0]))
        tensor([   1.0000,    1.0156, -300.0000])
        >>> q.to_int(torch.tensor([1.0, 1e6]))  # 24 bits saturate at 2**23 - 1
        tensor([     64, 8388607], dtype=torch.int32)
    """

    #: It observes nothing and fake-quantizes with torch's per-tensor operator on
    #: :meth:`grid`: the fused neuron sequence may run it (:mod:`aquatic.nn.grid_decay`).
    fixed_state_grid = True

    def __init__(
        self, bits: int = STATE_BITS, scale: float = 1.0 / W_SCALE, narrow_range: bool = False
    ) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
            raise ValueError(f"bits must be an int in 2..32, got {bits!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.bits = bits
        self.quant_min, self.quant_max = int_range(bits)
        self.narrow_range = bool(narrow_range)
        if self.narrow_range:
            self.quant_min += 1
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))

    def fake_quantize(self, input: Tensor) -> Tensor:
        return fake_quantize_affine(
            input, self.scale, self.zero_point, self.quant_min, self.quant_max
        )

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """The integer states (codes) of ``input``."""
        return quantize_affine(input, self.scale, self.zero_point, self.quant_min, self.quant_max)

    def grid(self) -> Grid:
        """The state unit ``scale``, zero point 0, the signed ``bits``-bit range."""
        return Grid(self.scale, self.zero_point, self.quant_min, self.quant_max)

    def qparams(self) -> Dict[str, Any]:
        """``scale``, ``zero_point`` (0), ``quant_min``, ``quant_max``, ``ch_axis`` (None)."""
        return self.grid().qparams()

    def extra_repr(self) -> str:
        narrow = ", narrow_range=True" if self.narrow_range else ""
        return f"bits={self.bits}, scale={self.scale.item():g}{narrow}" + self._switch_repr()


def qconfig():
    """A QConfig that trains against Loihi's registers and states.

    Weights: 8 bits with a fixed step of 2/64; biases: the chip's 13-bit mantissa on a
    grid of 1/64; thresholds: 16 bits unsigned on a grid of 1/64 (the chip's ``vth``
    has 17); ``tau``/``alpha``: 12-bit uniform decays
    (:class:`~aquatic.quantizers.UniformDecay`, :math:`\\alpha = 1 - d/4096`); states:
    24 bits on the chip's grid of 1/4096, saturating at :math:`\\pm(2^{23} - 1)`
    (:class:`StateQuantizer`), so the spiking layers decide spikes on the chip's voltage
    and decay the states as the chip does. Give the ``LIF`` layers
    :func:`neuron_options` too.

    Example:
        >>> from aquatic.hw import loihi
        >>> q = loihi.qconfig()
        >>> q.weight.kwargs["scale"], q.alpha.kwargs["bits"], q.state.kwargs["scale"]
        (0.03125, 12, 0.000244140625)
    """
    step = 1.0 / W_SCALE
    return QConfig(
        weight=UniformQuantizer.with_args(bits=8, scale=2 * step),
        bias=UniformQuantizer.with_args(bits=13, scale=step),
        threshold=UniformQuantizer.with_args(bits=16, signed=False, scale=step),
        tau=UniformDecay.with_args(bits=DECAY_BITS, param="tau"),
        alpha=UniformDecay.with_args(bits=DECAY_BITS, param="alpha"),
        state=StateQuantizer.with_args(
            bits=STATE_BITS, scale=step / 2**STATE_SHIFT, narrow_range=True
        ),
    )


def neuron_options() -> Dict[str, Any]:
    """The :class:`~aquatic.nn.LIF` options of Loihi's CUBA neuron, as keyword arguments.

    ``reset="zero"``; ``strict_threshold`` (spike on :math:`v > \\vartheta`);
    ``input_after_decay`` (:math:`u[t] = R(u[t-1]) + x[t]`); ``input_delay`` (every
    connection delivers its spikes one step late, the input's too, as lava-nc's Dense).

    Example:
        >>> from aquatic import nn as ann
        >>> from aquatic.hw import loihi
        >>> lif = ann.LIF(tau_mem=4.0, qconfig=loihi.qconfig(), **loihi.neuron_options())
        >>> lif.strict_threshold, lif.input_after_decay, lif.input_delay, lif.reset
        (True, True, True, 'zero')
    """
    return {
        "reset": "zero",
        "strict_threshold": True,
        "input_after_decay": True,
        "input_delay": True,
    }


def _register_grid() -> Grid:
    """The grid of the registers: units of 1/64 (weights, thresholds and biases)."""
    return StateQuantizer(scale=1.0 / W_SCALE).grid()


def _decay_code(alpha, size: int, name: str) -> torch.Tensor:
    """``d = (1 - alpha) * 4096`` as integers, or a clear error."""
    if alpha is None:
        return torch.full((size,), 2**DECAY_BITS, dtype=torch.int64)
    leak = 1.0 - per_neuron(alpha, size, name)
    # The leak 1 - alpha on its 12-bit grid: d in 0..4096.
    grid = Grid(torch.tensor(2.0**-DECAY_BITS), torch.tensor(0), 0, 2**DECAY_BITS)
    return on_grid(leak, grid, f"{name} (as 1 - alpha)")


def export(model: nn.Module, path: Optional[Union[str, os.PathLike]] = None) -> Dict[str, Any]:
    """The trained ``model`` as Loihi CUBA layers (a spec for :func:`simulate`).

    ``model`` is ``Linear -> LIF`` repeated (an ``nn.Sequential``), quantized with
    :func:`qconfig`, each ``LIF`` built with :func:`neuron_options`. Each ``LIF`` needs
    ``max_spikes=1``. Without ``tau_syn`` the current takes the input as it is
    (``current_decay = 4096``); with it, ``current_decay`` is the model's. The voltage
    decay ``dv`` is the model's. The ``LIF`` bias is the chip's bias; a ``Linear``
    bias is refused (the chip delays what a connection delivers, and a bias inside the
    connection would be delayed with it: give the ``LIF`` a bias instead). The exported
    network then spikes exactly as the model does (see the module docstring).

    Args:
        model: the trained ``nn.Sequential``.
        path: also write the network there in lava-dl's netx HDF5 format
            (:func:`export_netx`), which needs h5py (``pip install 'aquatic[loihi]'``).

    Returns:
        dict: ``{"layers": [...]}``, each with ``weight`` ``(Nout, Nin)`` (units of 1/64,
        even), ``current_decay``, ``voltage_decay``, ``threshold``, ``bias`` and ``name``.

    Raises:
        DoesNotFitError: a layer type or option Loihi lacks, or a value off its grid or
            outside its field (names the layer, the value and the limit).
    """
    refuse_shared_layers(model, "Loihi export")
    layers = layer_sequence(model, "Loihi")
    require(
        len(layers) % 2 == 0,
        "Loihi takes (Linear -> LIF) pairs; got "
        + " -> ".join(f"{type(m).__name__} ({n})" for n, m in layers),
    )
    grid = _register_grid()
    spec: List[Dict[str, Any]] = []
    for (lin_name, linear), (lif_name, lif) in zip(layers[::2], layers[1::2]):
        require(
            isinstance(linear, nn.Linear),
            f"layer {lin_name!r} is a {type(linear).__name__}; Loihi export takes Linear layers",
        )
        require(
            isinstance(lif, LIF) and not isinstance(lif, LIFRecurrent),
            f"layer {lif_name!r} is a {type(lif).__name__}; Loihi's CUBA neurons are an aquatic.nn.LIF",
        )
        neurons = lif.spec()
        for option, value in neuron_options().items():
            actual = neurons.reset if option == "reset" else getattr(neurons, option)
            require(
                actual == value,
                f"layer {lif_name!r}: Loihi's neurons need {option}={value!r}, got "
                f"{actual!r}; build the LIF with **loihi.neuron_options()",
            )
        require(
            neurons.max_spikes == 1,
            f"layer {lif_name!r}: Loihi neurons spike once per step; use max_spikes=1",
        )
        require(
            neurons.min_v_mem is None and not neurons.norm_input,
            f"layer {lif_name!r}: Loihi has no min_v_mem or norm_input",
        )
        n_out = linear.out_features
        lin_bias = per_neuron(quantized_param(linear, "bias"), n_out, f"{lin_name}.bias")
        require(
            not bool(lin_bias.ne(0).any()),
            f"layer {lin_name!r} has a bias, which Loihi's connection would deliver one step "
            f"late; use Linear(bias=False) and give {lif_name!r} a bias (bias=True)",
        )
        weight = quantized_param(linear, "weight").detach().double()
        current_decay = (
            _decay_code(neurons.alpha_syn, n_out, f"{lif_name}.alpha_syn")
            if neurons.alpha_syn is not None
            else torch.full((n_out,), 2**DECAY_BITS, dtype=torch.int64)
        )
        entry = {
            "name": lif_name,
            "weight": on_grid(weight, grid, f"{lin_name}.weight"),
            "current_decay": current_decay,
            "voltage_decay": _decay_code(neurons.alpha_mem, n_out, f"{lif_name}.alpha_mem"),
            "threshold": on_grid(
                per_neuron(neurons.threshold, n_out, lif_name), grid, f"{lif_name}.threshold"
            ),
            "bias": on_grid(per_neuron(neurons.bias, n_out, lif_name), grid, f"{lif_name}.bias"),
        }
        spec.append(entry)
    try:
        check_spec({"layers": spec})
    except DoesNotFitError as error:
        raise DoesNotFitError(f"the model does not fit Loihi: {error}") from None
    if path is not None:
        export_netx({"layers": spec}, path)
    return {"layers": spec}


def export_netx(spec: Mapping[str, Any], path: Union[str, os.PathLike]) -> List[str]:
    """Write a Loihi ``spec`` (from :func:`export`) as lava-dl's netx HDF5 network.

    ``lava.lib.dl.netx.hdf5.Network(net_config=path)`` loads it; run in lava-nc with
    ``Loihi2SimCfg(select_tag="fixed_pt")`` it spikes as :func:`simulate` does (the
    layout: :mod:`aquatic.hw._loihi_netx`). netx holds one decay and one threshold per
    layer: per-neuron values are refused.

    Returns:
        list: the names of the layers written.

    Raises:
        DoesNotFitError: a value the chip or netx cannot hold (names the field).
        ImportError: h5py is missing (``pip install 'aquatic[loihi]'``).
    """
    return write_netx(spec, path)


def _fixed_step_weights(bits: int) -> QConfig:
    """``bits``-bit weights on Loihi's fixed weight step (2/64): fewer bits clip."""
    return QConfig(weight=UniformQuantizer.with_args(bits=bits, scale=2.0 / W_SCALE))


def budget() -> ChipBudget:
    """Loihi as the budget of :func:`aquatic.mixed_precision` (``budget=loihi`` is this).

    Weights of 2 to 8 bits on the fixed step of 2/64 (fewer bits hold a smaller range,
    -2**(bits-1) .. 2**(bits-1) - 1 steps), in the QConfig each ``LIF`` carries (from
    :func:`qconfig`), checked by :func:`export`; see :class:`aquatic.ptq.ChipBudget`.

    Example:
        >>> from aquatic.hw import loihi
        >>> loihi.budget().weight_qconfig(4).weight
        UniformQuantizer.with_args(bits=4, scale=0.03125)
    """
    return ChipBudget("Loihi", check=export, weight_qconfig=_fixed_step_weights)
