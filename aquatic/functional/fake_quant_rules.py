r"""How a per-tensor range merges a batch's extrema, as the compiled observer step
(:func:`aquatic.functional.jit_fake_quant.observe_scalar_at`) is told.

- :data:`MIN_MAX`: the running minimum and maximum
  (:class:`~aquatic.observers.MinMaxObserver`);
- :data:`AVERAGE`: the moving average :math:`m + c (x - m)`
  (:class:`~aquatic.observers.MovingAverageMinMaxObserver` with :math:`c < 1/2`);
- :data:`AVERAGE_FROM_BATCH`: its other form, :math:`x - (1 - c)(x - m)`, for
  :math:`c \ge 1/2` (so that :math:`c = 1` keeps exactly the batch's range).

Example:
    >>> MIN_MAX, AVERAGE, AVERAGE_FROM_BATCH
    (0, 1, 2)
"""

__all__ = ["MIN_MAX", "AVERAGE", "AVERAGE_FROM_BATCH"]

MIN_MAX = 0
AVERAGE = 1
AVERAGE_FROM_BATCH = 2
