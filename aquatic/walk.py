"""The layers of a (nested) ``nn.Sequential`` in running order, a layer used twice at each use.

``nn.Module.named_children`` lists a module once however often it appears, so a walk over
it drops the second use of a shared (tied) layer; ``nn.Sequential.forward`` runs
``_modules`` in order, duplicates included. Walks that mean to follow ``forward`` use
:func:`sequential_layers`.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from torch import nn

__all__ = [
    "adjacent_pairs",
    "output_layers",
    "refuse_shared_layers",
    "sequential_layers",
    "shared_uses",
]


def sequential_layers(
    model: nn.Module, prefix: str = "", default: str = ""
) -> List[Tuple[str, nn.Module]]:
    """``(qualified name, module)`` of the leaves of nested ``nn.Sequential`` containers in
    the order ``forward`` runs them; a module used twice appears at each use, under the
    name of each slot. A model that is no ``nn.Sequential`` is one leaf named ``default``."""
    if not isinstance(model, nn.Sequential):
        return [(prefix or default, model)]
    layers: List[Tuple[str, nn.Module]] = []
    for name, child in model._modules.items():
        if child is None:
            continue
        layers += sequential_layers(child, f"{prefix}.{name}" if prefix else name, default)
    return layers


def adjacent_pairs(
    model: nn.Module, accept: Callable[[nn.Module, nn.Module], bool]
) -> List[Tuple[str, str]]:
    """Qualified names ``(first, second)`` of every two modules that follow each other in
    an ``nn.Sequential`` of ``model`` (nested ones included) and that ``accept`` takes;
    a layer used twice is looked at in each slot (``_modules``, not ``named_children``).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
        >>> adjacent_pairs(model, lambda a, b: isinstance(b, nn.ReLU))
        [('0', '1'), ('2.0', '2.1')]
    """
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = [(n, m) for n, m in module._modules.items() if m is not None]
        prefix = name + "." if name else ""
        for (first_name, first), (second_name, second) in zip(children, children[1:]):
            if accept(first, second):
                pairs.append((prefix + first_name, prefix + second_name))
    return pairs


def shared_uses(model: nn.Module) -> Dict[int, List[str]]:
    """``id(module) -> [names]`` for each module of ``model`` reachable under more than
    one name (a shared, tied module), with every name it has."""
    names: Dict[int, List[str]] = {}
    modules: Dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
        modules[id(module)] = module
    return {key: value for key, value in names.items() if len(value) > 1}


def refuse_shared_layers(model: nn.Module, target: str) -> None:
    """Raise a ``ValueError`` if one layer object appears more than once in the walk of
    :func:`sequential_layers`; ``target`` names the export that maps each layer once."""
    seen: Dict[int, List[str]] = {}
    for name, module in sequential_layers(model, default=type(model).__name__):
        seen.setdefault(id(module), []).append(name)
        if len(seen[id(module)]) == 2:
            uses = seen[id(module)]
            raise ValueError(
                f"layer {uses[0]!r} ({type(module).__name__}) is used again as {uses[1]!r}: "
                f"{target} maps each layer object once and would drop its second use. "
                "Use two separate layers (e.g. copy.deepcopy(layer) for the second use)"
            )


def _passes_through(module: nn.Module) -> bool:
    """A module without parameters of its own or below that quantizes nothing (ReLU,
    Flatten, Dropout, pooling, softmax...): the layer before it still makes the output."""
    quantizers = getattr(module, "quantizers", None)
    if isinstance(quantizers, nn.ModuleDict) and len(quantizers):
        return False
    return next(module.parameters(), None) is None and not hasattr(module, "quantizers")


def output_layers(model: nn.Module) -> List[str]:
    """Qualified names of the layers whose output is the model's output.

    For (nested) ``nn.Sequential`` models: the last layer of the walk
    (:func:`sequential_layers`), stepping back over modules that only pass values on
    (no parameters, no quantizers: ``ReLU``, ``Flatten``, ``Dropout``, pooling...). A
    model with a forward of its own is one layer, ``""``, unless it is followed through
    its graph. :func:`aquatic.quantize` leaves the activation quantizer off these layers
    unless asked (its ``quantize_output``).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Dropout())
        >>> output_layers(model)
        ['2']
    """
    layers = sequential_layers(model)
    for name, module in reversed(layers):
        if not _passes_through(module):
            return [name]
    return []
