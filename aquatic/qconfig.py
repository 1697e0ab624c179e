"""QConfig: which parameters of a layer are quantized, and how; plus presets."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

from torch import nn

from aquatic.factory import Factory
from aquatic.observers import MovingAverageMinMaxObserver, RangeObserver
from aquatic.quantizers.base import Quantizer
from aquatic.quantizers.binary import BinaryQuantizer
from aquatic.quantizers.uniform import UniformQuantizer

__all__ = ["QConfig", "int8", "int4_weight", "binary_weight"]

#: What a QConfig field holds: a callable that builds a new quantizer on each call.
QuantizerFactory = Callable[[], nn.Module]


class _QConfigFields(NamedTuple):
    activation: Optional[QuantizerFactory] = None
    weight: Optional[QuantizerFactory] = None
    bias: Optional[QuantizerFactory] = None
    tau: Optional[QuantizerFactory] = None
    alpha: Optional[QuantizerFactory] = None
    threshold: Optional[QuantizerFactory] = None
    state: Optional[QuantizerFactory] = None


def _target_class(value: Any) -> Optional[type]:
    """The class a field value builds, where that is known without calling it."""
    if isinstance(value, type):
        return value
    if isinstance(value, Factory):
        return value.cls
    if isinstance(value, functools.partial) and isinstance(value.func, type):
        return value.func
    return None


def _not_a_quantizer(field: str, cls: type, value: Any) -> str:
    name = cls.__name__
    spelled = name if value is cls else repr(value)
    if issubclass(cls, RangeObserver):
        return (
            f"QConfig.{field} got the observer {spelled}, but a field needs a quantizer; an "
            f"observer goes inside one: {field}=UniformQuantizer.with_args(observer={name})"
        )
    return (
        f"QConfig.{field} got {spelled}, which does not build an aquatic quantizer "
        f"({cls.__module__}.{cls.__qualname__} is not a subclass of "
        "aquatic.quantizers.Quantizer); pass a quantizer class or factory, e.g. "
        f"{field}=UniformQuantizer.with_args(bits=8)"
    )


class _CheckedFactory:
    """A QConfig field given as a plain callable (a function, a lambda): what it builds
    can only be known when a layer calls it, so the result is checked then.

    Compares, hashes and prints as the callable it wraps (``__wrapped__``).
    """

    __slots__ = ("field", "__wrapped__")

    def __init__(self, field: str, factory: Callable[..., Any]) -> None:
        self.field = field
        self.__wrapped__ = factory

    def __call__(self, *args: Any, **kwargs: Any) -> Quantizer:
        result = self.__wrapped__(*args, **kwargs)
        if not isinstance(result, Quantizer):
            raise TypeError(
                f"QConfig.{self.field} is {self.__wrapped__!r}, which built a "
                f"{type(result).__name__}, not an aquatic quantizer "
                "(aquatic.quantizers.Quantizer); make it return a new quantizer, or pass a "
                f"quantizer class or factory, e.g. {self.field}=UniformQuantizer.with_args(bits=8)"
            )
        return result

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _CheckedFactory):
            other = other.__wrapped__
        return self.__wrapped__ == other

    def __hash__(self) -> int:
        return hash(self.__wrapped__)

    def __repr__(self) -> str:
        return repr(self.__wrapped__)


def _check_factory(field: str, value: Any) -> Any:
    """``value`` if it builds quantizers (wrapped in a check where that is only known when
    it is called), else raise a ``TypeError`` naming the field and the fix."""
    if value is None or isinstance(value, _CheckedFactory):
        return value
    if isinstance(value, nn.Module):
        name = type(value).__name__
        raise TypeError(
            f"QConfig.{field} got a {name} instance, but each layer needs a quantizer of "
            f"its own: pass the class ({field}={name}) or a factory "
            f"({field}={name}.with_args(bits=8, ...)) instead"
        )
    cls = _target_class(value)
    if cls is not None:
        if not issubclass(cls, Quantizer):
            raise TypeError(_not_a_quantizer(field, cls, value))
        return value
    if not callable(value):
        raise TypeError(
            f"QConfig.{field} must be a quantizer class or Quantizer.with_args(...) "
            f"factory, got {value!r}"
        )
    return _CheckedFactory(field, value)


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

    A field that is a class, or a factory of one (``Cls.with_args(...)``,
    ``functools.partial(Cls, ...)``), must build an aquatic quantizer
    (:class:`aquatic.quantizers.Quantizer`): that is checked here. Any other callable
    (a function, a lambda) is checked when a layer calls it.

    Raises:
        TypeError: for a quantizer instance, anything that is not callable, or a class
            (or factory of a class) that is not a quantizer, such as an observer class
            or ``nn.ReLU``. A callable field that returns something other than a
            quantizer raises a ``TypeError`` when the layer is constructed.

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
        >>> from aquatic.observers import MinMaxObserver
        >>> QConfig(activation=MinMaxObserver)
        Traceback (most recent call last):
        ...
        TypeError: QConfig.activation got the observer MinMaxObserver, but a field needs a quantizer; an observer goes inside one: activation=UniformQuantizer.with_args(observer=MinMaxObserver)
    """

    __slots__ = ()

    def __new__(
        cls,
        activation: Optional[QuantizerFactory] = None,
        weight: Optional[QuantizerFactory] = None,
        bias: Optional[QuantizerFactory] = None,
        tau: Optional[QuantizerFactory] = None,
        alpha: Optional[QuantizerFactory] = None,
        threshold: Optional[QuantizerFactory] = None,
        state: Optional[QuantizerFactory] = None,
    ) -> "QConfig":
        values = (activation, weight, bias, tau, alpha, threshold, state)
        checked = [_check_factory(field, value) for field, value in zip(cls._fields, values)]
        return super().__new__(cls, *checked)

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
