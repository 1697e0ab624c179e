"""Post-training quantization: calibration, bias correction, sensitivity, mixed precision.

The road from a trained float model to one that fits a budget, in four calls::

    qmodel = aquatic.quantize(model, qconfig)
    aquatic.calibrate(qmodel, loader)                       # ranges from data, frozen
    table = aquatic.sensitivity(model, (2, 4, 8), loader)   # which layer suffers
    mapping = aquatic.mixed_precision(model, loader, budget=aquatic.ptq.WeightBytes(4096))
"""

from aquatic.ptq.learned_rounding import adaround
from aquatic.ptq.allocation import MixedPrecision, allocate, mixed_precision
from aquatic.ptq.bias_correction import correct_bias
from aquatic.ptq.budgets import BitOps, WeightBytes
from aquatic.ptq.calibration import calibrate
from aquatic.ptq.chip_budget import ChipBudget
from aquatic.ptq.candidates import weight_qconfig
from aquatic.ptq.layer_sensitivity import LayerRunner, sensitivity
from aquatic.ptq.records import SensitivityRecord, SensitivityTable
from aquatic.ptq.rounding_records import RoundingRecord, RoundingReport

__all__ = [
    "calibrate",
    "correct_bias",
    "adaround",
    "sensitivity",
    "mixed_precision",
    "allocate",
    "MixedPrecision",
    "WeightBytes",
    "BitOps",
    "ChipBudget",
    "weight_qconfig",
    "LayerRunner",
    "SensitivityRecord",
    "SensitivityTable",
    "RoundingRecord",
    "RoundingReport",
]
