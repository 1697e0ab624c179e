"""Candidates for a layer: a bit width (weights, per channel) or a QConfig, with a label."""

from __future__ import annotations

from typing import Any, List, Mapping, Tuple, Type

from aquatic.observers import MSEObserver, RangeObserver
from aquatic.qconfig import QConfig
from aquatic.quantizers.base import check_bits
from aquatic.quantizers.binary import BinaryQuantizer
from aquatic.quantizers.uniform import UniformQuantizer

__all__ = ["weight_qconfig", "candidate_list", "bits_of"]


def weight_qconfig(bits: int, observer: Type[RangeObserver] = MSEObserver) -> QConfig:
    """``bits``-bit symmetric weights, one scale per output channel, activations in float.

    The range comes from ``observer`` (by default the clip with the least squared
    error, :class:`~aquatic.observers.MSEObserver`, which matters most at low bits).
    One bit means binary weights :math:`\\pm s` with :math:`s` the mean magnitude of
    each output channel (:class:`~aquatic.quantizers.BinaryQuantizer`, XNOR-Net).

    Example:
        >>> weight_qconfig(4).weight
        UniformQuantizer.with_args(bits=4, signed=True, symmetric=True, narrow_range=True, ch_axis=0, observer=<class 'aquatic.observers.clipping.MSEObserver'>)
    """
    check_bits(bits, low=1)
    if bits == 1:
        return QConfig(weight=BinaryQuantizer.with_args(scale="mean", ch_axis=0))
    return QConfig(
        weight=UniformQuantizer.with_args(
            bits=bits,
            signed=True,
            symmetric=True,
            narrow_range=True,
            ch_axis=0,
            observer=observer,
        )
    )


def _one(value: Any, label: Any, who: str) -> Tuple[Any, QConfig]:
    if isinstance(value, QConfig):
        return label, value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{who}: unknown candidate {value!r}; a candidate is a bit width (an int, e.g. 4) "
            "or an aquatic.QConfig"
        )
    try:
        return (value if label is None else label), weight_qconfig(value)
    except ValueError:
        raise ValueError(
            f"{who}: unknown candidate {value!r}; bit widths run from 1 to 16"
        ) from None


def candidate_list(candidates: Any, who: str) -> List[Tuple[Any, QConfig]]:
    """``(label, QConfig)`` pairs from an int, a QConfig, a sequence or a mapping of them.

    A bit width is labelled by itself, a QConfig in a mapping by its key, one in a
    sequence by ``"qconfig<i>"``.
    """
    if isinstance(candidates, Mapping):
        pairs = [_one(value, key, who) for key, value in candidates.items()]
    elif isinstance(candidates, (int, QConfig)):
        pairs = [_one(candidates, None if not isinstance(candidates, QConfig) else "qconfig", who)]
    elif isinstance(candidates, (list, tuple)):
        pairs = [
            _one(value, f"qconfig{i}" if isinstance(value, QConfig) else None, who)
            for i, value in enumerate(candidates)
        ]
    else:
        raise TypeError(
            f"{who}: candidates must be a bit width, a QConfig, or a sequence or mapping of "
            f"them, got {type(candidates).__name__}"
        )
    if not pairs:
        raise ValueError(f"{who}: no candidates given; e.g. (2, 4, 8)")
    labels = [label for label, _ in pairs]
    if len(set(map(repr, labels))) != len(labels):
        raise ValueError(f"{who}: candidates repeat: {labels}")
    return pairs


def bits_of(qconfig: QConfig) -> int:
    """The weight bit width a QConfig gives (its weight quantizer's ``bits``)."""
    if qconfig.weight is None:
        raise ValueError(f"the QConfig {qconfig} does not quantize weights")
    return int(getattr(qconfig.weight(), "bits", 1))
