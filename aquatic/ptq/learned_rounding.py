"""Learned rounding of weights on calibration data (AdaRound, Nagel et al. 2020).

Rounding every weight to its nearest grid point minimises each weight's own error,
not the error of the layer's output, which is what the next layers see. AdaRound
(Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization",
ICML) chooses, layer by layer in the model's order, whether each weight rounds down
or up, so that the layer's output on the calibration data stays close to the float
model's:

.. math::

    \\min_V \\; \\big\\| W x - \\tilde W(V)\\, \\hat x \\big\\|_F^2 + \\lambda f_{reg}(V)

with :math:`x` the layer's input in the float model, :math:`\\hat x` its input in the
quantized model with the layers before it already rounded (the paper's asymmetric
reconstruction, eq. 25, without the activation function), and the soft weight
:math:`\\tilde W(V)` and regulariser of :mod:`aquatic.functional.adaround`. Adam
optimises :math:`V` on random batches of the calibration inputs. The choice is then
*baked*: each weight is moved to the grid point it rounds to, so the layer's own
weight quantizer (nearest rounding, the same scale) reproduces the choice exactly,
and everything downstream (QAT, :func:`aquatic.convert`, exports) needs nothing new.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic import nn as qnn
from aquatic.functional.adaround import (
    annealed_beta,
    initial_logits,
    rectified_sigmoid,
    rounding_regularizer,
)
from aquatic.functional.grid import Grid, NoRangeError
from aquatic.functional.rounding import ROUNDING_MODES
from aquatic.nn.base import eval_mode
from aquatic.ptq.batches import (
    check_model,
    device_of,
    model_input,
    progress_bar,
    reset_states,
    take_batches,
)
from aquatic.ptq.rounding_records import RoundingRecord, RoundingReport
from aquatic.switches import disable_fake_quant

__all__ = ["adaround", "ADAROUND_LAYERS"]

#: The layers whose weights :func:`adaround` rounds (exact types).
ADAROUND_LAYERS = (qnn.Linear, qnn.Conv1d, qnn.Conv2d, qnn.Conv3d)

_NOT_RUN = "not run on the calibration data"
_KEPT = "nearest kept: the learned rounding was no better on the calibration data"


def adaround(
    model: nn.Module,
    data: Iterable[Any],
    iters: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-2,
    weight: float = 0.01,
    seed: int = 0,
    num_batches: Optional[int] = None,
    progress: bool = True,
) -> RoundingReport:
    """Learn each layer's weight rounding on ``data`` and bake it into the weights.

    For each :class:`aquatic.nn.Linear` and ``Conv1d/2d/3d`` whose weight quantizer
    rounds to nearest on a uniform grid (per tensor or per channel, with the range
    calibration gave it), in the model's order, the rounding of every weight (down or
    up) is learned to reproduce the float layer's output from the inputs the
    quantized model gives it (AdaRound, Nagel et al. 2020: rectified sigmoid with
    :math:`\\zeta = 1.1, \\gamma = -0.1`, regulariser weight ``weight`` with
    :math:`\\beta` annealed from 20 to 2 after a warm-up of 20% of the steps, Adam).
    The weight is then moved to the chosen grid point, so that the layer's weight
    quantizer gives exactly the learned rounding. If the learned rounding does not
    lower the layer's output error on the calibration data, the nearest rounding is
    kept (the weight is left as it was). Call it on a calibrated model
    (:func:`aquatic.calibrate` does, with ``rounding="adaround"``).

    Other layers with a weight quantizer are left alone and recorded: layers of other
    types (transposed convolutions, fused batch-norm layers, embeddings, recurrent and
    attention layers), quantizers that round otherwise (``"floor"``,
    ``"stochastic"``: a ``UserWarning`` names them; binary and ternary quantizers take a
    sign, with nothing to round, and are only recorded).

    The result is deterministic given ``seed`` (the batches of each step are drawn
    from a generator seeded with it). Calibrating again observes the moved weights,
    whose range may differ; round again after it.

    Args:
        model: a calibrated model (weight quantizers with ranges).
        data: the calibration batches, as for :func:`aquatic.calibrate`.
        iters: optimisation steps per layer.
        batch_size: samples per step (rows of a ``Linear``'s input, images of a
            convolution's; all of them when there are fewer).
        lr: Adam's learning rate for the rounding variables.
        weight: :math:`\\lambda`, the weight of the regulariser that drives each
            rounding to down or up.
        seed: seed of the batch draws.
        num_batches: use the first ``num_batches`` batches; ``None`` for all.
        progress: tqdm bar over the layers (when tqdm is installed).

    Returns:
        A :class:`~aquatic.ptq.RoundingReport`: one :class:`~aquatic.ptq.RoundingRecord`
        per layer with a weight quantizer (output MSE with nearest and with learned
        rounding, the fraction of weights flipped); ``model`` is changed in place.

    Raises:
        TypeError: ``model`` is not a module; ``data`` is not an iterable of batches.
        ValueError: a bad ``iters``, ``batch_size``, ``lr``, ``weight`` or ``seed``; no
            batches; no layer with a weight quantizer; a weight quantizer without a
            range (calibrate first).

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> mixing = torch.randn(8, 8)  # correlated inputs: where nearest is not best
        >>> batches = [torch.randn(32, 8) @ mixing for _ in range(4)]
        >>> qmodel = aquatic.calibrate(
        ...     aquatic.quantize(model, aquatic.ptq.weight_qconfig(3)), batches, progress=False
        ... )
        >>> report = aquatic.ptq.adaround(qmodel, batches, iters=200, progress=False)
        >>> [(r.layer, r.rounded, r.learned_mse <= r.nearest_mse) for r in report]
        [('0', True, True), ('2', True, True)]
        >>> w = qmodel[0].weight
        >>> torch.equal(qmodel[0].quantizers["weight"](w), w)  # on the grid: kept exactly
        True
    """
    check_model(model, "adaround")
    _check_options(iters, batch_size, lr, weight, seed)
    batches = take_batches(data, num_batches, "adaround")
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "quantizers", None), nn.ModuleDict)
        and "weight" in module.quantizers
    ]
    if not layers:
        raise ValueError(
            "adaround: the model has no layer with a weight quantizer; quantize and "
            "calibrate it first, e.g. aquatic.calibrate(aquatic.quantize(model, "
            "aquatic.ptq.weight_qconfig(4)), data)"
        )
    device = device_of(model)
    generator = torch.Generator().manual_seed(seed)
    report = RoundingReport()
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        plan = [(name, layer, _why_not(name, layer)) for name, layer in layers]
        targets = _float_outputs(model, [l for _, l, why in plan if why is None], batches, device)
        for name, layer, why in progress_bar(plan, progress, "adaround"):
            if why is None and not targets[layer]:
                why = _NOT_RUN
            if why is not None:
                report.append(RoundingRecord(name, False, why, math.nan, math.nan, 0.0))
                continue
            inputs = _inputs(model, layer, batches, device)
            if len(inputs) != len(targets[layer]):
                note = "called a different number of times in the float and quantized model"
                report.append(RoundingRecord(name, False, note, math.nan, math.nan, 0.0))
                continue
            options = (iters, batch_size, lr, weight, generator)
            report.append(_round_layer(name, layer, inputs, targets[layer], options))
    finally:
        for module, mode in modes:
            module.training = mode
        reset_states(model)
    _warn_skipped(report)
    return report


def _check_options(iters: Any, batch_size: Any, lr: Any, weight: Any, seed: Any) -> None:
    for name, value in (("iters", iters), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"adaround: {name} must be a positive int, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"adaround: lr must be a positive number, got {lr!r}; e.g. 1e-2")
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not 0 <= weight < math.inf
    ):
        raise ValueError(
            f"adaround: weight must be a number >= 0 (the regulariser's), got {weight!r}; "
            "e.g. 0.01"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"adaround: seed must be an int, got {seed!r}")


def _why_not(name: str, layer: nn.Module) -> Optional[str]:
    """Why ``layer``'s weight cannot be rounded by AdaRound; ``None`` if it can."""
    if type(layer) not in ADAROUND_LAYERS:
        supported = ", ".join(f"aquatic.nn.{cls.__name__}" for cls in ADAROUND_LAYERS)
        return f"{type(layer).__name__} is not supported (only {supported})"
    if "weight" not in layer._parameters:
        return "the weight is parametrized"
    quantizer = layer.quantizers["weight"]
    try:
        with eval_mode([quantizer]):
            grid = quantizer.grid()
    except NoRangeError:
        raise ValueError(
            f"adaround: the weight quantizer of layer {name!r} has no range yet; "
            "calibrate the model first (aquatic.calibrate(model, data))"
        ) from None
    except ValueError:
        return f"{type(quantizer).__name__} is not on a uniform grid"
    if grid.rounding not in ROUNDING_MODES:
        return f"{type(quantizer).__name__} does not round ({grid.rounding})"
    if grid.rounding != "nearest":
        return f"{type(quantizer).__name__} rounds with {grid.rounding!r}, not to nearest"
    return None


def _warn_skipped(report: RoundingReport) -> None:
    # A binary or ternary quantizer has nothing to round, and a kept nearest rounding
    # is AdaRound's own answer: only the layers it could not work on are named.
    named = [
        f"{r.layer} ({r.note})"
        for r in report.skipped
        if "does not round" not in r.note and r.note != _KEPT
    ]
    if named:
        warnings.warn(
            "adaround: these layers keep their weight quantizer's own rounding: "
            + "; ".join(named),
            UserWarning,
            stacklevel=3,
        )


def _run(model: nn.Module, batches: List[Any], device: Any) -> None:
    reset_states(model)
    with torch.no_grad():
        for batch in batches:
            model(model_input(batch, device))


def _float_outputs(
    model: nn.Module, layers: List[nn.Module], batches: List[Any], device: Any
) -> Dict[nn.Module, List[Tensor]]:
    """Each layer's outputs in the float model (every quantizer passing values through)."""
    outputs: Dict[nn.Module, List[Tensor]] = {layer: [] for layer in layers}
    handles = []
    for layer in layers:

        def hook(module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> None:
            outputs[module].append(output.detach())

        handles.append(layer.register_forward_hook(hook))
    try:
        with disable_fake_quant(model):
            _run(model, batches, device)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _inputs(model: nn.Module, layer: nn.Module, batches: List[Any], device: Any) -> List[Tensor]:
    """``layer``'s inputs in the quantized model (layers before it already rounded)."""
    inputs: List[Tensor] = []
    handle = layer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    try:
        _run(model, batches, device)
    finally:
        handle.remove()
    return inputs


def _samples(layer: nn.Module, tensors: List[Tensor]) -> Tensor:
    """The tensors as one batch of samples: rows for a Linear, images for a conv."""
    kept = 1 if isinstance(layer, nn.Linear) else len(layer.kernel_size) + 1
    return torch.cat([t.reshape(-1, *t.shape[t.dim() - kept :]) for t in tensors])


def _output_mse(twin: nn.Module, weight: Tensor, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float(torch.mean((_forward(twin, weight, x) - y) ** 2))


def _forward(twin: nn.Module, weight: Tensor, x: Tensor) -> Tensor:
    return torch.func.functional_call(twin, {"weight": weight}, (x,))


def _round_layer(
    name: str, layer: nn.Module, inputs: List[Tensor], outputs: List[Tensor], options: Tuple
) -> RoundingRecord:
    iters, batch_size, lr, weight, generator = options
    quantizer = layer.quantizers["weight"]
    with eval_mode([quantizer]), torch.no_grad():
        grid: Grid = quantizer.grid()
        nearest = quantizer(layer.weight)
    with disable_fake_quant(layer):
        twin = layer.to_float(baked=True)  # plain torch layer: float weight and bias
    twin.requires_grad_(False)
    x, y = _samples(layer, inputs), _samples(layer, outputs)
    w = layer.weight.detach()
    scale, zero_point = (t.detach().to(w.device) for t in grid.along(w))
    steps = w / scale
    floor = torch.floor(steps)
    v = initial_logits(steps - floor).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=lr)
    low, high = grid.quant_min, grid.quant_max

    def weight_of(h: Tensor) -> Tensor:
        return (torch.clamp(floor + h + zero_point, low, high) - zero_point) * scale

    warmup = int(0.2 * iters)
    for step in range(iters):
        if len(x) > batch_size:
            index = torch.randint(len(x), (batch_size,), generator=generator).to(x.device)
            xb, yb = x[index], y[index]
        else:
            xb, yb = x, y
        error = _forward(twin, weight_of(rectified_sigmoid(v)), xb) - yb
        loss = error.pow(2).reshape(len(xb), -1).sum(dim=1).mean()
        if step >= warmup and weight > 0:
            loss = loss + weight * rounding_regularizer(v, annealed_beta(step, iters))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        codes = torch.clamp(floor + (v >= 0).to(w.dtype) + zero_point, low, high).long()
        learned = grid.dequantize(codes).to(w.dtype)
        nearest_mse = _output_mse(twin, nearest, x, y)
        learned_mse = _output_mse(twin, learned, x, y)
        flipped = float((grid.codes(nearest) != codes).float().mean())
        if not learned_mse < nearest_mse:
            return RoundingRecord(name, False, _KEPT, nearest_mse, nearest_mse, 0.0)
        layer.weight.copy_(learned)
        with eval_mode([quantizer]):
            if not torch.equal(quantizer(layer.weight), learned):
                raise RuntimeError(
                    f"adaround: the weight quantizer of layer {name!r} does not reproduce "
                    "the learned rounding; its grid changed while rounding"
                )
    return RoundingRecord(name, True, "", nearest_mse, learned_mse, flipped)
