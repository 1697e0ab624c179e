"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV, section 4.2).

Quantizing a layer's weights :math:`W` to :math:`\\tilde W` shifts the mean of its
output by :math:`\\mathbb{E}[(W - \\tilde W) x]`, a bias the next layers have not seen.
Measured on calibration data, the shift is added to the layer's bias so that the
quantized layer's output has the float layer's mean again:

.. math::

    b \\leftarrow b + \\mathbb{E}_x[\\,W x - \\tilde W x\\,]

Layers are corrected one after the other, in the model's order, each on the inputs the
quantized model (with the layers before it corrected) gives it. Layers without a bias
or without a weight quantizer are left alone.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from aquatic.nn.base import eval_mode
from aquatic.nn.twin import TorchTwin
from aquatic.ptq.batches import device_of, model_input, progress_bar, reset_states
from aquatic.switches import disable_fake_quant

__all__ = ["correct_bias", "correctable_layers"]


def correctable_layers(model: nn.Module) -> List[Tuple[str, TorchTwin]]:
    """The layers with a bias and a weight quantizer, in the model's order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, TorchTwin)
        and module.bias is not None
        and "weight" in module.quantizers
    ]


def _channel_dim(layer: nn.Module, output: Tensor) -> int:
    if isinstance(layer, nn.Linear):
        return output.dim() - 1
    # Convolutions: (N, C, ...) batched, (C, ...) unbatched.
    return 1 if output.dim() == layer.weight.dim() else 0


@torch.no_grad()
def _twins(layer: TorchTwin, float_weight: Optional[Tensor]) -> Tuple[nn.Module, nn.Module]:
    """Plain torch copies of ``layer``: float weight (``float_weight`` if given), and
    quantized weight (float bias)."""
    with disable_fake_quant(layer):
        float_twin = layer.to_float(baked=True)
    if float_weight is not None:
        float_twin.weight.copy_(float_weight)
    quantizer = layer.quantizers["weight"]
    with eval_mode([quantizer]):
        weight = quantizer(layer.weight)
    quant_twin = copy.deepcopy(float_twin)
    quant_twin.weight.data.copy_(weight)
    return float_twin, quant_twin


def _observe_bias_again(layer: TorchTwin) -> None:
    # A bias quantizer with a range of its own observed the old bias; its observer is
    # frozen, so it is refilled here from the corrected one.
    quantizer = layer.quantizers["bias"] if "bias" in layer.quantizers else None
    observer = getattr(quantizer, "observer", None)
    if observer is not None and hasattr(observer, "initialized"):
        observer.initialized = False
        quantizer.observe(layer.bias.detach())


@torch.no_grad()
def correct_bias(
    model: nn.Module,
    batches: List[Any],
    progress: bool = False,
    float_weights: Optional[Mapping[str, Tensor]] = None,
) -> nn.Module:
    """Add to each quantized layer's bias the mean output shift its weight quantization causes.

    Args:
        model: a calibrated model (weight quantizers with ranges).
        batches: the calibration batches (as for :func:`aquatic.calibrate`).
        progress: show a tqdm progress bar over the layers.
        float_weights: ``{layer name: float weight}`` for layers whose weight no longer
            holds the float value (moved onto its grid by :func:`aquatic.ptq.adaround`):
            the shift is measured against these. Others use their own weight.

    Returns:
        ``model``, its biases corrected in place.

    Warns:
        UserWarning: naming the layers whose weight lies on its grid already (nothing to
            correct against), unless ``float_weights`` gives theirs.
    """
    float_weights = dict(float_weights or {})
    on_grid: List[str] = []
    device = device_of(model)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        layers = correctable_layers(model)
        for name, layer in progress_bar(layers, progress, "bias correction"):
            float_twin, quant_twin = _twins(layer, float_weights.get(name))
            if name not in float_weights and torch.equal(float_twin.weight, quant_twin.weight):
                on_grid.append(name)
                continue
            total: List[Optional[Tensor]] = [None]
            count = [0]

            def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
                x = args[0]
                shift = float_twin(x) - quant_twin(x)
                dim = _channel_dim(module, shift)
                dims = [d for d in range(shift.dim()) if d != dim]
                summed = shift.double().sum(dim=dims)
                total[0] = summed if total[0] is None else total[0] + summed
                count[0] += shift.numel() // shift.shape[dim]

            handle = layer.register_forward_hook(hook)
            try:
                for batch in batches:
                    model(model_input(batch, device))
            finally:
                handle.remove()
            if total[0] is not None and count[0]:
                layer.bias.add_((total[0] / count[0]).to(layer.bias.dtype))
                _observe_bias_again(layer)
            reset_states(model)
    finally:
        for module, mode in modes:
            module.training = mode
    if on_grid:
        warnings.warn(
            f"correct_bias: the weights of {', '.join(on_grid)} lie on their grid already, "
            "so there is no shift to correct; if aquatic.ptq.adaround moved them there, "
            "pass their float weights (float_weights=) or use aquatic.calibrate(..., "
            'rounding="adaround", bias_correction=True)',
            UserWarning,
            stacklevel=3,  # past torch.no_grad's wrapper, to the caller
        )
    return model
