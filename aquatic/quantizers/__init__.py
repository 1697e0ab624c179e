"""Quantizer modules: ``forward`` fake-quantizes with a straight-through gradient."""

from aquatic.quantizers.base import Quantizer, integer_range
from aquatic.quantizers.binary import BinaryQuantizer, TernaryQuantizer
from aquatic.quantizers.uniform import FixedPointQuantizer, UniformQuantizer

__all__ = [
    "BinaryQuantizer",
    "FixedPointQuantizer",
    "Quantizer",
    "TernaryQuantizer",
    "UniformQuantizer",
    "integer_range",
]
