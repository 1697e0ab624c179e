"""Mixed precision: a bit width per layer, under a budget, from the sensitivity table."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from aquatic.ptq.batches import check_model, take_batches
from aquatic.ptq.budgets import as_budget, costs, macs_per_sample
from aquatic.model import quantize
from aquatic.ptq.candidates import candidate_list, weight_qconfig
from aquatic.ptq.chip_budget import ChipBudget
from aquatic.ptq.layer_sensitivity import analysed, sensitivity
from aquatic.ptq.records import SensitivityTable
from aquatic.qconfig import QConfig

__all__ = ["mixed_precision", "MixedPrecision", "allocate", "EXACT_LIMIT"]


class MixedPrecision(Dict[str, QConfig]):
    """The ``{layer name: QConfig}`` mapping that :func:`aquatic.quantize` takes, plus
    what it was chosen from.

    Attributes:
        bits: ``{layer name: weight bits}``.
        cost: the total cost, in ``budget.unit``, at most ``budget.limit``.
        budget: the budget.
        table: the :class:`~aquatic.ptq.SensitivityTable` the choice was made from.
    """

    def __init__(self, qconfigs, bits, cost, budget, table) -> None:
        super().__init__(qconfigs)
        self.bits: Dict[str, int] = bits
        self.cost: int = cost
        self.budget = budget
        self.table: SensitivityTable = table

    def quantize(self, model: nn.Module) -> nn.Module:
        """A quantized copy of ``model`` with this mapping: :func:`aquatic.quantize`,
        or for a chip budget :meth:`aquatic.ptq.ChipBudget.quantize` (each population
        on the copy's shared scale)."""
        if isinstance(self.budget, ChipBudget):
            return self.budget.quantize(model, self)
        return quantize(model, self)

    def __repr__(self) -> str:
        return f"MixedPrecision(bits={self.bits}, cost={self.cost} of {self.budget})"


#: The largest budget, in units of the costs' greatest common divisor, solved exactly.
EXACT_LIMIT = 2_000_000


def allocate(
    change: Dict[str, Dict[int, float]], cost: Dict[str, Dict[int, int]], limit: int
) -> Dict[str, int]:
    """One candidate per layer, total cost at most ``limit``, least total change.

    The sum of the layers' changes is minimised exactly, as a multiple-choice knapsack
    solved by dynamic programming over the cost (in units of the greatest common
    divisor of all costs), when the budget is at most :data:`EXACT_LIMIT` such units;
    ties go to the cheaper allocation. Larger budgets (bit-operations run to billions)
    use a greedy rule: every layer at its cheapest candidate, then, while one fits, the
    upgrade with the largest drop in change per extra unit of cost.

    Raises:
        ValueError: even the cheapest allocation exceeds ``limit``.

    Example:
        >>> change = {"a": {2: 1.0, 8: 0.0}, "b": {2: 5.0, 8: 0.0}}
        >>> cost = {"a": {2: 2, 8: 8}, "b": {2: 2, 8: 8}}
        >>> allocate(change, cost, limit=10)
        {'a': 2, 'b': 8}
    """
    cheapest = {name: min(options, key=lambda b: (options[b], b)) for name, options in cost.items()}
    total = sum(cost[name][b] for name, b in cheapest.items())
    if total > limit:
        raise ValueError(
            f"the budget {limit} is below the smallest allocation, {total} (every layer at "
            f"its cheapest candidate: {cheapest}); raise the budget or add a smaller candidate"
        )
    unit = 0
    for options in cost.values():
        for c in options.values():
            unit = math.gcd(unit, c)
    if unit and limit // unit <= EXACT_LIMIT:
        return _exact(change, cost, limit, unit)
    return _greedy(change, cost, limit, cheapest)


def _exact(change, cost, limit: int, unit: int) -> Dict[str, int]:
    size = limit // unit + 1
    best = np.full(size, np.inf)
    best[0] = 0.0
    picks = []
    for name in cost:
        options = sorted(cost[name], key=lambda b: (cost[name][b], b))
        new = np.full(size, np.inf)
        pick = np.full(size, -1, dtype=np.int64)
        for k, b in enumerate(options):
            w = cost[name][b] // unit
            if w >= size:
                continue
            shifted = np.full(size, np.inf)
            shifted[w:] = best[: size - w] + change[name][b]
            better = shifted < new  # strict: the cheaper candidate keeps a tie
            new[better] = shifted[better]
            pick[better] = k
        picks.append((name, options, pick))
        best = new
    spent = int(np.argmin(best))  # the first minimum: the cheapest among equals
    choice: Dict[str, int] = {}
    for name, options, pick in reversed(picks):
        b = options[int(pick[spent])]
        choice[name] = b
        spent -= cost[name][b] // unit
    return {name: choice[name] for name in cost}


def _greedy(change, cost, limit: int, cheapest: Dict[str, int]) -> Dict[str, int]:
    choice = dict(cheapest)
    total = sum(cost[name][b] for name, b in choice.items())
    while True:
        best: Optional[Tuple[float, str, int]] = None
        for name, current in choice.items():
            for b, c in sorted(cost[name].items(), key=lambda item: (item[1], item[0])):
                extra = c - cost[name][current]
                gain = change[name][current] - change[name][b]
                if extra <= 0 or gain <= 0 or total + extra > limit:
                    continue
                if best is None or gain / extra > best[0]:
                    best = (gain / extra, name, b)
        if best is None:
            return choice
        _, name, b = best
        total += cost[name][b] - cost[name][choice[name]]
        choice[name] = b


def mixed_precision(
    model: nn.Module,
    data: Iterable[Any],
    budget: Any,
    candidates: Sequence[int] = (2, 4, 8),
    metric: Optional[Callable[..., Any]] = None,
    qconfig_for: Callable[[int], QConfig] = weight_qconfig,
    num_batches: Optional[int] = None,
    progress: bool = True,
    rounding: str = "nearest",
    rounding_iters: int = 1000,
    bias_correction: bool = False,
) -> MixedPrecision:
    """A weight bit width per layer that fits ``budget`` and loses the least.

    1. :func:`aquatic.sensitivity` measures, for each layer and candidate bit width,
       the damage of quantizing that layer alone (``qconfig_for(bits)``).
    2. :func:`allocate` picks one candidate per layer minimising the sum of the
       layers' damages under the budget: the integer program over the sensitivity
       table (a multiple-choice knapsack), solved exactly by dynamic programming over
       the cost.

    Why this method: summing per-layer damages is the first-order model of the total
    (HAWQ's and AIMET's too); given that model, the exact optimum costs a fraction of
    a second for byte budgets, where a greedy rule "best damage per byte first" can
    be trapped (it spends on cheap upgrades and then cannot afford the one that
    matters). No Hessian estimate (HAWQ's Hutchinson trace) is needed, since the table
    measures each layer's damage directly at each bit width, on the user's data and
    metric. The answer is deterministic: the same model and data give the same answer
    (no random seed is involved). Budgets too large for the dynamic program (bit-
    operations, billions of units) fall back to the greedy rule.

    The result is never over the budget: every step checks the exact cost.

    With a hardware profile as the budget (``budget=aquatic.hw.xylo``, ``dynapcnn``,
    ``loihi``, or their ``budget(...)`` with export options), the candidates must be
    widths the chip holds, the network is checked by the chip's export before the
    analysis (a network that cannot fit is named, with the export's message), the
    sensitivity uses the chip's weight quantizer, each synapse layer gets its
    population's QConfig, and the result is quantized, calibrated on ``data`` and
    exported once more, so it deploys; see :class:`aquatic.ptq.ChipBudget`. Quantize
    with :meth:`MixedPrecision.quantize <aquatic.ptq.MixedPrecision.quantize>`.

    Args:
        model: the trained float model (left unchanged).
        data: calibration batches, as for :func:`aquatic.calibrate`.
        budget: weight bytes (an int, or :class:`aquatic.ptq.WeightBytes`),
            bit-operations per sample (:class:`aquatic.ptq.BitOps`), or a hardware
            profile (a module of :mod:`aquatic.hw`, or a :class:`aquatic.ptq.ChipBudget`).
        candidates: the weight bit widths to choose from (ints, 1 to 16; 1 is binary).
        metric: as for :func:`aquatic.sensitivity` (``None``: output MSE).
        qconfig_for: the QConfig of a bit width (default
            :func:`aquatic.ptq.weight_qconfig`: symmetric per-channel weights with
            MSE-optimal ranges); give one that also quantizes activations for a fully
            quantized model. Not with a chip budget (its own quantizer is measured).
        num_batches, progress: as for :func:`aquatic.sensitivity`.
        rounding, rounding_iters: how the sensitivity analysis rounds each quantized
            layer's weights, as for :func:`aquatic.calibrate`: with ``"adaround"`` the
            allocation is judged after learned rounding (then calibrate the result with
            ``rounding="adaround"`` too).
        bias_correction: judge each layer and width after bias correction, for a
            result calibrated with ``bias_correction=True`` (as for
            :func:`aquatic.sensitivity`).

    Returns:
        A :class:`~aquatic.ptq.MixedPrecision`: ``{layer name: QConfig}`` for
        :func:`aquatic.quantize`, with ``.bits``, ``.cost`` and ``.table``.

    Raises:
        ValueError: no batches; an unknown candidate, or one the chip cannot hold;
            ``qconfig_for`` given with a chip budget;
            the budget is below the cost of every layer at its cheapest candidate; a
            network that does not fit the chip (:class:`aquatic.hw.DoesNotFitError`, a
            ``ValueError``, naming the layer and the limit).
        TypeError: a candidate is not a bit width; a budget of another kind.

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> torch.manual_seed(0); model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        <torch._C.Generator object at ...>
        >>> mapping = aquatic.mixed_precision(model, [torch.randn(32, 16)], budget=200, progress=False)
        >>> mapping.bits, mapping.cost
        ({'0': 4, '2': 8}, 192)
    """
    check_model(model, "mixed_precision")
    budget = as_budget(budget)
    if isinstance(candidates, (int, QConfig)) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in candidates
    ):
        raise TypeError(
            f"mixed_precision: candidates must be bit widths (ints, e.g. (2, 4, 8)), got "
            f"{candidates!r}; for other QConfigs use aquatic.sensitivity"
        )
    pairs = candidate_list(list(candidates), "mixed_precision")
    bits = [label for label, _ in pairs]
    batches = take_batches(data, num_batches, "mixed_precision")
    chip = isinstance(budget, ChipBudget)
    if chip:
        if qconfig_for is not weight_qconfig:
            raise ValueError(
                f"mixed_precision: qconfig_for cannot be combined with a chip budget "
                f"({budget!r}): the chip's own weight quantizer is measured; leave "
                "qconfig_for at its default"
            )
        budget.check_candidates(bits)
        qconfig_for = budget.weight_qconfig
        # Whether the network fits at all, before the analysis: the chip's own check.
        budget.verify(model, budget.mapping(model, _synapses(model, max(bits))), batches[:1])
    labelled = {b: qconfig_for(b) for b in bits}
    table = sensitivity(
        model,
        labelled,
        batches,
        metric,
        progress=progress,
        rounding=rounding,
        rounding_iters=rounding_iters,
        bias_correction=bias_correction,
    )
    layers = [(name, dict(model.named_modules())[name]) for name in table.as_dict()]
    cost = costs(budget, layers, bits, _macs(model, layers, batches))
    limit = budget.limit
    if limit is None:  # a chip: every held candidate costs one word per weight
        limit = sum(max(options.values()) for options in cost.values())
    choice = allocate(table.as_dict(), cost, limit)
    total = sum(cost[name][b] for name, b in choice.items())
    if chip:
        # The chip stores one word per weight whatever its width: among candidates that
        # lose no more, the widest costs nothing extra.
        change = table.as_dict()
        choice = {
            name: max(b for b in bits if change[name][b] <= change[name][width])
            for name, width in choice.items()
        }
        qconfigs = budget.mapping(model, choice)
        budget.verify(model, qconfigs, batches)
    else:
        qconfigs = {name: labelled[b] for name, b in choice.items()}
    return MixedPrecision(qconfigs, choice, total, budget, table)


def _synapses(model: nn.Module, bits: int) -> Dict[str, int]:
    """``{layer: bits}`` for every layer that sensitivity analyses (a Linear, a conv)."""
    return {name: bits for name, module in model.named_modules() if analysed(module)}


def _macs(model: nn.Module, layers: List[Tuple[str, nn.Module]], batches: List[Any]):
    """Multiply-accumulates per sample of each layer, from one batch."""
    from_batch: Dict[str, int] = {}
    handles = []
    for name, layer in layers:

        def hook(module, args, output, name=name):
            from_batch.setdefault(name, macs_per_sample(module, args[0], output))

        handles.append(layer.register_forward_hook(hook))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            first = batches[0]
            first = first[0] if isinstance(first, (tuple, list)) else first
            device = next(iter(model.parameters())).device
            model(first.to(device))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode
    return from_batch
