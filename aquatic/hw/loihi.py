"""Intel Loihi (CUBA neurons, as lava-dl trains them): QAT preset, simulator and export.

States are integers in units of 1/64 (lava-dl's ``w_scale``): weights lie on a grid of
2/64 with 8 bits (-4 .. 3.97), thresholds are ``theta * 64``, and the 12-bit decays
``du``/``dv`` give :math:`\\alpha = 1 - d / 4096`. See :mod:`aquatic.hw._loihi_sim` for
the arithmetic of :func:`simulate`.

Exactness: with :func:`qconfig` the states are quantized to the 24-bit grid of 1/64
before the spike decision, and the 12-bit decays are applied as Loihi applies them
(``(4096 - d) * x >> 12`` rounded toward zero,
:meth:`aquatic.quantizers.UniformDecay.decay_state`). A trained ``Linear -> LIF``
stack with a leaky (or no) voltage decay and no synaptic state then spikes exactly as
``simulate(export(model), x)``. With ``tau_syn`` it cannot in general, whatever the
export does; see :func:`export`.
"""

from __future__ import annotations

from typing import Any, Dict, List

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
from aquatic.hw._loihi_sim import DECAY_BITS, STATE_BITS, W_SCALE, check_spec, simulate
from aquatic.nn import LIF, LIFRecurrent
from aquatic.ptq.chip_budget import ChipBudget
from aquatic.qconfig import QConfig
from aquatic.quantizers.decay import UniformDecay
from aquatic.quantizers.uniform import UniformQuantizer

__all__ = [
    "DECAY_BITS",
    "STATE_BITS",
    "W_SCALE",
    "StateQuantizer",
    "budget",
    "check_spec",
    "export",
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

    Example:
        >>> q = StateQuantizer()
        >>> q(torch.tensor([1.0, 1.01, -300.0]))
        tensor([   1.0000,    1.0156, -300.0000])
        >>> q.to_int(torch.tensor([1.0, 1e6]))  # 24 bits saturate at 2**23 - 1
        tensor([     64, 8388607], dtype=torch.int32)
    """

    def __init__(self, bits: int = STATE_BITS, scale: float = 1.0 / W_SCALE) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
            raise ValueError(f"bits must be an int in 2..32, got {bits!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.bits = bits
        self.quant_min, self.quant_max = int_range(bits)
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
        return f"bits={self.bits}, scale={self.scale.item():g}" + self._switch_repr()


def qconfig():
    """A QConfig that trains against Loihi's grids (lava-dl's conventions).

    Weights: 8 bits with a fixed step of 2/64; biases and thresholds: 16 bits on a grid
    of 1/64; ``tau``/``alpha``: 12-bit uniform decays
    (:class:`~aquatic.quantizers.UniformDecay`, :math:`\\alpha = 1 - d/4096`); states:
    24 bits on the grid of 1/64 (:class:`StateQuantizer`), so the spiking layers decide
    spikes on the integer voltage and decay the states as Loihi does.

    Example:
        >>> from aquatic.hw import loihi
        >>> q = loihi.qconfig()
        >>> q.weight.kwargs["scale"], q.alpha.kwargs["bits"], q.state.kwargs["bits"]
        (0.03125, 12, 24)
    """
    step = 1.0 / W_SCALE
    return QConfig(
        weight=UniformQuantizer.with_args(bits=8, scale=2 * step),
        bias=UniformQuantizer.with_args(bits=16, scale=step),
        threshold=UniformQuantizer.with_args(bits=16, signed=False, scale=step),
        tau=UniformDecay.with_args(bits=DECAY_BITS, param="tau"),
        alpha=UniformDecay.with_args(bits=DECAY_BITS, param="alpha"),
        state=StateQuantizer.with_args(bits=STATE_BITS, scale=step),
    )


def _state_grid() -> Grid:
    """The chip's state grid: units of 1/64, 24-bit (weights, thresholds and biases too)."""
    return StateQuantizer().grid()


def _decay_code(alpha, size: int, name: str) -> torch.Tensor:
    """``d = (1 - alpha) * 4096`` as integers, or a clear error."""
    if alpha is None:
        return torch.full((size,), 2**DECAY_BITS, dtype=torch.int64)
    leak = 1.0 - per_neuron(alpha, size, name)
    # The leak 1 - alpha on its 12-bit grid: d in 0..4096.
    grid = Grid(torch.tensor(2.0**-DECAY_BITS), torch.tensor(0), 0, 2**DECAY_BITS)
    return on_grid(leak, grid, f"{name} (as 1 - alpha)")


def export(model: nn.Module) -> Dict[str, Any]:
    """The trained ``model`` as Loihi CUBA layers (a spec for :func:`simulate`).

    ``model`` is ``Linear -> LIF`` repeated (an ``nn.Sequential``), quantized with
    :func:`qconfig`. Each ``LIF`` needs ``reset="zero"`` and ``max_spikes=1``, as
    lava-dl's CUBA neurons. Without ``tau_syn``, ``du = 4096`` (:math:`u = x`) and the
    ``Linear`` bias joins the neuron bias; the voltage decay ``dv`` is the model's, and
    the exported network spikes exactly as the model does (see the module docstring).

    With ``tau_syn``: aquatic's synaptic current decays the input in its arrival step,
    :math:`i[t] = R(i[t-1] + x[t])`, while Loihi adds the input after the decay,
    :math:`u[t] = R(u[t-1]) + W' x[t]` (:math:`R` the decay rounded toward zero). In
    real numbers the two agree for :math:`W' = \\alpha_s W`, which is what this export
    writes, so a ``LIF`` with ``tau_syn`` exports only if :math:`\\alpha_s W` lies on the
    weight grid. In integers they still differ by one state unit wherever the rounding
    toward zero of :math:`\\alpha_s u` alone and of :math:`\\alpha_s u + \\alpha_s W x`
    disagree (e.g. :math:`\\alpha_s = 3/4`, :math:`u = -1`, :math:`\\alpha_s W x = 3`:
    aquatic gets :math:`\\lfloor 2.25 \\rfloor = 2`, Loihi :math:`0 + 3 = 3`), and no
    export can remove that: Loihi's membrane sees :math:`u[t]`, so :math:`u[t]` must be
    aquatic's :math:`i[t] = R(i[t-1] + x[t])`, and Loihi can only form it as
    :math:`R(u[t-1]) + (\\text{integer weights}) \\cdot x[t]`; since :math:`R(a + b) \\ne
    R(a) + R'(b)` for a rounded decay, that needs :math:`\\alpha_s \\in \\{0, 1\\}`.
    (Keeping :math:`u` as aquatic's pre-decay sum :math:`i[t-1] + x[t]` makes the
    current exact, but then the membrane receives it undecayed.) So synaptic decays
    are exact for :math:`\\alpha_s = 1` (``du = 0``) and otherwise close, not exact.

    Returns:
        dict: ``{"layers": [...]}``, each with ``weight`` ``(Nout, Nin)`` (state units,
        even), ``current_decay``, ``voltage_decay``, ``threshold``, ``bias`` and ``name``.

    Raises:
        DoesNotFitError: a layer type Loihi lacks or a value off its grid (names the layer).
    """
    refuse_shared_layers(model, "Loihi export")
    layers = layer_sequence(model, "Loihi")
    require(
        len(layers) % 2 == 0,
        "Loihi takes (Linear -> LIF) pairs; got "
        + " -> ".join(f"{type(m).__name__} ({n})" for n, m in layers),
    )
    grid = _state_grid()
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
        require(
            neurons.reset == "zero",
            f"layer {lif_name!r}: Loihi resets the voltage to zero; use reset='zero'",
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
        weight = quantized_param(linear, "weight").detach().double()
        lin_bias = per_neuron(quantized_param(linear, "bias"), n_out, f"{lin_name}.bias")
        if neurons.alpha_syn is not None:
            weight = weight * per_neuron(neurons.alpha_syn, n_out, lif_name).unsqueeze(1)
            require(
                not bool(lin_bias.ne(0).any()),
                f"layer {lin_name!r} has a bias, which cannot enter Loihi's synaptic current exactly; use bias=False",
            )
        entry = {
            "name": lif_name,
            "weight": on_grid(
                weight,
                grid,
                f"{lin_name}.weight" + (" * alpha_syn" if neurons.alpha_syn is not None else ""),
            ),
            "current_decay": _decay_code(neurons.alpha_syn, n_out, f"{lif_name}.alpha_syn"),
            "voltage_decay": _decay_code(neurons.alpha_mem, n_out, f"{lif_name}.alpha_mem"),
            "threshold": on_grid(
                per_neuron(neurons.threshold, n_out, lif_name), grid, f"{lif_name}.threshold"
            ),
            "bias": on_grid(
                per_neuron(neurons.bias, n_out, lif_name) + lin_bias, grid, f"{lif_name}.bias"
            ),
        }
        spec.append(entry)
    try:
        check_spec({"layers": spec})
    except DoesNotFitError as error:
        raise DoesNotFitError(f"the model does not fit Loihi: {error}") from None
    return {"layers": spec}


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
