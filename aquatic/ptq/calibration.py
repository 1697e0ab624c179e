"""Calibration: set every quantizer's range from representative data, then freeze it."""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Tuple

import torch
from torch import nn

from aquatic.observers import RangeObserver
from aquatic.ptq.learned_rounding import adaround
from aquatic.ptq.batches import (
    check_model,
    device_of,
    model_input,
    progress_bar,
    reset_states,
    take_batches,
)
from aquatic.ptq.bias_correction import correct_bias, correctable_layers
from aquatic.quantizers.base import Quantizer
from aquatic.quantizers.learned_init import calibration_observer, initialize_from
from aquatic.switches import freeze_observers

__all__ = ["calibrate", "quantizers_of", "ROUNDINGS"]

#: How :func:`calibrate` rounds weights: as the quantizers do, or learned (AdaRound).
ROUNDINGS = ("nearest", "adaround")


def quantizers_of(model: nn.Module) -> List[Quantizer]:
    """Every aquatic quantizer in ``model``, each once."""
    return [module for module in model.modules() if isinstance(module, Quantizer)]


def calibrate(
    model: nn.Module,
    data: Iterable[Any],
    num_batches: Optional[int] = None,
    progress: bool = True,
    bias_correction: bool = False,
    rounding: str = "nearest",
    rounding_iters: int = 1000,
) -> nn.Module:
    """Set every quantizer's range from ``data``, then freeze the observers.

    The model runs in eval mode (dropout off, batch norm on its running statistics)
    over the batches, without gradients; only the quantizers are switched to observe,
    so that every range, weights, activations, spiking layers' thresholds and states
    included, comes from all the batches rather than the first. Then:

    - observers are frozen (:func:`aquatic.freeze_observers`), so later forwards,
      training included, keep the calibrated ranges until
      :func:`aquatic.enable_observers`;
    - learned quantizers (LSQ, LSQ+, PACT) start from the range with the least
      quantization error over the batches (:mod:`aquatic.quantizers.learned_init`);
    - with ``rounding="adaround"``, each weight's rounding (down or up) is learned
      layer by layer to keep the layer's output close to the float model's, and baked
      into the weight (:func:`aquatic.ptq.adaround`, Nagel et al. 2020;
      ``rounding_iters`` steps per layer, seed 0);
    - with ``bias_correction``, each layer's bias absorbs the mean shift of its output
      that weight quantization causes (:func:`aquatic.ptq.correct_bias`).

    Ranges observed before are discarded, so calibrating twice on the same data gives
    the same model (neuron states are reset before and after; with
    ``rounding="adaround"`` the weights move, so a second call starts from the moved
    weights). Every module's own
    training mode is restored at the end.

    With torch.ao and aquatic side by side::

        # torch.ao (eager mode)                  # aquatic
        model.qconfig = get_default_qconfig()    qmodel = aquatic.quantize(model, qconfig)
        prepared = prepare(model.eval())         aquatic.calibrate(qmodel, loader)
        with torch.no_grad():
            for x, _ in loader:
                prepared(x)
        quantized = convert(prepared)            integer = aquatic.convert(qmodel)

    Args:
        model: a model with aquatic quantizers (from :func:`aquatic.quantize`, or built
            from :mod:`aquatic.nn`).
        data: an iterable of batches: a ``DataLoader``, a list of tensors, or of
            ``(input, target, ...)`` tuples (the first item is the model input). Moved
            to the model's device.
        num_batches: use only the first ``num_batches`` batches; ``None`` for all.
        progress: show a tqdm progress bar (when tqdm is installed; without it,
            calibration runs without a bar).
        bias_correction: correct biases for weight quantization (empirical bias
            correction, Nagel et al. 2019), after the rounding.
        rounding: how weights reach their grid: ``"nearest"`` (as the weight
            quantizers round) or ``"adaround"`` (learned on ``data``, see above; a
            ``UserWarning`` names the layers it cannot round).
        rounding_iters: optimisation steps per layer for ``rounding="adaround"``.

    Returns:
        ``model``, calibrated in place.

    Raises:
        TypeError: ``model`` is not a module, or ``data`` is not an iterable of batches.
        ValueError: ``data`` has no batches, or ``model`` has no quantizers; an unknown
            ``rounding``, or a bad ``rounding_iters``.

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> model = aquatic.quantize(
        ...     nn.Sequential(nn.Linear(4, 3)), aquatic.qconfig.int8, quantize_output=True
        ... )
        >>> batches = [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
        >>> model = aquatic.calibrate(model, batches, progress=False)
        >>> model[0].quantizers["activation"].observer_enabled
        False
    """
    check_model(model, "calibrate")
    if rounding not in ROUNDINGS:
        raise ValueError(
            f"calibrate: unknown rounding {rounding!r}; use one of "
            f"{', '.join(map(repr, ROUNDINGS))}"
        )
    if (
        isinstance(rounding_iters, bool)
        or not isinstance(rounding_iters, int)
        or rounding_iters < 1
    ):
        raise ValueError(
            f"calibrate: rounding_iters must be a positive int, got {rounding_iters!r}"
        )
    quantizers = quantizers_of(model)
    if not quantizers:
        raise ValueError(
            "calibrate: the model has no aquatic quantizers to calibrate; quantize it first, "
            "e.g. aquatic.quantize(model, aquatic.qconfig.int8)"
        )
    batches = take_batches(data, num_batches, "calibrate")
    learned = _watch_learned(quantizers)
    modes = [(module, module.training) for module in model.modules()]
    for quantizer in quantizers:
        observer = quantizer._modules.get("observer")
        if isinstance(observer, RangeObserver):
            observer.initialized = False  # discard earlier ranges: same data, same result
    device = device_of(model)
    reset_states(model)
    try:
        model.eval()
        for quantizer in quantizers:
            quantizer.train()  # observers update in training mode only
            quantizer.observer_enabled = True
        with torch.no_grad():
            for i, batch in enumerate(progress_bar(batches, progress, "calibrate")):
                model(model_input(batch, device))
                if i == 0:
                    _stop_parameter_observers(model)
    finally:
        for module, mode in modes:
            module.training = mode
        for _, _, handle in learned:
            handle.remove()
        reset_states(model)
    for quantizer, observer, _ in learned:
        if observer.initialized:
            initialize_from(quantizer, observer)
    freeze_observers(model)
    float_weights = None
    if rounding == "adaround":
        if bias_correction:  # the rounding moves the weights: keep the float ones
            float_weights = {n: m.weight.detach().clone() for n, m in correctable_layers(model)}
        adaround(model, batches, iters=rounding_iters, progress=progress)
    if bias_correction:
        correct_bias(model, batches, progress, float_weights)
    return model


def _stop_parameter_observers(model: nn.Module) -> None:
    """Back to eval mode for the quantizers of parameters (weights, thresholds, ...).

    A parameter is the same tensor in every batch, and every observer gives the same
    range from the same tensor seen once or many times (a running extremum, a moving
    average or a mean of equal values stays put): once observed, it need not be again.
    """
    for module in model.modules():
        quantizers = getattr(module, "quantizers", None)
        names = getattr(type(module), "_quantized_params", None)
        if not isinstance(quantizers, nn.ModuleDict) or not names:
            continue
        for name in names:
            if name in quantizers and getattr(quantizers[name], "observed", False):
                quantizers[name].train(False)


def _watch_learned(quantizers: List[Quantizer]) -> List[Tuple[Quantizer, RangeObserver, Any]]:
    """An observer on the input of each learned quantizer, fed by a forward pre-hook."""
    watched = []
    for quantizer in quantizers:
        observer = calibration_observer(quantizer)
        if observer is None:
            continue
        first = next(iter(quantizer.parameters()), None)
        if first is not None:
            observer.to(first.device)

        def hook(module: nn.Module, args: Tuple[Any, ...], observer=observer) -> None:
            observer(args[0].detach())

        watched.append((quantizer, observer, quantizer.register_forward_pre_hook(hook)))
    return watched
