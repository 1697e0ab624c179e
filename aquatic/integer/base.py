"""What the integer modules share: the meaning of an integer tensor, and saving.

Every tensor that flows between two integer modules holds integer codes :math:`q` that
stand for the real values :math:`(q - z)\\, s` of the quantization-aware model, with a
scale :math:`s` and zero point :math:`z` per tensor or per channel. :class:`QSpec`
records that meaning (and the range of the codes) while :func:`aquatic.convert` walks
the model; the integer modules themselves only hold integer tensors, a few exact
multipliers and a small JSON-able configuration, so that a converted model saves
without pickled code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from aquatic.functional.integer import check_integer

__all__ = [
    "IntegerModule",
    "IntegerOverflowError",
    "QSpec",
    "KINDS",
    "INT32_MAX",
]

INT32_MAX = 2**31 - 1

#: ``kind`` name -> integer module class, for loading saved models.
KINDS: Dict[str, Type["IntegerModule"]] = {}


class IntegerOverflowError(ValueError):
    """An integer accumulator or state could exceed its range; the message names the layer."""


@dataclass
class QSpec:
    """The meaning of an integer tensor: real value ``(code - zero_point) * scale``.

    Attributes:
        scale: float64, a scalar or one per channel along ``axis``.
        zero_point: int64, a scalar or one per channel.
        axis: the channel axis counted from the end (``-1`` for features, ``-3`` for the
            channels of ``(N, C, H, W)``), ``None`` when per tensor.
        low, high: the smallest and largest code, or ``None`` where unbounded.
        notes: why integer values may differ from the quantization-aware model's so far.
    """

    scale: Tensor
    zero_point: Tensor
    axis: Optional[int] = None
    low: Optional[int] = None
    high: Optional[int] = None
    notes: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scale = torch.as_tensor(self.scale, dtype=torch.float64).detach().clone()
        self.zero_point = torch.as_tensor(self.zero_point, dtype=torch.int64).detach().clone()
        if self.scale.dim() == 0 and self.zero_point.dim() == 0:
            self.axis = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def bounded(self) -> bool:
        return self.low is not None and self.high is not None

    def magnitude(self) -> Optional[int]:
        """The largest ``|code - zero_point|``, or ``None`` when unbounded."""
        if not self.bounded:
            return None
        zp_low, zp_high = int(self.zero_point.min()), int(self.zero_point.max())
        return max(abs(self.low - zp_high), abs(self.high - zp_low), 0)

    def real_scale(self, channels: int) -> Tensor:
        """The scale as a ``(channels,)`` tensor (a per-tensor scale repeated)."""
        if self.scale.dim() == 0:
            return self.scale.expand(channels).clone()
        if self.scale.numel() != channels:
            raise ValueError(f"expected {channels} channel scales, got {self.scale.numel()}")
        return self.scale

    def header(self) -> Dict[str, Any]:
        """JSON-able description (scales and zero points as lists)."""
        return {
            "scale": self.scale.tolist(),
            "zero_point": self.zero_point.tolist(),
            "axis": self.axis,
            "low": self.low,
            "high": self.high,
        }

    @classmethod
    def from_header(cls, header: Dict[str, Any]) -> "QSpec":
        return cls(
            torch.tensor(header["scale"], dtype=torch.float64),
            torch.tensor(header["zero_point"], dtype=torch.int64),
            header["axis"],
            header["low"],
            header["high"],
        )


def output_dtype(low: Optional[int], high: Optional[int]) -> torch.dtype:
    """``int32`` when every value fits, else ``int64``."""
    if low is not None and high is not None and -INT32_MAX - 1 <= low and high <= INT32_MAX:
        return torch.int32
    return torch.int64


class IntegerModule(nn.Module):
    """Base class of the integer models: integer tensors in, integer tensors out.

    A subclass sets ``kind`` (its name in saved files), ``_config_keys`` (constructor
    arguments that are plain JSON values) and ``_tensor_keys`` (constructor arguments
    that are tensors, kept as buffers). Then :meth:`config` and :meth:`tensors` give
    everything its constructor needs, which is how :mod:`aquatic.integer.serialize`
    saves and rebuilds it.

    Attributes:
        name: the qualified name of the layer it was converted from.
        source: the class name of that layer.
        notes: why its output may differ from the quantization-aware layer's (empty
            when it is bit-exact).
    """

    kind: ClassVar[str] = ""
    _config_keys: ClassVar[Tuple[str, ...]] = ()
    _tensor_keys: ClassVar[Tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            KINDS[cls.kind] = cls

    def __init__(self, name: str = "", notes: Optional[List[str]] = None, source: str = "") -> None:
        super().__init__()
        self.name = name
        self.notes = list(notes or [])
        self.source = source

    def _set_tensors(self, values: Dict[str, Optional[Tensor]]) -> None:
        for key in self._tensor_keys:
            value = values.get(key)
            self.register_buffer(key, None if value is None else torch.as_tensor(value).clone())

    def config(self) -> Dict[str, Any]:
        """The constructor's JSON arguments (``name`` and ``notes`` included)."""
        result = {"name": self.name, "notes": list(self.notes), "source": self.source}
        for key in self._config_keys:
            result[key] = getattr(self, key)
        return result

    def tensors(self) -> Dict[str, Tensor]:
        """The constructor's tensor arguments (those that are not ``None``)."""
        return {
            key: getattr(self, key) for key in self._tensor_keys if getattr(self, key) is not None
        }

    def _where(self) -> str:
        return f"layer {self.name!r} ({self.source or type(self).__name__})"

    def _input_codes(self, input: Tensor) -> Tensor:
        """``input`` checked to be a tensor of integer codes, as ``int64``."""
        if not isinstance(input, Tensor):
            raise TypeError(f"{self._where()} takes a tensor of integer codes, got {input!r}")
        return check_integer(input, f"the input of {self._where()}").to(torch.int64)

    def check_saveable(self) -> None:
        """Raise a ``TypeError`` naming this layer if it has no saved form (no ``kind``)."""
        if not self.kind:
            raise TypeError(
                f"{self._where()} has no saved form of its own; convert the model as a "
                "graph (a model with a forward of its own, which aquatic.convert turns into "
                "an IntegerGraph whose steps save)"
            )

    def extra_repr(self) -> str:
        parts = [f"name={self.name!r}"] if self.name else []
        parts += [f"{key}={getattr(self, key)!r}" for key in self._config_keys]
        if self.notes:
            parts.append("exact=False")
        return ", ".join(parts)
