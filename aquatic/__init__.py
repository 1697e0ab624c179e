"""aquatic: quantization-aware training for conventional and spiking networks."""

from aquatic import functional, observers, quantizers
from aquatic import hw
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
    "disable_fake_quant",
    "enable_fake_quant",
    "enable_observers",
    "freeze_observers",
    "functional",
    "hw",
    "observers",
    "quantizers",
]
