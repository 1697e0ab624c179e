"""Learned quantizers (LSQ, LSQ+, PACT) initialised from a calibration run.

A learned quantizer initialises itself from the first batch it sees (LSQ's
:math:`2\\,\\mathrm{mean}|x| / \\sqrt{Q_P}`; LSQ+'s min/max; PACT's given ``alpha``).
After a calibration run (:func:`aquatic.calibrate`) it starts instead from the range
with the least quantization error over every calibration batch, as LSQ+ recommends
(Bhalgat et al. 2020, section 3.3: initialise by minimising the MSE between the
quantized and the float values): :func:`calibration_observer` gives the observer that
watches the quantizer's input, :func:`initialize_from` sets the learned parameters
from it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from aquatic.observers import MSEObserver, RangeObserver
from aquatic.quantizers.learned import LSQPlusQuantizer, LSQQuantizer, PACTQuantizer

__all__ = ["calibration_observer", "initialize_from"]


def calibration_observer(quantizer: nn.Module) -> Optional[RangeObserver]:
    """A new observer for the inputs of a learned ``quantizer``; ``None`` for other quantizers.

    Example:
        >>> calibration_observer(LSQQuantizer(bits=4))
        MSEObserver(steps=100, quant_min=-8, quant_max=7, symmetric=True)
    """
    if isinstance(quantizer, LSQPlusQuantizer):
        symmetric = False
    elif isinstance(quantizer, LSQQuantizer):
        symmetric = True
    elif isinstance(quantizer, PACTQuantizer):
        # A symmetric unsigned range clips negatives to 0 and spans [0, max]: PACT's.
        return MSEObserver(quant_min=0, quant_max=quantizer.quant_max, symmetric=True)
    else:
        return None
    return MSEObserver(
        quant_min=quantizer.quant_min,
        quant_max=quantizer.quant_max,
        symmetric=symmetric,
        ch_axis=quantizer.ch_axis,
    )


@torch.no_grad()
def initialize_from(quantizer: nn.Module, observer: RangeObserver) -> None:
    """Set a learned quantizer's scale (zero point, ``alpha``) from ``observer``'s range.

    The parameter objects stay the same (their ``.data`` is replaced), so an optimizer
    built earlier still trains them.

    Example:
        >>> q, obs = LSQQuantizer(bits=4), MSEObserver(quant_min=-8, quant_max=7)
        >>> _ = obs(torch.tensor([-1.0, 0.5, 0.7]))
        >>> initialize_from(q, obs)
        >>> q.scale.data, q.initialized
        (tensor(0.1229), True)
    """
    scale, zero_point = observer.calculate_qparams()
    if isinstance(quantizer, PACTQuantizer):
        quantizer.alpha.data = (scale * quantizer.quant_max).to(quantizer.alpha)
        return
    if not isinstance(quantizer, LSQQuantizer):
        raise TypeError(
            f"initialize_from sets LSQ, LSQ+ and PACT quantizers, got {type(quantizer).__name__}"
        )
    quantizer.scale.data = scale.to(quantizer.scale.dtype).to(quantizer.scale.device)
    if isinstance(quantizer, LSQPlusQuantizer):
        quantizer.zero_point.data = zero_point.to(quantizer.zero_point)
    quantizer.initialized = True
