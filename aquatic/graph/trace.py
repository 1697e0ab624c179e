"""Graph capture: the dataflow of a model's own ``forward``, as a ``torch.fx`` graph.

:func:`trace` runs ``torch.fx`` symbolic tracing (Reed et al. 2022, "torch.fx: Practical
Program Capture and Transformation for Deep Learning in Python") with every layer of
``torch.nn`` and of ``aquatic.nn`` as a leaf: the graph records each layer as one
``call_module`` node under its qualified name, and the code between layers (``x + y``,
``torch.cat``, ``torch.flatten``, ``F.relu``, ``h[:, -1]`` ...) as function and method
nodes. Only containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) and
modules of one's own are traced through.

``torch.fx`` rather than ``torch.export``: fx keeps each layer as a module that can be
swapped for its quantization-aware twin, trained eagerly and converted by type, and it
traces without example inputs; ``torch.export`` functionalises the layers into ATen
operators (the module boundaries aquatic converts by are gone) and needs inputs.
"""

from __future__ import annotations

import inspect
import linecache
import os
import traceback
from typing import Any, Dict, Optional

import torch
from torch import fx, nn

from aquatic.nn.base import QuantizedModule

__all__ = ["GraphCaptureError", "is_leaf", "trace"]

#: Containers whose ``forward`` the tracer follows (everything else in torch.nn is a leaf).
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_LIBRARIES = (
    os.path.dirname(torch.__file__),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
)


class GraphCaptureError(TypeError):
    """A model's ``forward`` cannot be captured as a graph; the message names the line."""


def is_leaf(module: nn.Module) -> bool:
    """Whether the tracer keeps ``module`` as one node: any layer of ``torch.nn`` or
    ``aquatic.nn`` (not the containers), every quantized layer (subclasses too) and
    every quantizer."""
    if isinstance(module, _CONTAINERS) or isinstance(module, fx.GraphModule):
        return False
    if isinstance(module, QuantizedModule):
        return True
    origin = type(module).__module__
    return origin.startswith("torch.nn") or origin.startswith("aquatic.")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf(m)


def _user_frame(error: BaseException) -> Optional[traceback.FrameSummary]:
    """The innermost frame of the traceback that is the user's code (not torch's or aquatic's)."""
    found = None
    for frame in traceback.extract_tb(error.__traceback__):
        path = os.path.abspath(frame.filename)
        if not path.startswith(_LIBRARIES) and not frame.filename.startswith("<"):
            found = frame
    return found


def _defaults(model: nn.Module) -> Dict[str, Any]:
    """The ``forward`` arguments that have a default, with it (fixed while tracing)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default
        for p in parameters
        if p.kind in kinds and p.default is not inspect.Parameter.empty
    }


def trace(model: nn.Module, what: str = "aquatic") -> fx.GraphModule:
    """The ``torch.fx`` graph of ``model``'s ``forward``, layers kept as leaves.

    The result is an ``fx.GraphModule`` named after ``model``'s class, holding the same
    submodules, parameters and buffers (the objects, not copies) under the same names
    (``gm.layer1[0].conv1``), so its ``state_dict`` is the model's. Attributes that are
    not modules, parameters or buffers, and methods other than ``forward``, are not
    carried over. ``forward`` arguments with a default (``state=None``) are fixed to
    it (``torch.fx``'s ``concrete_args``): the graph is the one that runs when they are
    left out, and passing another value raises.

    Args:
        model: any module whose ``forward`` can be traced symbolically.
        what: who asks, for the error message (e.g. ``"aquatic.convert"``).

    Returns:
        The ``fx.GraphModule``.

    Raises:
        GraphCaptureError: (a ``TypeError``) the forward cannot be traced, e.g. it
            branches on the values of a tensor; the message names the file, line and
            source of the ``forward`` that failed, and the fixes.

    Example:
        >>> import torch
        >>> class Residual(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 4)
        ...     def forward(self, x):
        ...         return torch.relu(self.fc(x) + x)
        >>> gm = trace(Residual())
        >>> [(node.op, str(node.target)) for node in gm.graph.nodes][1:3]
        [('call_module', 'fc'), ('call_function', '<built-in function add>')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} takes an nn.Module, got {type(model).__name__}")
    try:
        graph = _Tracer().trace(model, concrete_args=_defaults(model))
    except Exception as error:  # fx raises TraceError, TypeError, RuntimeError...
        frame = _user_frame(error)
        where = "its forward"
        if frame is not None:
            source = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
            where = f"{frame.filename}, line {frame.lineno}, in {frame.name}: {source!r}"
        raise GraphCaptureError(
            f"{what} cannot follow the forward of {type(model).__name__} as a graph "
            f"(torch.fx symbolic tracing failed at {where}: {type(error).__name__}: {error}). "
            "Control flow that depends on tensor values cannot be captured: move that part "
            "into a module of its own and make it a layer with an integer counterpart, "
            "compute the branch condition from shapes or constructor arguments only, or "
            "build the model as nn.Sequential"
        ) from error
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    # The containers on the way to the layers are the model's own objects again (fx makes
    # plain modules of them), so indexing, types and the state_dict stay the model's.
    for name, child in model._modules.items():
        gm._modules[name] = child
    for name, value in model._parameters.items():
        gm._parameters[name] = value
    for name, value in model._buffers.items():
        gm._buffers[name] = value
        if name in model._non_persistent_buffers_set:
            gm._non_persistent_buffers_set.add(name)
    return gm
