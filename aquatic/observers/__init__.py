"""Range observers: the range of the tensors that pass through, kept in buffers.

An observer's ``forward`` returns its input unchanged and updates ``min_val`` and
``max_val`` (buffers, so they follow ``.to()`` and live in the ``state_dict``);
:meth:`~RangeObserver.calculate_qparams` turns the range into a scale and zero point.

- :class:`MinMaxObserver`, :class:`MovingAverageMinMaxObserver`: the extrema.
- :class:`PercentileObserver`, :class:`MSEObserver`: a clipped range per batch
  (a percentile; the clip with the least quantization error), averaged over batches.
- :class:`HistogramObserver`: a histogram over all batches, clipped where the
  Kullback-Leibler divergence to its quantized version is least (TensorRT's entropy
  calibration).

Each is a QConfig observer for activations and weights, per tensor or per channel:
``UniformQuantizer.with_args(observer=MSEObserver.with_args(steps=50))``.
"""

from aquatic.observers.clipping import ClippingObserver, MSEObserver, PercentileObserver
from aquatic.observers.histogram import HistogramObserver
from aquatic.observers.range import MinMaxObserver, MovingAverageMinMaxObserver, RangeObserver

__all__ = [
    "RangeObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "ClippingObserver",
    "PercentileObserver",
    "MSEObserver",
    "HistogramObserver",
]
