"""aquatic: quantization-aware training for conventional and spiking networks."""

from aquatic import functional, graph, hw, integer, interop, nn, observers, ptq, quantizers
from aquatic.fold import fold_batch_norm
from aquatic.integer import convert
from aquatic.model import dequantize, quantize, quantize_parameter
from aquatic.ptq import calibrate, mixed_precision, sensitivity
from aquatic.qconfig import QConfig
from aquatic.switches import (
    disable_fake_quant,
    enable_fake_quant,
    enable_observers,
    freeze_observers,
    trust_weight_versions,
)

__version__ = "0.1.0"

__all__ = [
    "QConfig",
    "__version__",
    "calibrate",
    "convert",
    "dequantize",
    "fold_batch_norm",
    "disable_fake_quant",
    "enable_fake_quant",
    "enable_observers",
    "freeze_observers",
    "functional",
    "graph",
    "hw",
    "integer",
    "interop",
    "mixed_precision",
    "nn",
    "observers",
    "ptq",
    "quantize",
    "quantize_parameter",
    "quantizers",
    "trust_weight_versions",
    "sensitivity",
]
