"""Pure functions, no state: STE rounding, fake quantization, qparams."""

from aquatic.functional.fake_quant import (
    dequantize_affine,
    fake_quantize_affine,
    fake_quantize_learnable,
    grad_scale,
    int_dtype,
    quantize_affine,
)
from aquatic.functional.qparams import calculate_qparams, round_to_power_of_two
from aquatic.functional.rounding import ROUNDING_MODES, round_ste, sign_ste, straight_through

__all__ = [
    "ROUNDING_MODES",
    "calculate_qparams",
    "dequantize_affine",
    "fake_quantize_affine",
    "fake_quantize_learnable",
    "grad_scale",
    "int_dtype",
    "quantize_affine",
    "round_ste",
    "round_to_power_of_two",
    "sign_ste",
    "straight_through",
]
