"""Model level: quantize a whole ``torch.nn`` model, take it back to float, and quantize
any single parameter of any module."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Set, Tuple, Type

from torch import nn
from torch.nn.utils import parametrize

from aquatic import nn as qnn
from aquatic.graph.capture import capture, follows_graph
from aquatic.nn.base import QuantizedModule
from aquatic.nn.transformer import follow_mapping, fused_layers_left_in_float
from aquatic.fuse import fused_pair
from aquatic.model_float import copy_model, dequantize, quantize_parameter, replace_modules
from aquatic.graph.structure import bn_pairs, output_layers
from aquatic.mapping import QConfigLike, QConfigResolver
from aquatic.qconfig import QConfig
from aquatic.quantizers.base import Quantizer

__all__ = ["quantize", "dequantize", "quantize_parameter", "TWINS", "in_float", "twin_of"]

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


def in_float(module: nn.Module) -> bool:
    """Whether ``module`` is a float layer that :func:`quantize` converts: exactly a type
    of :data:`TWINS`, or an aquatic twin without quantizers (built with
    ``qconfig=None``, e.g. ``aquatic.nn.Conv2d`` for its time axis) that it can rebuild.

    Example:
        >>> import aquatic
        >>> in_float(nn.Conv2d(2, 4, 3)), in_float(aquatic.nn.Conv2d(2, 4, 3))
        (True, True)
        >>> in_float(aquatic.nn.Conv2d(2, 4, 3, qconfig=aquatic.qconfig.int8))
        False
    """
    if type(module) in TWINS:
        return True
    if type(module) not in _AQUATIC_TWINS or parametrize.is_parametrized(module):
        return False
    return module.qconfig is None or module.qconfig.is_empty()


def twin_of(module: nn.Module, qconfig: Optional[QConfig]) -> nn.Module:
    """The aquatic twin of ``module`` (a torch layer of :data:`TWINS`, or an aquatic twin
    to rebuild) with ``qconfig``, sharing its parameters.

    Example:
        >>> import aquatic
        >>> conv = aquatic.nn.Conv2d(2, 4, 3)
        >>> twin = twin_of(conv, aquatic.qconfig.int8)
        >>> type(twin).__name__, twin.weight is conv.weight, conv.qconfig is None
        ('Conv2d', True, True)
    """
    if type(module) in _AQUATIC_TWINS:
        return type(module).from_float(module.to_float(baked=False), qconfig)
    return TWINS[type(module)].from_float(module, qconfig)


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


def _warn_float_parameters(
    named: List[Tuple[str, nn.Module]], resolver: QConfigResolver, covered: Set[int]
) -> None:
    """Warn, naming them, about parameters that :func:`quantize` leaves in float
    (``covered``: the ``id`` of modules that a twin around them quantizes)."""
    left = []
    for name, module in named:
        if id(module) in covered:
            continue
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


def quantize(
    model: nn.Module,
    qconfig: QConfigLike,
    inplace: bool = False,
    fuse_batch_norm: bool = True,
    quantize_output: bool = False,
) -> nn.Module:
    """Replace every ``torch.nn`` layer that has an aquatic twin by the twin, weights kept.

    ``qconfig`` is one :class:`~aquatic.QConfig` for every supported layer, or a mapping
    whose keys are module types, qualified module names (a name covers the modules
    inside it) or regular expressions matched against whole names, and whose values
    are a QConfig or ``None`` (leave the module in float). The most specific key wins:
    the module's own name, the nearest enclosing name, the first matching regular
    expression, then the nearest type in the module's class hierarchy
    (``{nn.Module: int8}`` is a default for everything). The attention block and
    feed-forward layers inside a transformer layer follow the same order, except that
    a type key that covers the layer itself too (``nn.Module``) does not override the
    layer's QConfig for them (:func:`aquatic.nn.transformer.follow_mapping`).

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

    A ``Conv1d/2d/3d`` or ``Linear`` directly followed by its ``BatchNorm1d/2d/3d`` (in an
    ``nn.Sequential``, or along a traced ``forward``) becomes one fused layer (:class:`aquatic.nn.ConvBn2d` ...; the batch
    norm's slot becomes ``nn.Identity``): the weight is quantized with the batch norm
    folded in and the activation quantizer sits after the batch norm, as in the integer
    model. Train, call :func:`aquatic.nn.freeze_bn` for the last steps, then
    :func:`aquatic.convert`.

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
        fuse_batch_norm: fuse layer and batch-norm pairs as above; ``False`` leaves the
            batch norm in float after the layer (fold it with
            :func:`aquatic.fold_batch_norm` before converting).
        quantize_output: also quantize the output of the layer(s) whose output is the
            model's output (:func:`aquatic.graph.structure.output_layers`). By default their
            ``QConfig.activation`` is left off (weights and bias are still quantized):
            an activation quantizer on the logits, whose range a moving average tracks
            slowly, stalls training, and :func:`aquatic.convert` returns those layers'
            int32 accumulators with their scale, which is exact. A layer named in
            ``qconfig`` (a name or regular-expression key) gets its QConfig as it is.

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
    result, resolver = _swap_twins(model, qconfig, inplace, fuse_batch_norm, quantize_output)
    if not follows_graph(model):
        return result
    return capture(result, lambda name: resolver.resolve(name, result.get_submodule(name)))


def _swap_twins(
    model: nn.Module,
    qconfig: QConfigLike,
    inplace: bool,
    fuse_batch_norm: bool,
    quantize_output: bool,
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
    outputs = set() if quantize_output else set(output_layers(model))

    def resolve(name: str, module: nn.Module) -> Optional[QConfig]:
        config = resolver.resolve(name, module)
        if config is not None and name in outputs and not resolver.names_explicitly(name):
            config = config._replace(activation=None)
        return config

    for name, module in named:
        if type(module) in TWINS:
            config = resolve(name, module)
            if config is not None:
                plan.append((name, module, config))
        elif isinstance(module, _AQUATIC_TWINS):
            config = resolve(name, module)
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
    # The norms of transformer layers quantized with an activation quantizer become
    # aquatic.nn.LayerNorm twins inside their layer.
    covered = {
        id(norm)
        for _, module, config in plan
        if config.activation is not None
        for norm in (getattr(module, n, None) for n in ("norm1", "norm2", "norm3"))
        if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
        and norm is not None
    }
    _warn_float_parameters(named, resolver, covered)
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
        return (model if inplace else copy_model(model)), resolver
    if not inplace:
        memo: Dict[int, Any] = {}
        model = copy_model(model, memo)
        plan = [(name, memo[id(module)], config) for name, module, config in plan]
    # Build every replacement first: if one fails, nothing has been swapped yet.
    replacements: Dict[int, nn.Module] = {}
    batch_norms = _batch_norms_after(model, fuse_batch_norm)
    for name, module, config in plan:
        if id(module) in batch_norms:
            bn = batch_norms[id(module)]
            replacements[id(module)] = fused_pair(module, bn, config)
            replacements[id(bn)] = nn.Identity()
        else:
            replacements[id(module)] = twin_of(module, config)
    for name, module, _ in plan:  # children of transformer layers that the mapping names
        follow_mapping(replacements[id(module)], name, module, resolver)
    return replace_modules(model, replacements), resolver


def _batch_norms_after(model: nn.Module, fuse: bool) -> Dict[int, nn.Module]:
    """``id(layer) -> the batch norm after it``, for the pairs :func:`quantize` fuses."""
    if not fuse:
        return {}
    return {
        id(model.get_submodule(layer)): model.get_submodule(bn) for layer, bn in bn_pairs(model)
    }
