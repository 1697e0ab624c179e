"""Factories: a class with constructor arguments bound, as QConfig fields hold."""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Any, Dict, Mapping

__all__ = ["Factory"]


class Factory:
    """A class with some constructor arguments bound (``Cls.with_args(**kwargs)``).

    Calling the factory builds a new object (a quantizer, an observer), so every layer
    gets its own state; keyword arguments given in the call override the bound ones.
    Unknown argument names are rejected when the factory is made. The bound arguments
    (``kwargs``) are read-only, so that editing a preset cannot change every layer built
    from it later; derive a new factory with :meth:`with_args` instead.

    Example:
        >>> from aquatic.quantizers import UniformQuantizer
        >>> factory = UniformQuantizer.with_args(bits=4)
        >>> factory
        UniformQuantizer.with_args(bits=4)
        >>> factory() is factory()
        False
        >>> factory.kwargs["bits"] = 8
        Traceback (most recent call last):
        ...
        TypeError: 'mappingproxy' object does not support item assignment
        >>> factory.with_args(bits=8)
        UniformQuantizer.with_args(bits=8)
    """

    def __init__(self, cls: type, kwargs: Dict[str, Any]) -> None:
        try:
            inspect.signature(cls).bind_partial(**kwargs)
        except TypeError as error:
            raise TypeError(f"{cls.__name__}.with_args: {error}") from None
        self.cls = cls
        # A private copy: the caller's dict may change later, and ours is only ever
        # handed out read-only (see ``kwargs``).
        self._kwargs = dict(kwargs)

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The bound constructor arguments (a read-only view)."""
        return MappingProxyType(self._kwargs)

    def __call__(self, **overrides: Any) -> Any:
        return self.cls(**{**self.kwargs, **overrides})

    def with_args(self, **kwargs: Any) -> "Factory":
        """A factory with more (or overriding) arguments bound."""
        return Factory(self.cls, {**self.kwargs, **kwargs})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Factory):
            return NotImplemented
        return self.cls is other.cls and self._kwargs == other._kwargs

    def __hash__(self) -> int:
        return hash((self.cls, tuple(sorted(self.kwargs))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.cls.__name__}.with_args({args})"
