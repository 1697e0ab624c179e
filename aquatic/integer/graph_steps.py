"""The steps of an integer graph: references to earlier values, and the functions that
move codes without computing (reshapes, indexing, shape queries)."""

from __future__ import annotations

import operator
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch

__all__ = ["Ref", "Step", "TENSOR_FUNCTIONS", "fill_refs"]


class Ref(str):
    """The name of an earlier value of the graph, inside a step's arguments."""


class Step(NamedTuple):
    """One step of an :class:`IntegerGraph`: ``module`` (a key of ``ops``) or ``function``
    (a key of :data:`TENSOR_FUNCTIONS`) applied to ``args`` and ``kwargs``, in which every
    :class:`Ref` stands for an earlier value; the result is stored under ``name``."""

    name: str
    module: Optional[str]
    function: Optional[str]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]


def fill_refs(value: Any, env: Dict[str, Any]) -> Any:
    """``value`` (a step's arguments: nested lists, tuples and dicts) with every
    :class:`Ref` replaced by what ``env`` holds under its name.

    Example:
        >>> fill_refs((Ref("a"), [1, {"k": Ref("b")}]), {"a": 10, "b": 20})
        (10, [1, {'k': 20}])
    """
    if isinstance(value, Ref):
        return env[value]
    if isinstance(value, (list, tuple)):
        return type(value)(fill_refs(v, env) for v in value)
    if isinstance(value, dict):
        return {k: fill_refs(v, env) for k, v in value.items()}
    return value


def _method(name: str):
    return lambda self, *args, **kwargs: getattr(self, name)(*args, **kwargs)


#: The functions a step may apply: they move codes or read shapes, never compute values.
TENSOR_FUNCTIONS = {
    **{
        name: _method(name)
        for name in (
            "flatten",
            "reshape",
            "view",
            "permute",
            "transpose",
            "squeeze",
            "unsqueeze",
            "contiguous",
            "size",
            "dim",
        )
    },
    "torch.flatten": torch.flatten,
    "torch.reshape": torch.reshape,
    "torch.permute": torch.permute,
    "torch.transpose": torch.transpose,
    "torch.squeeze": torch.squeeze,
    "torch.unsqueeze": torch.unsqueeze,
    "getitem": operator.getitem,
    "getattr": getattr,
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "floordiv": operator.floordiv,
    "identity": lambda value: value,
    "tuple": lambda *values: tuple(values),
    "torch.cat": torch.cat,
}
