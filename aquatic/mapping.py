"""Which QConfig each module of a model gets: one for all, or a mapping by type, name or
regular expression, the most specific key winning (see :func:`aquatic.quantize`)."""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

from torch import nn

from aquatic.qconfig import QConfig

__all__ = ["QConfigLike", "QConfigResolver"]

Key = Union[str, Type[nn.Module]]
#: What :func:`aquatic.quantize` takes as ``qconfig``.
QConfigLike = Union[QConfig, Mapping[Key, Optional[QConfig]]]


class QConfigResolver:
    """Picks the QConfig of each module from a mapping; remembers which keys matched.

    Args:
        qconfig: one QConfig for every module, or a mapping from module types, qualified
            names or regular expressions over names to a QConfig or ``None``.
        names, modules: the model's ``named_modules()``, split.
        twins: the torch types that have an aquatic twin (type keys must cover one).

    Raises:
        TypeError: ``qconfig`` or a key or value has the wrong type, or a type key has
            no aquatic twin.
        ValueError: a string key is neither a module name nor a regular expression.
    """

    def __init__(
        self,
        qconfig: QConfigLike,
        names: List[str],
        modules: List[nn.Module],
        twins: Iterable[type],
    ) -> None:
        twins = tuple(twins)
        self.single: Optional[QConfig] = None
        self.names: Dict[str, Optional[QConfig]] = {}
        self.patterns: List[Tuple["re.Pattern[str]", Optional[QConfig]]] = []
        self.types: List[Tuple[type, Optional[QConfig]]] = []
        self.unmatched: List[str] = []
        if isinstance(qconfig, QConfig):
            self.single = qconfig
            return
        if not isinstance(qconfig, Mapping):
            raise TypeError(
                f"qconfig must be an aquatic.QConfig or a mapping from module types, names "
                f"or regular expressions to QConfig (or None), got {type(qconfig).__name__}; "
                "e.g. aquatic.quantize(model, aquatic.qconfig.int8) or "
                "aquatic.quantize(model, {nn.Linear: aquatic.qconfig.int8, 'head': None})"
            )
        known = set(names)
        for key, value in qconfig.items():
            if value is not None and not isinstance(value, QConfig):
                raise TypeError(
                    f"qconfig[{key!r}] must be an aquatic.QConfig or None (to leave the "
                    f"module in float), got {type(value).__name__}"
                )
            if isinstance(key, type) and issubclass(key, nn.Module):
                if not any(issubclass(twin, key) for twin in twins):
                    supported = ", ".join(f"nn.{twin.__name__}" for twin in twins)
                    raise TypeError(
                        f"qconfig key {key.__module__}.{key.__qualname__} has no aquatic twin "
                        f"(supported: {supported}); quantize its parameters with "
                        "aquatic.quantize_parameter(module, name, quantizer) instead"
                    )
                self.types.append((key, value))
                matched = any(isinstance(module, key) for module in modules)
            elif isinstance(key, str) and key in known:
                self.names[key] = value
                matched = True
            elif isinstance(key, str):
                try:
                    pattern = re.compile(key)
                except re.error as error:
                    raise ValueError(
                        f"qconfig key {key!r} is neither the name of a module in this model "
                        f"nor a valid regular expression ({error})"
                    ) from None
                self.patterns.append((pattern, value))
                matched = any(pattern.fullmatch(name) for name in names)
            else:
                raise TypeError(
                    f"qconfig keys must be nn.Module types or strings (qualified names or "
                    f"regular expressions), got {key!r}"
                )
            if not matched:
                self.unmatched.append(key.__name__ if isinstance(key, type) else repr(key))

    def names_explicitly(self, name: str) -> bool:
        """Whether a name or regular-expression key covers the module at ``name``."""
        if self.single is not None:
            return False
        parts = name.split(".") if name else []
        if any(".".join(parts[:depth]) in self.names for depth in range(len(parts), -1, -1)):
            return True
        return any(pattern.fullmatch(name) for pattern, _ in self.patterns)

    def resolve(self, name: str, module: nn.Module) -> Optional[QConfig]:
        """The QConfig for ``module`` at ``name``: the most specific key wins.

        Order: the module's own name, then the nearest enclosing module's name, then the
        first regular expression (in mapping order) matching the whole name, then the
        nearest class in the module's class hierarchy among the type keys.
        """
        if self.single is not None:
            return self.single
        parts = name.split(".") if name else []
        for depth in range(len(parts), -1, -1):
            prefix = ".".join(parts[:depth])
            if prefix in self.names:
                return self.names[prefix]
        for pattern, value in self.patterns:
            if pattern.fullmatch(name):
                return value
        key = self.nearest_type(module)
        return None if key is None else dict(self.types)[key]

    def nearest_type(self, module: nn.Module) -> Optional[type]:
        """The type key nearest to ``module``'s class in its class hierarchy, or ``None``
        where no type key covers it (``module``'s QConfig is then
        ``resolve(name, module)`` only if no name or regular expression decides it)."""
        if self.single is not None:
            return None
        types = dict(self.types)
        for klass in type(module).__mro__:
            if klass in types:
                return klass
        return None
