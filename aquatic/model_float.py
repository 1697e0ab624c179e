"""Model level, the way back: :func:`dequantize` a model to plain ``torch.nn``, quantize
one parameter of any module (:func:`quantize_parameter`), and the helpers that
:func:`aquatic.quantize` and the exports share (:func:`copy_model`, :func:`replace_modules`)."""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from aquatic.nn.activation import ActivationQuantizer
from aquatic.nn.base import QuantizedModule
from aquatic.quantizers.base import Quantizer

__all__ = ["copy_model", "dequantize", "quantize_parameter", "replace_modules"]

# Attributes of a class that a new class with the same namespace must not copy.
_CLASS_SLOTS = ("__dict__", "__weakref__")


def copy_model(model: nn.Module, memo: Optional[Dict[int, Any]] = None) -> nn.Module:
    """``copy.deepcopy(model)``, also after a forward pass with gradients through
    parametrized weights (:func:`aquatic.quantize_parameter`): modules that cache the
    computed weights (``nn.LSTM``'s ``_flat_weights``) then hold tensors that are not
    graph leaves, which deepcopy refuses. The copy gets them detached (modules recompute
    them from the parametrization on their next forward), and copying without gradients
    keeps the weights that ``__getstate__`` recomputes leaves too.

    Args:
        model: the model to copy.
        memo: ``copy.deepcopy``'s memo, to map objects of ``model`` to their copies.

    Example:
        >>> import torch, aquatic
        >>> from aquatic.quantizers import UniformQuantizer
        >>> lstm = aquatic.quantize_parameter(torch.nn.LSTM(2, 3), "weight_hh_l0",
        ...                                   UniformQuantizer.with_args(bits=4))
        >>> lstm(torch.rand(5, 1, 2))[0].sum().backward()  # caches non-leaf weights
        >>> twin = copy_model(lstm)
        >>> torch.equal(twin.weight_hh_l0, lstm.weight_hh_l0)
        True
    """
    memo = {} if memo is None else memo
    for module in model.modules():
        for value in vars(module).values():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, Tensor) and not item.is_leaf:
                    memo[id(item)] = item.detach().clone()
    with torch.no_grad():
        return copy.deepcopy(model, memo)


def replace_modules(model: nn.Module, replacements: Dict[int, nn.Module]) -> nn.Module:
    """Swap every occurrence of the replaced modules (shared modules included).

    Args:
        model: the model whose children are swapped in place.
        replacements: ``id(old module) -> new module``.

    Returns:
        ``model``, or its replacement where ``model`` itself is replaced.

    Example:
        >>> from torch import nn
        >>> relu = nn.ReLU()
        >>> model = nn.Sequential(relu, nn.Linear(2, 2), relu)
        >>> [type(m).__name__ for m in replace_modules(model, {id(relu): nn.Tanh()})]
        ['Tanh', 'Linear', 'Tanh']
    """
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[child_name] = replacements[id(child)]
    return replacements.get(id(model), model)


def dequantize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Back to plain ``torch.nn``: quantized parameter values baked in, quantizers gone.

    Every aquatic layer becomes its torch twin (:meth:`to_float`) holding the values
    its quantizers give (:meth:`quantize_params`), every :class:`~aquatic.nn.ActivationQuantizer`
    becomes ``nn.Identity``, and parameters quantized with :func:`quantize_parameter`
    keep their quantized value as a plain parameter. Activation quantization has no
    ``torch.nn`` equivalent and is dropped, so outputs may differ from the quantized
    model's where it quantized activations.

    Args:
        model: a model converted with :func:`quantize` or built from ``aquatic.nn``.
        inplace: change ``model`` itself rather than a copy.

    Returns:
        The float model.

    Example:
        >>> import torch, aquatic
        >>> layer = aquatic.nn.Linear(3, 2, qconfig=aquatic.qconfig.int4_weight)
        >>> plain = aquatic.dequantize(torch.nn.Sequential(layer))
        >>> type(plain[0]).__name__, torch.equal(plain[0].weight, layer.quantize_params()["weight"])
        ('Linear', True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy_model(model)
    replacements: Dict[int, nn.Module] = {}
    for module in model.modules():
        if isinstance(module, ActivationQuantizer):
            replacements[id(module)] = nn.Identity()
        elif isinstance(module, QuantizedModule) and callable(getattr(module, "to_float", None)):
            replacements[id(module)] = module.to_float()
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        if not inplace:
            # A deep copy shares the parametrized class (and its properties) with the
            # original; removing a parametrization edits that class, so give the copy
            # its own first.
            cls = type(module)
            namespace = {k: v for k, v in cls.__dict__.items() if k not in _CLASS_SLOTS}
            module.__class__ = type(cls.__name__, cls.__bases__, namespace)
        for name in list(module.parametrizations.keys()):
            if any(isinstance(p, Quantizer) for p in module.parametrizations[name]):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return replace_modules(model, replacements)


def quantize_parameter(
    module: nn.Module, name: str, quantizer: Union[nn.Module, Callable[[], nn.Module]]
) -> nn.Module:
    """Quantize parameter ``name`` of any module, through ``torch.nn.utils.parametrize``.

    Every access to ``module.<name>`` then returns the fake-quantized value (straight-
    through gradient to the float value, kept as ``module.parametrizations.<name>.original``).
    Works for modules without an aquatic twin: ``nn.LSTM`` (``"weight_hh_l0"``),
    ``nn.Embedding`` (``"weight"``), ``nn.LayerNorm``... :func:`aquatic.freeze_observers`
    and the other switches reach the quantizer, and :func:`dequantize` bakes it in.

    Args:
        module: the module that owns the parameter (changed in place).
        name: the parameter's name in ``module``.
        quantizer: a quantizer (an instance) or a factory such as
            ``UniformQuantizer.with_args(bits=4)``.

    Returns:
        ``module``.

    Raises:
        ValueError: ``module`` has no parameter ``name``.
        TypeError: ``quantizer`` is not a quantizer or a factory of one.

    Example:
        >>> import torch, aquatic
        >>> from aquatic.quantizers import UniformQuantizer
        >>> emb = torch.nn.Embedding(10, 4)
        >>> _ = aquatic.quantize_parameter(emb, "weight", UniformQuantizer.with_args(bits=2))
        >>> torch.unique(emb.weight).numel() <= 4
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    own = dict(module.named_parameters(recurse=False))
    if parametrize.is_parametrized(module, name):
        raise ValueError(
            f"{type(module).__name__}.{name} is already parametrized; remove it with "
            f"torch.nn.utils.parametrize.remove_parametrizations(module, {name!r}) first"
        )
    if name not in own:
        available = ", ".join(sorted(own)) or "none"
        raise ValueError(
            f"{type(module).__name__} has no parameter {name!r} of its own "
            f"(its parameters: {available}); pass the submodule that owns it"
        )
    if not isinstance(quantizer, nn.Module):
        if not callable(quantizer):
            raise TypeError(
                f"quantizer must be a quantizer or a factory such as "
                f"UniformQuantizer.with_args(bits=8), got {quantizer!r}"
            )
        quantizer = quantizer()
    if not isinstance(quantizer, nn.Module):
        raise TypeError(f"the quantizer factory returned {type(quantizer).__name__}, not a module")
    parameter = own[name]
    quantizer.to(parameter.device)
    parametrize.register_parametrization(module, name, quantizer)
    return module
