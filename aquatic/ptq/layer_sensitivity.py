"""Sensitivity: quantize one layer at a time and measure how much the output suffers."""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.functional.time_steps import has_time_axis
from aquatic.model import TWINS, in_float, twin_of
from aquatic.ptq.batches import (
    check_model,
    device_of,
    model_input,
    progress_bar,
    take_batches,
    target_of,
)
from aquatic.ptq.calibration import calibrate
from aquatic.ptq.candidates import candidate_list
from aquatic.ptq.records import SensitivityRecord, SensitivityTable
from aquatic.qconfig import QConfig

__all__ = ["sensitivity", "LayerRunner", "analysed"]

Metric = Callable[[Tensor, Any], Any]


def _steps(model: nn.Module) -> Optional[List[nn.Module]]:
    """The modules a (nested) ``nn.Sequential`` runs one after the other; else ``None``."""
    if not isinstance(model, nn.Sequential):
        return None
    steps: List[nn.Module] = []
    for child in model:
        inner = _steps(child)
        steps += [child] if inner is None else inner
    return steps


def analysed(module: nn.Module) -> bool:
    """Whether :func:`sensitivity` analyses ``module``: a float layer that
    :func:`aquatic.quantize` converts (:func:`aquatic.model.in_float`: a ``torch.nn``
    layer, or an aquatic twin built with ``qconfig=None``) with one weight tensor
    (``Linear``, convolutions)."""
    return in_float(module) and isinstance(getattr(module, "weight", None), Tensor)


def _refuse_time_axis(name: str, module: nn.Module, input: Any) -> None:
    """A ``torch.nn`` convolution handed ``(N, T, C, *)``: name the layer and the fix."""
    size = getattr(module, "kernel_size", None)
    if type(module) in TWINS and isinstance(size, tuple) and isinstance(input, Tensor):
        if has_time_axis(input, len(size) + 2):
            kind = type(module).__name__
            raise ValueError(
                f"layer {name!r} (torch.nn.{kind}) got an input with a time axis, "
                f"{tuple(input.shape)}, which torch's convolution refuses; build it as "
                f"aquatic.nn.{kind} (qconfig=None keeps it float), which runs each step"
            )


class LayerRunner:
    """Runs a float model once, caching each layer's input, then replays from a layer on.

    For a (nested) ``nn.Sequential`` whose layers are its steps, a layer's variant runs
    on the cached input and only the steps after it run again; in any other model the
    whole model runs with the layer's output replaced (correct, but without the saving).

    Args:
        model: the float model (the layers :func:`analysed` accepts are the ones
            analysed).
        batches: the data, as for :func:`aquatic.calibrate`.
        progress: tqdm bar for the caching pass.
        rounding, rounding_iters, bias_correction: how each quantized layer is
            calibrated, as by :func:`aquatic.calibrate`.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: List[Any],
        progress: bool = False,
        rounding: str = "nearest",
        rounding_iters: int = 1000,
        bias_correction: bool = False,
    ) -> None:
        self.model = model
        self.rounding, self.rounding_iters = rounding, rounding_iters
        self.bias_correction = bias_correction
        self.batches = batches
        self.device = device_of(model)
        # Layers with one weight tensor (Linear, convolutions): what the costs count.
        self.layers: List[Tuple[str, nn.Module]] = [
            (name, module) for name, module in model.named_modules() if analysed(module)
        ]
        if not self.layers:
            supported = ", ".join(f"nn.{cls.__name__}" for cls in TWINS)
            raise ValueError(
                f"the model has no layers to quantize (supported: {supported}, and their "
                "aquatic.nn twins built with qconfig=None); pass the float model, before "
                "aquatic.quantize"
            )
        steps = _steps(model)
        self.index: Dict[str, int] = {}
        if steps is not None:
            position = {id(step): i for i, step in enumerate(steps)}
            self.index = {n: position[id(m)] for n, m in self.layers if id(m) in position}
        self.steps = steps
        self.inputs: Dict[str, List[Tensor]] = {name: [] for name, _ in self.layers}
        self.outputs: List[Tensor] = []
        handles = []
        for name, module in self.layers:

            def hook(module: nn.Module, args: Tuple[Any, ...], name: str = name) -> None:
                _refuse_time_axis(name, module, args[0])
                if len(self.inputs[name]) < len(self.outputs) + 1:
                    self.inputs[name].append(args[0].detach())

            handles.append(module.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                for batch in progress_bar(batches, progress, "float pass"):
                    self.outputs.append(model(model_input(batch, self.device)))
        finally:
            for handle in handles:
                handle.remove()
        unused = [name for name, _ in self.layers if not self.inputs[name]]
        self.layers = [(n, m) for n, m in self.layers if n not in unused]

    def run_with(self, name: str, replacement: nn.Module) -> List[Tensor]:
        """The model's outputs with layer ``name`` replaced by ``replacement``."""
        outputs = []
        with torch.no_grad():
            if name in self.index:
                after = self.steps[self.index[name] + 1 :]
                for x in self.inputs[name]:
                    y = replacement(x)
                    for step in after:
                        y = step(y)
                    outputs.append(y)
                return outputs
            layer = dict(self.layers)[name]
            handle = layer.register_forward_hook(lambda module, args, output: replacement(args[0]))
            try:
                for batch in self.batches:
                    outputs.append(self.model(model_input(batch, self.device)))
            finally:
                handle.remove()
        return outputs

    def quantized_layer(self, name: str, qconfig: QConfig) -> nn.Module:
        """Layer ``name`` quantized with ``qconfig`` and calibrated on its cached inputs."""
        layer = dict(self.layers)[name]
        if self.rounding != "nearest" or self.bias_correction:  # not the model's own
            layer = copy.deepcopy(layer)
        quantized = twin_of(layer, qconfig)
        quantized.eval()
        if any(True for _ in quantized.quantizers.modules()):
            calibrate(
                quantized,
                self.inputs[name],
                progress=False,
                rounding=self.rounding,
                rounding_iters=self.rounding_iters,
                bias_correction=self.bias_correction,
            )
        return quantized


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return torch.mean((output.float() - target.float()) ** 2)


def _score(outputs: List[Tensor], runner: LayerRunner, metric: Optional[Metric]) -> float:
    values = []
    for output, reference, batch in zip(outputs, runner.outputs, runner.batches):
        if metric is None:
            values.append(float(_mse(output, reference)))
        else:
            values.append(float(metric(output, target_of(batch, runner.device))))
    return sum(values) / len(values)


def sensitivity(
    model: nn.Module,
    qconfigs: Any,
    data: Iterable[Any],
    metric: Optional[Metric] = None,
    num_batches: Optional[int] = None,
    progress: bool = True,
    rounding: str = "nearest",
    rounding_iters: int = 1000,
    bias_correction: bool = False,
) -> SensitivityTable:
    """Quantize one layer at a time, with each candidate, and measure the damage.

    For each layer of ``model`` that :func:`aquatic.quantize` would convert (a
    ``torch.nn`` layer, or an aquatic twin built with ``qconfig=None``, such as the
    ``aquatic.nn.Conv2d`` of a spiking network on ``(N, T, C, H, W)``) and each
    candidate, that layer alone is quantized (calibrated on its own inputs,
    :func:`aquatic.calibrate`), the rest stays float, and the change of the metric
    against the float model is recorded. The float model runs once, caching each
    layer's input; each variant then runs from its layer on (for ``nn.Sequential``
    models), so the cost is one float pass plus, per layer and candidate, the rest of
    the model after it.

    Args:
        model: the trained float model (left unchanged).
        qconfigs: the candidates: a bit width (weights, symmetric per output channel,
            MSE-optimal ranges: :func:`aquatic.ptq.weight_qconfig`), a QConfig, or a
            sequence or a ``{label: candidate}`` mapping of them.
        data: batches as for :func:`aquatic.calibrate`.
        metric: ``metric(output, target) -> number`` over a batch, e.g. a loss (targets
            are the second item of ``(input, target)`` batches), smaller is better;
            ``None`` for the mean squared error against the float model's output.
        num_batches: use the first ``num_batches`` batches; ``None`` for all.
        progress: tqdm progress bar (when tqdm is installed).
        rounding, rounding_iters: how each quantized layer's weights are rounded, as
            for :func:`aquatic.calibrate` (``"adaround"``: each variant is judged after
            learned rounding, on the layer's cached inputs).
        bias_correction: judge each variant after bias correction on the layer's
            cached inputs (:func:`aquatic.ptq.correct_bias`), as a model calibrated
            with ``bias_correction=True`` will be.

    Returns:
        A :class:`~aquatic.ptq.SensitivityTable` of ``(layer, candidate, change)``
        records, in layer order; ``print`` it for a table (most sensitive first),
        ``.plot()`` for bars.

    Raises:
        ValueError: no batches; no layer to quantize; an unknown candidate; a
            ``torch.nn`` convolution given a time axis (build it as its ``aquatic.nn``
            twin, which runs each step).
        TypeError: a candidate is neither a bit width nor a QConfig.

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> torch.manual_seed(0); model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        <torch._C.Generator object at ...>
        >>> table = aquatic.sensitivity(model, (2, 8), [torch.randn(16, 8)], progress=False)
        >>> [(r.layer, r.candidate) for r in table]
        [('0', 2), ('0', 8), ('2', 2), ('2', 8)]
        >>> table.as_dict()["0"][2] > table.as_dict()["0"][8]
        True
    """
    check_model(model, "sensitivity")
    pairs = candidate_list(qconfigs, "sensitivity")
    batches = take_batches(data, num_batches, "sensitivity")
    if metric is not None and target_of(batches[0], None) is None:
        raise ValueError(
            "sensitivity: a metric compares outputs with targets, but the batches hold no "
            "targets; pass (input, target) batches, or metric=None for the output MSE"
        )
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        runner = LayerRunner(model, batches, progress, rounding, rounding_iters, bias_correction)
        baseline = 0.0 if metric is None else _score(runner.outputs, runner, metric)
        table = SensitivityTable(metric=_metric_name(metric), baseline=baseline)
        work = [(name, label, qconfig) for name, _ in runner.layers for label, qconfig in pairs]
        for name, label, qconfig in progress_bar(work, progress, "sensitivity"):
            outputs = runner.run_with(name, runner.quantized_layer(name, qconfig))
            table.append(SensitivityRecord(name, label, _score(outputs, runner, metric) - baseline))
    finally:
        for module, mode in modes:
            module.training = mode
    return table


def _metric_name(metric: Optional[Metric]) -> str:
    if metric is None:
        return "output MSE"
    return getattr(metric, "__name__", type(metric).__name__)
