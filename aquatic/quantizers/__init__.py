"""Quantizer modules: ``forward`` fake-quantizes with a straight-through gradient."""

from aquatic.functional.grid import Grid
from aquatic.quantizers.base import Quantizer, integer_range
from aquatic.quantizers.bias import AccumulatorBiasQuantizer
from aquatic.quantizers.binary import BinaryQuantizer, TernaryQuantizer
from aquatic.quantizers.decay import BitShiftDecay, UniformDecay
from aquatic.quantizers.learned import LSQPlusQuantizer, LSQQuantizer, PACTQuantizer
from aquatic.quantizers.shared import (
    ScaleGroup,
    SharedScaleQuantizer,
    SharedStateQuantizer,
    link_shared_scales,
)
from aquatic.quantizers.uniform import FixedPointQuantizer, UniformQuantizer

__all__ = [
    "AccumulatorBiasQuantizer",
    "BinaryQuantizer",
    "BitShiftDecay",
    "FixedPointQuantizer",
    "Grid",
    "LSQPlusQuantizer",
    "LSQQuantizer",
    "PACTQuantizer",
    "Quantizer",
    "ScaleGroup",
    "SharedScaleQuantizer",
    "SharedStateQuantizer",
    "TernaryQuantizer",
    "UniformDecay",
    "UniformQuantizer",
    "integer_range",
    "link_shared_scales",
]
