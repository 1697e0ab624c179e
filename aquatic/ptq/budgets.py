"""Budgets for mixed precision: weight bytes, or bit-operations."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Dict, List, Tuple

from torch import Tensor, nn

from aquatic.ptq.chip_budget import ChipBudget

__all__ = ["WeightBytes", "BitOps", "as_budget", "macs_per_sample", "costs"]


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


class WeightBytes:
    """At most ``limit`` bytes of weights: layer ``l`` at ``b`` bits costs
    :math:`\\lceil n_l \\cdot b / 8 \\rceil` bytes (its ``n_l`` weights packed densely).

    Biases, scales and zero points are not counted (they stay a few bytes per channel).

    Example:
        >>> WeightBytes(1000).cost(nn.Linear(10, 10), bits=3, macs=100)
        38
    """

    unit = "bytes"

    def __init__(self, limit: int) -> None:
        self.limit = _positive_int(limit, "the weight-byte budget")

    def cost(self, layer: nn.Module, bits: int, macs: int) -> int:
        """What ``layer`` with ``bits``-bit weights costs."""
        return math.ceil(layer.weight.numel() * bits / 8)

    def __repr__(self) -> str:
        return f"WeightBytes({self.limit})"


class BitOps:
    """At most ``limit`` bit-operations per sample: layer ``l`` costs
    :math:`\\mathrm{MACs}_l \\cdot b_w \\cdot b_a` (as HAWQ-V3 counts them, Yao et al.
    2021), with ``b_a = activation_bits`` for every layer.

    Example:
        >>> BitOps(10**6).cost(nn.Linear(10, 10), bits=4, macs=100)
        3200
    """

    unit = "bit-operations"

    def __init__(self, limit: int, activation_bits: int = 8) -> None:
        self.limit = _positive_int(limit, "the bit-operation budget")
        self.activation_bits = _positive_int(activation_bits, "activation_bits")

    def cost(self, layer: nn.Module, bits: int, macs: int) -> int:
        """What ``layer`` with ``bits``-bit weights costs, for ``macs`` per sample."""
        return macs * bits * self.activation_bits

    def __repr__(self) -> str:
        return f"BitOps({self.limit}, activation_bits={self.activation_bits})"


def as_budget(budget: Any) -> Any:
    """A :class:`WeightBytes` for an int; a hardware profile module (one with a
    ``budget()``, e.g. ``aquatic.hw.xylo``) as its default
    :class:`~aquatic.ptq.ChipBudget`; a budget object as it is; else a TypeError."""
    if isinstance(budget, ModuleType) and callable(getattr(budget, "budget", None)):
        budget = budget.budget()
    if isinstance(budget, (WeightBytes, BitOps, ChipBudget)):
        return budget
    if isinstance(budget, int) and not isinstance(budget, bool):
        return WeightBytes(budget)
    raise TypeError(
        f"budget must be a number of weight bytes (an int), aquatic.ptq.WeightBytes(n), "
        f"aquatic.ptq.BitOps(n) or a hardware profile (aquatic.hw.xylo, dynapcnn, loihi, "
        f"or their budget(...)), got {budget!r}"
    )


def macs_per_sample(layer: nn.Module, input: Tensor, output: Tensor) -> int:
    """Multiply-accumulates of ``layer`` per sample (the first axis is the batch)."""
    batch = max(input.shape[0], 1) if input.dim() > 1 else 1
    weight = layer.weight
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # Every input value meets C_out / groups kernels.
        return input.numel() // batch * (weight.numel() // weight.shape[0])
    # Linear and convolutions: every output value is a dot product over weight[c].
    return output.numel() // batch * (weight.numel() // weight.shape[0])


def costs(budget: Any, layers: List[Tuple[str, nn.Module]], bits: List[int], macs: Dict[str, int]):
    """``{layer: {bits: cost}}`` under ``budget``."""
    return {name: {b: budget.cost(layer, b, macs[name]) for b in bits} for name, layer in layers}
