"""Model level: quantize a whole ``torch.nn`` model, take it back to float, and quantize
any single parameter of any module."""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

from torch import nn
from torch.nn.utils import parametrize

from aquatic import nn as qnn
from aquatic.graph.capture import capture, follows_graph
from aquatic.nn.activation import ActivationQuantizer
from aquatic.nn.base import QuantizedModule
from aquatic.nn.transformer import follow_mapping, fused_layers_left_in_float
from aquatic.mapping import QConfigLike, QConfigResolver
from aquatic.qconfig import QConfig
from aquatic.quantizers.base import Quantizer

__all__ = ["quantize", "dequantize", "quantize_parameter", "TWINS"]

#: torch.nn layer type -> its aquatic twin; :func:`quantize` replaces exactly these types.
TWINS: Dict[Type[nn.Module], Type[nn.Module]] = {
    nn.Linear: qnn.Linear,
    nn.Conv1d: qnn.Conv1d,
    nn.Conv2d: qnn.Conv2d,
    nn.Conv3d: qnn.Conv3d,
    nn.ConvTranspose1d: qnn.ConvTranspose1d,
    nn.ConvTranspose2d: qnn.ConvTranspose2d,
    nn.ConvTranspose3d: qnn.ConvTranspose3d,
    nn.Embedding: qnn.Embedding,
    nn.EmbeddingBag: qnn.EmbeddingBag,
    nn.MultiheadAttention: qnn.MultiheadAttention,
    nn.TransformerEncoderLayer: qnn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer: qnn.TransformerDecoderLayer,
    **{getattr(nn, name): getattr(qnn, name) for name in ("RNN", "LSTM", "GRU")},
    **{getattr(nn, name): getattr(qnn, name) for name in ("RNNCell", "LSTMCell", "GRUCell")},
}

#: The aquatic twins that :func:`quantize` builds (and can rebuild with another QConfig).
_AQUATIC_TWINS = tuple(TWINS.values())


# Attributes of a class that a new class with the same namespace must not copy.
_CLASS_SLOTS = ("__dict__", "__weakref__")


def _replace(model: nn.Module, replacements: Dict[int, nn.Module]) -> nn.Module:
    """Swap every occurrence of the replaced modules (shared modules included)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[child_name] = replacements[id(child)]
    return replacements.get(id(model), model)


def _warn_requantized(requantized: List[str], kept: List[str]) -> None:
    if requantized:
        warnings.warn(
            "aquatic.quantize: re-quantized with the new QConfig, as they were already "
            f"quantized with another one: {', '.join(requantized)} (float weights kept; old "
            "quantizers, observed ranges and learned quantizer parameters dropped). To keep "
            "a layer's quantizers, map its name to None: aquatic.quantize(model, "
            "{nn.Module: qconfig, 'name': None})",
            UserWarning,
            stacklevel=4,
        )
    if kept:
        warnings.warn(
            "aquatic.quantize: kept their quantizers although already quantized with another "
            f"QConfig: {', '.join(kept)}; a subclass of an aquatic layer, or one with "
            "parametrized parameters (quantize_parameter), cannot be rebuilt. Rebuild it "
            "yourself, or map its name to None to silence this",
            UserWarning,
            stacklevel=4,
        )


#: Modules whose float parameters are expected: BatchNorm folds into the layer before it
#: (aquatic.fold_batch_norm, and aquatic.convert).
_FOLDED = (nn.modules.batchnorm._BatchNorm,)
#: The output projection of a MultiheadAttention, which its twin quantizes.
_INSIDE_TWINS = (nn.modules.linear.NonDynamicallyQuantizableLinear,)


def _warn_float_parameters(named: List[Tuple[str, nn.Module]], resolver: QConfigResolver) -> None:
    """Warn, naming them, about parameters that :func:`quantize` leaves in float."""
    left = []
    for name, module in named:
        skip = (
            (QuantizedModule, Quantizer, parametrize.ParametrizationList) + _FOLDED + _INSIDE_TWINS
        )
        if type(module) in TWINS or isinstance(module, skip):
            continue
        if resolver.names_explicitly(name):
            continue  # the user mapped it (to None): float by choice
        for param_name, _ in module.named_parameters(recurse=False):
            left.append(f"{name + '.' if name else ''}{param_name} ({type(module).__name__})")
    if left:
        warnings.warn(
            "aquatic.quantize: these parameters stay in float (their modules have no aquatic "
            f"twin): {', '.join(left)}. Quantize one with aquatic.quantize_parameter(module, "
            "name, quantizer), or map the module's name to None to keep it in float silently",
            UserWarning,
            stacklevel=4,
        )


def quantize(model: nn.Module, qconfig: QConfigLike, inplace: bool = False) -> nn.Module:
    """Replace every ``torch.nn`` layer that has an aquatic twin by the twin, weights kept.

    ``qconfig`` is one :class:`~aquatic.QConfig` for every supported layer, or a mapping
    whose keys are module types, qualified module names (a name covers the modules
    inside it) or regular expressions matched against whole names, and whose values
    are a QConfig or ``None`` (leave the module in float). The most specific key wins:
    the module's own name, the nearest enclosing name, the first matching regular
    expression, then the nearest type in the module's class hierarchy
    (``{nn.Module: int8}`` is a default for everything).

    Parameters are shared with the converted layers (device, dtype and ``requires_grad``
    kept); with ``inplace=False`` (the default) the model is deep-copied first. Only
    the exact types in :data:`TWINS` are converted (a subclass may compute something
    else); other modules are left alone. Everything is checked before anything changes,
    so an error leaves the model as it was.

    Layers that are already aquatic twins (from an earlier :func:`quantize`, or built
    from :mod:`aquatic.nn`) follow the same rule. With the QConfig they already have
    (compared with ``==``), or ``None``, they are left as they are: quantizing twice
    with the same QConfig changes nothing. With a different QConfig they are
    *re-quantized*: rebuilt with the new QConfig around the same float parameters
    (their old quantizers, observed ranges and learned quantizer parameters are
    dropped), with a ``UserWarning`` naming them. Map a layer's name to ``None`` to
    keep its quantizers. Subclasses of the twins, and twins with parametrized
    parameters (:func:`quantize_parameter`), cannot be rebuilt: they keep their
    quantizers, with a ``UserWarning`` naming them.

    A model of one's own (not ``nn.Sequential``, not a single layer) is then traced
    (:func:`aquatic.graph.trace`) and comes back as an ``fx.GraphModule`` holding the same
    modules under the same names (``model.layer1[0].conv1``; the ``state_dict`` is the
    model's), with quantizers built from the QConfig's ``activation``: an
    :class:`aquatic.nn.ActivationQuantizer` at each graph input (``input_quantizer``,
    unless one already takes it), so that :func:`aquatic.convert` needs no input scale,
    and an :class:`aquatic.nn.Add` / :class:`~aquatic.nn.Mul` / :class:`~aquatic.nn.Cat`
    wherever ``forward`` adds (``+``, ``+=``), multiplies or concatenates tensors, named
    after the module whose ``forward`` does it (``layer1.0.add``), with its QConfig.
    ``nn.Sequential`` models are not traced and get no input quantizer. A ``forward``
    that cannot be traced keeps its swapped layers, with a ``UserWarning`` naming the line.

    Args:
        model: the model to convert.
        qconfig: a QConfig, or a mapping as above.
        inplace: convert ``model`` itself rather than a copy (for a traced model, its
            layers are swapped in place and the returned graph shares them).

    Returns:
        The converted model (``model`` itself when ``inplace``, unless ``model`` is
        itself a supported layer, which cannot be converted in place of itself, or is
        followed as a graph, which returns the ``fx.GraphModule``).

    Raises:
        TypeError: ``qconfig`` is neither a QConfig nor a mapping, a value is not a
            QConfig or ``None``, or a type key has no aquatic twin.
        ValueError: a string key is neither a module name nor a regular expression.

    Warns:
        UserWarning: listing mapping keys that match no module of the model; listing
            layers already quantized with another QConfig (re-quantized, or kept where
            they cannot be rebuilt); naming every parameter left in float because its
            module has no aquatic twin (``LayerNorm``, ...), with the fix
            (:func:`quantize_parameter`, or map the module's name to ``None`` to keep it
            in float by choice). BatchNorm parameters are not named: they fold into the
            layer before them (:func:`aquatic.fold_batch_norm`).

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> qmodel = aquatic.quantize(model, {nn.Linear: aquatic.qconfig.int8, "2": None})
        >>> [type(m).__module__ + "." + type(m).__name__ for m in qmodel]
        ['aquatic.nn.linear.Linear', 'torch.nn.modules.activation.ReLU', 'torch.nn.modules.linear.Linear']
        >>> torch.equal(qmodel[0].weight, model[0].weight)
        True
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     again = aquatic.quantize(qmodel, aquatic.qconfig.int4_weight)
        >>> print(caught[0].message)  # doctest: +ELLIPSIS
        aquatic.quantize: re-quantized with the new QConfig, as they were already quantized with another one: 0 (...
        >>> again[0].qconfig == aquatic.qconfig.int4_weight, torch.equal(again[0].weight, model[0].weight)
        (True, True)
    """
    result, resolver = _swap_twins(model, qconfig, inplace)
    if not follows_graph(model):
        return result
    return capture(result, lambda name: resolver.resolve(name, result.get_submodule(name)))


def _swap_twins(
    model: nn.Module, qconfig: QConfigLike, inplace: bool
) -> Tuple[nn.Module, QConfigResolver]:
    """The layer swap of :func:`quantize`, and the resolver it used."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    named = list(model.named_modules())
    resolver = QConfigResolver(
        qconfig, [name for name, _ in named], [module for _, module in named], TWINS
    )
    plan: List[Tuple[str, nn.Module, QConfig]] = []
    requantized: List[str] = []
    kept: List[str] = []
    for name, module in named:
        if type(module) in TWINS:
            config = resolver.resolve(name, module)
            if config is not None:
                plan.append((name, module, config))
        elif isinstance(module, _AQUATIC_TWINS):
            config = resolver.resolve(name, module)
            old = module.qconfig
            if config is None or config == old:
                continue
            quantized = old is not None and not old.is_empty()
            if type(module) not in _AQUATIC_TWINS or parametrize.is_parametrized(module):
                if quantized:
                    kept.append(name or "(the model itself)")
                continue
            plan.append((name, module, config))
            if quantized:
                requantized.append(name or "(the model itself)")
    if resolver.unmatched:
        warnings.warn(
            "aquatic.quantize: these qconfig keys match no module of the model: "
            + ", ".join(resolver.unmatched),
            UserWarning,
            stacklevel=3,
        )
    _warn_requantized(requantized, kept)
    _warn_float_parameters(named, resolver)
    fused = fused_layers_left_in_float(named, {id(m) for _, m, _ in plan})
    if fused:
        warnings.warn(
            f"aquatic.quantize: {', '.join(fused)} stay torch.nn.TransformerEncoderLayer while "
            "their linear layers are quantized: in eval under no_grad torch's fused path "
            "would read the float weights. Quantize the layers too: "
            "{nn.TransformerEncoderLayer: qconfig, ...}",
            UserWarning,
            stacklevel=3,
        )
    if not plan:
        return (model if inplace else _deepcopy(model)), resolver
    if not inplace:
        memo: Dict[int, Any] = {}
        model = _deepcopy(model, memo)
        plan = [(name, memo[id(module)], config) for name, module, config in plan]
    # Build every replacement first: if one fails, nothing has been swapped yet.
    replacements: Dict[int, nn.Module] = {}
    for name, module, config in plan:
        if type(module) in _AQUATIC_TWINS:
            replacements[id(module)] = type(module).from_float(module.to_float(baked=False), config)
        else:
            replacements[id(module)] = TWINS[type(module)].from_float(module, config)
    for name, module, _ in plan:  # children of transformer layers that the mapping names
        follow_mapping(replacements[id(module)], name, module, resolver)
    return _replace(model, replacements), resolver


def _deepcopy(model: nn.Module, memo: Optional[Dict[int, Any]] = None) -> nn.Module:
    # A parametrized RNN caches its last computed (non-leaf) weights in _flat_weights,
    # which deepcopy refuses; they are recomputed on every forward, so the copy may
    # start from detached ones.
    saved = []
    for module in model.modules():
        if isinstance(module, nn.RNNBase) and parametrize.is_parametrized(module):
            saved.append((module, module._flat_weights))
            module._flat_weights = [w if w is None else w.detach() for w in module._flat_weights]
    try:
        return copy.deepcopy(model, memo)
    finally:
        for module, flat_weights in saved:
            module._flat_weights = flat_weights


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
        model = _deepcopy(model)
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
    return _replace(model, replacements)


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
