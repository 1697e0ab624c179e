"""Writing integer modules as ONNX nodes: the graph builder and the emitter registry.

An *emitter* writes the ONNX nodes of one integer module type
(:class:`~aquatic.integer.IntegerConv`, :class:`~aquatic.integer.IntegerRequantize`, ...)
so that onnxruntime computes exactly what the module's ``forward`` computes. Emitters
are registered per class (:func:`register_emitter`) and called through :func:`emit`, so
that any graph of integer modules (a chain, as :class:`~aquatic.integer.IntegerModel`
holds, or a graph with adds and concatenations) reuses them.

Every tensor between two modules is a :class:`Value`: its ONNX name and element type,
the shape it had for the example input, and the range ``[low, high]`` its codes can take
(``None`` where the range is unknown). Emitters read the range to pick integer kernels
whose operands must fit 8 bits, and to certify that float arithmetic they use instead
is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch import nn

__all__ = ["Value", "GraphBuilder", "register_emitter", "emit", "EMITTERS", "FLOAT32_EXACT"]

#: float32 holds every integer of magnitude up to this exactly, and so does every sum of
#: such integers whose partial sums stay within it (in any order).
FLOAT32_EXACT = 2**24


@dataclass(frozen=True)
class Value:
    """A tensor of integer codes in the ONNX graph being built.

    Attributes:
        name: the ONNX tensor name.
        dtype: ``torch.int32`` or ``torch.int64`` (the element type in the graph).
        shape: its shape for the example input (axis 0, the batch, may vary).
        low, high: the smallest and largest code it can hold, or ``None`` if unknown.
    """

    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    low: Optional[int] = None
    high: Optional[int] = None

    @property
    def bounded(self) -> bool:
        return self.low is not None and self.high is not None

    def magnitude(self) -> Optional[int]:
        """The largest ``|code|``, or ``None`` when unbounded."""
        return max(abs(self.low), abs(self.high)) if self.bounded else None


class GraphBuilder:
    """Collects ONNX nodes and initializers with unique names.

    Args:
        onnx: the imported ``onnx`` package.

    Example:
        >>> import pytest; onnx = pytest.importorskip("onnx")
        >>> builder = GraphBuilder(onnx)
        >>> two = builder.constant(np.array(2, np.int64), "two")
        >>> builder.node("Mul", ["x", two], "doubled"), builder.node("Add", ["x", two], "doubled")
        ('doubled', 'doubled_1')
    """

    def __init__(self, onnx: ModuleType) -> None:
        self.onnx = onnx
        self.nodes: List[Any] = []
        self.initializers: List[Any] = []
        self._used: Dict[str, int] = {}

    def fresh(self, hint: str) -> str:
        """A tensor name not used before, made from ``hint``."""
        hint = "".join(c if c.isalnum() or c in "_." else "_" for c in hint) or "t"
        count = self._used.get(hint, 0)
        self._used[hint] = count + 1
        return f"{hint}_{count}" if count else hint

    def constant(self, array: np.ndarray, hint: str) -> str:
        """An initializer holding ``array``; returns its name."""
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], hint: str, **attributes: Any) -> str:
        """Add one node with one output; returns the output's name."""
        output = self.fresh(hint)
        node = self.onnx.helper.make_node(
            op, list(inputs), [output], name=self.fresh(f"{op}_{hint}"), **attributes
        )
        self.nodes.append(node)
        return output

    def cast(self, name: str, dtype: torch.dtype, hint: str) -> str:
        """``Cast`` of ``name`` to ``dtype`` (a torch dtype)."""
        return self.node("Cast", [name], hint, to=onnx_type(self.onnx, dtype))


_NUMPY = {
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.float32: np.float32,
    torch.float64: np.float64,
}


def numpy_dtype(dtype: torch.dtype):
    """The numpy type of a torch dtype used in the graphs."""
    return _NUMPY[dtype]


def onnx_type(onnx: ModuleType, dtype: torch.dtype) -> int:
    """The ONNX element type (``TensorProto.INT32``, ...) of a torch dtype."""
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(_NUMPY[dtype]))


Emitter = Callable[[GraphBuilder, nn.Module, Sequence[Value], Tuple[int, ...]], Value]

#: Integer module class -> the function that writes its nodes.
EMITTERS: Dict[Type[nn.Module], Emitter] = {}


def register_emitter(cls: Type[nn.Module]) -> Callable[[Emitter], Emitter]:
    """Decorator: ``fn(builder, module, inputs, output_shape) -> Value`` writes ``cls``.

    ``inputs`` are the module's input values, ``output_shape`` the shape of its output for
    the example input; the function returns the value it computed, with its range.
    """

    def decorate(fn: Emitter) -> Emitter:
        EMITTERS[cls] = fn
        return fn

    return decorate


def emit(
    builder: GraphBuilder,
    module: nn.Module,
    inputs: Sequence[Value],
    output_shape: Tuple[int, ...],
) -> Value:
    """Write ``module``'s nodes with the emitter registered for its exact class.

    Raises:
        TypeError: no emitter is registered for the module's class; the message names it.
    """
    fn = EMITTERS.get(type(module))
    if fn is None:
        known = ", ".join(sorted(cls.__name__ for cls in EMITTERS))
        name = getattr(module, "name", "")
        raise TypeError(
            f"layer {name!r} ({type(module).__name__}) has no exact ONNX form; the integer "
            f"ONNX export writes {known}"
        )
    return fn(builder, module, inputs, tuple(output_shape))
