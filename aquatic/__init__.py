"""aquatic: quantization-aware training for conventional and spiking networks."""

from aquatic import functional, observers, quantizers
from aquatic import hw
from aquatic import nn
from aquatic import interop
from aquatic.convert import dequantize, quantize, quantize_parameter
from aquatic import integer

# aquatic.convert is the function (the submodule of the same name stays importable
# as aquatic.convert in sys.modules, and from it quantize and friends).
from aquatic.integer import convert
from aquatic.fold import fold_batch_norm
from aquatic.qconfig import QConfig
from aquatic.switches import (
    disable_fake_quant,
    enable_fake_quant,
    enable_observers,
    freeze_observers,
)

__version__ = "0.1.0"

__all__ = [
    "QConfig",
    "__version__",
    "convert",
    "dequantize",
    "fold_batch_norm",
    "disable_fake_quant",
    "enable_fake_quant",
    "enable_observers",
    "freeze_observers",
    "functional",
    "hw",
    "integer",
    "interop",
    "nn",
    "observers",
    "quantize",
    "quantize_parameter",
    "quantizers",
]
