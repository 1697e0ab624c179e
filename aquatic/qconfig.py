"""QConfig: which parameters of a layer are quantized, and how; plus presets."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from torch import nn

from aquatic.observers import MovingAverageMinMaxObserver
from aquatic.quantizers.binary import BinaryQuantizer
from aquatic.quantizers.uniform import UniformQuantizer

__all__ = ["QConfig", "int8", "int4_weight", "binary_weight"]

Factory = Callable[[], nn.Module]


class _QConfigFields(NamedTuple):
    activation: Optional[Factory] = None
    weight: Optional[Factory] = None
    bias: Optional[Factory] = None
    tau: Optional[Factory] = None
    alpha: Optional[Factory] = None
    threshold: Optional[Factory] = None
    state: Optional[Factory] = None


def _check_factory(field: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, nn.Module):
        name = type(value).__name__
        raise TypeError(
            f"QConfig.{field} got a {name} instance, but each layer needs a quantizer of "
            f"its own: pass the class ({field}={name}) or a factory "
            f"({field}={name}.with_args(bits=8, ...)) instead"
        )
    if not callable(value):
        raise TypeError(
            f"QConfig.{field} must be a quantizer class or Quantizer.with_args(...) "
            f"factory, got {value!r}"
        )


class QConfig(_QConfigFields):
    """Which parameters of a layer are quantized, and with which quantizer.

    A ``typing.NamedTuple`` of quantizer *factories* (a quantizer class, or
    ``Quantizer.with_args(**kwargs)``); each layer calls a factory once per parameter
    it governs, so layers never share quantizer state by accident. ``None`` leaves
    that parameter in float.

    Attributes:
        activation: the layer's output. Spiking layers leave spikes alone (they are
            integers already) unless they return a membrane potential (``ExpLeak``).
        weight: weights, as in torch (recurrent weights of recurrent neurons too).
        bias: biases.
        tau: time constants in time steps (``tau_mem``, ``tau_syn``).
        alpha: decay factors per step, the retention multiplier
            :math:`\\alpha = e^{-1/\\tau}` (snnTorch's ``beta``).
        threshold: spike thresholds.
        state: neuron state (membrane potential, synaptic current) after each step.

    Raises:
        TypeError: for a quantizer instance or anything that is not callable.

    Example:
        >>> from aquatic.quantizers import UniformQuantizer
        >>> qconfig = QConfig(weight=UniformQuantizer.with_args(bits=4))
        >>> qconfig.weight
        UniformQuantizer.with_args(bits=4)
        >>> qconfig.activation is None
        True
        >>> QConfig(weight=UniformQuantizer())
        Traceback (most recent call last):
        ...
        TypeError: QConfig.weight got a UniformQuantizer instance, but each layer needs a quantizer of its own: pass the class (weight=UniformQuantizer) or a factory (weight=UniformQuantizer.with_args(bits=8, ...)) instead
    """

    __slots__ = ()

    def __new__(
        cls,
        activation: Optional[Factory] = None,
        weight: Optional[Factory] = None,
        bias: Optional[Factory] = None,
        tau: Optional[Factory] = None,
        alpha: Optional[Factory] = None,
        threshold: Optional[Factory] = None,
        state: Optional[Factory] = None,
    ) -> "QConfig":
        values = (activation, weight, bias, tau, alpha, threshold, state)
        for field, value in zip(cls._fields, values):
            _check_factory(field, value)
        return super().__new__(cls, *values)

    @classmethod
    def _make(cls, iterable):  # keeps _replace validating
        return cls(*iterable)

    def is_empty(self) -> bool:
        """True when every field is ``None`` (nothing is quantized)."""
        return all(value is None for value in self)


#: Per-tensor int8: symmetric signed weights, asymmetric unsigned activations
#: (moving-average range).
int8 = QConfig(
    activation=UniformQuantizer.with_args(
        bits=8,
        signed=False,
        symmetric=False,
        observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.01),
    ),
    weight=UniformQuantizer.with_args(bits=8, signed=True, symmetric=True),
)

#: 4-bit symmetric per-output-channel weights; activations left in float.
int4_weight = QConfig(
    weight=UniformQuantizer.with_args(
        bits=4, signed=True, symmetric=True, narrow_range=True, ch_axis=0
    ),
)

#: Binary weights ``{-1, +1}`` scaled by the mean absolute weight of each output
#: channel (XNOR-Net); activations left in float.
binary_weight = QConfig(weight=BinaryQuantizer.with_args(scale="mean", ch_axis=0))
