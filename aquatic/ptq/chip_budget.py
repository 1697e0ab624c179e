"""A chip as a mixed-precision budget: the candidates it stores, its QConfigs, its checks.

The hardware profiles (:mod:`aquatic.hw`) build a :class:`ChipBudget` with their own
export as the check (``aquatic.hw.xylo.budget()``, ``dynapcnn.budget()``,
``loihi.budget()``); this module knows no chip, so the profiles can sit above it.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Iterable, List, Optional

from torch import nn

from aquatic.model import quantize
from aquatic.nn.neuron_base import NeuronModule
from aquatic.ptq.calibration import calibrate
from aquatic.ptq.layer_sensitivity import analysed
from aquatic.qconfig import QConfig
from aquatic.quantizers.shared import ScaleGroup

__all__ = ["ChipBudget"]


class ChipBudget:
    """A chip's limits as the budget of :func:`aquatic.mixed_precision`.

    A chip stores every weight in a word of ``word_bits`` bits, whatever its width, so
    a narrower weight saves no memory there: what the chip limits is which bit widths
    it can hold (``min_bits`` .. ``max_bits``, on its grids) and which networks it can
    hold at all (layer types, sizes, ranges), which its export checks. With a chip
    budget, :func:`aquatic.mixed_precision`

    1. refuses candidates the chip cannot hold (naming them) before any work;
    2. quantizes the model at the widest candidate and runs ``check`` (the chip's
       export) on it, so a network that cannot fit is named before the sensitivity
       analysis, with the export's message;
    3. measures sensitivity with the chip's weight quantizer (``weight_qconfig``);
    4. gives each synapse layer (``Linear``, convolution) the QConfig of the spiking
       layer that follows it (its population: the same shared scale), with the chosen
       weight bits, and
    5. quantizes, calibrates and checks the result once more, so the answer deploys.

    The cost of a layer is its weights in the chip's words (``ceil(n * word_bits /
    8)`` bytes, the same for every candidate); the limit is the sum of them, so the
    allocation takes, for each layer, the candidate that loses least (the narrowest
    among equals). The model's spiking layers must already carry the chip's QConfig
    (``qconfig=aquatic.hw.xylo.qconfig()`` and so on, as the chip's workflow builds
    them); its synapse layers are the float layers to choose bits for: ``torch.nn``
    layers, or aquatic twins built without a QConfig, as a spiking convolutional
    network on ``(N, T, C, H, W)`` holds them (``aquatic.nn.Conv2d(..., qconfig=None)``
    runs each time step; :func:`aquatic.model.in_float`). A synapse layer already
    quantized keeps its QConfig and is not analysed.

    Because a population's QConfig holds its :class:`~aquatic.quantizers.ScaleGroup`,
    quantize with :meth:`quantize` (or :meth:`aquatic.ptq.MixedPrecision.quantize`),
    which gives the copy's synapse layers the copy's groups; ``aquatic.quantize(model,
    mapping)`` would join them to the original model's groups.

    Args:
        chip: the chip's name, for messages.
        check: ``check(quantized_model)`` raises (e.g.
            :class:`~aquatic.hw.DoesNotFitError`) where the model does not fit;
            typically the chip's ``export``.
        weight_qconfig: the QConfig of ``bits``-bit weights as the chip quantizes them,
            for the sensitivity analysis (the synapse layer alone).
        min_bits, max_bits: the weight widths the chip holds.
        word_bits: the bits one weight occupies in the chip's memory.

    Example:
        >>> from aquatic.hw import loihi
        >>> budget = loihi.budget()
        >>> budget.max_bits, budget.cost(nn.Linear(10, 10), bits=4, macs=100)
        (8, 100)
        >>> budget.check_candidates([2, 16])
        Traceback (most recent call last):
        ...
        ValueError: Loihi holds weights of 2 to 8 bits; candidate 16 cannot deploy on it: use candidates within 2..8, e.g. (2, 4, 8)
    """

    unit = "bytes"
    #: No limit of its own: every allocation of held candidates costs the same.
    limit: Optional[int] = None

    def __init__(
        self,
        chip: str,
        check: Callable[[nn.Module], Any],
        weight_qconfig: Callable[[int], QConfig],
        min_bits: int = 2,
        max_bits: int = 8,
        word_bits: int = 8,
    ) -> None:
        if not callable(check) or not callable(weight_qconfig):
            raise TypeError("ChipBudget: check and weight_qconfig must be callables")
        if not 1 <= min_bits <= max_bits <= word_bits:
            raise ValueError(
                f"ChipBudget: need 1 <= min_bits <= max_bits <= word_bits, got {min_bits}, "
                f"{max_bits}, {word_bits}"
            )
        self.chip = chip
        self.check = check
        self.weight_qconfig = weight_qconfig
        self.min_bits, self.max_bits, self.word_bits = min_bits, max_bits, word_bits

    def cost(self, layer: nn.Module, bits: int, macs: int) -> int:
        """The bytes ``layer``'s weights occupy on the chip (any ``bits``: one word each)."""
        return math.ceil(layer.weight.numel() * self.word_bits / 8)

    def check_candidates(self, bits: Iterable[int]) -> None:
        """Raise a ValueError naming the candidates the chip cannot hold."""
        bad = [b for b in bits if not self.min_bits <= b <= self.max_bits]
        if bad:
            raise ValueError(
                f"{self.chip} holds weights of {self.min_bits} to {self.max_bits} bits; "
                f"candidate{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} cannot "
                f"deploy on it: use candidates within {self.min_bits}..{self.max_bits}, "
                "e.g. (2, 4, 8)"
            )

    def mapping(self, model: nn.Module, bits: Dict[str, int]) -> Dict[str, QConfig]:
        """``{synapse layer: its population's QConfig with bits[layer]-bit weights}``.

        Raises:
            ValueError: a synapse layer with no spiking layer after it, or one whose
                spiking layer carries no QConfig with weights.
        """
        neurons = _following_neurons(model)
        result: Dict[str, QConfig] = {}
        for name, width in bits.items():
            neuron = neurons.get(name)
            if neuron is None:
                raise ValueError(
                    f"layer {name!r} is not followed by a spiking layer; on {self.chip} every "
                    "synapse layer feeds a population of neurons"
                )
            own = getattr(neuron[1], "qconfig", None)
            if own is None or own.weight is None:
                raise ValueError(
                    f"layer {neuron[0]!r} ({type(neuron[1]).__name__}) carries no QConfig "
                    f"with weights; build {self.chip}'s neurons with the chip's qconfig() "
                    f"(e.g. aquatic.hw.{self.chip.lower().replace('-', '')}.qconfig())"
                )
            result[name] = own._replace(weight=own.weight.with_args(bits=width))
        return result

    def quantize(self, model: nn.Module, mapping: Dict[str, QConfig]) -> nn.Module:
        """A quantized copy of ``model``, each population on the copy's shared scale."""
        memo: Dict[int, Any] = {}
        copied = copy.deepcopy(model, memo)
        moved = {name: _regroup(qconfig, memo) for name, qconfig in mapping.items()}
        return quantize(copied, moved, inplace=True)

    def verify(
        self, model: nn.Module, mapping: Dict[str, QConfig], batches: List[Any]
    ) -> nn.Module:
        """Quantize, calibrate on ``batches`` and run the chip's check; the model."""
        quantized = calibrate(self.quantize(model, mapping), batches, progress=False)
        self.check(quantized)
        return quantized

    def __repr__(self) -> str:
        return f"ChipBudget({self.chip}, weights {self.min_bits}..{self.max_bits} bits)"


def _following_neurons(model: nn.Module) -> Dict[str, Any]:
    """``{synapse layer name: (name, spiking layer)}``: the next spiking layer after it
    in the model's module order, with no synapse layer between."""
    result: Dict[str, Any] = {}
    pending: List[str] = []
    for name, module in model.named_modules():
        if analysed(module):
            pending = [name]
        elif isinstance(module, NeuronModule):
            for synapse in pending:
                result[synapse] = (name, module)
            pending = []
    return result


def _regroup(qconfig: QConfig, memo: Dict[int, Any]) -> QConfig:
    """``qconfig`` with every ScaleGroup argument replaced by its copy in ``memo``."""
    changed = {}
    for field in qconfig._fields:
        factory = getattr(qconfig, field)
        group = getattr(factory, "kwargs", {}).get("group")
        if isinstance(group, ScaleGroup) and id(group) in memo:
            changed[field] = factory.with_args(group=memo[id(group)])
    return qconfig._replace(**changed)
