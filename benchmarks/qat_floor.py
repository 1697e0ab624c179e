"""What the arithmetic of int8 QAT costs as bare PyTorch operations: a reference for eager QAT.

``benchmarks/qat_overhead.py`` times aquatic's int8 QAT (``aquatic.qconfig.int8``) against
float training. This script times, beside them, the same arithmetic written as bare tensor
operations with the fewest Python calls (no observers, no modules, the range and scale as
Python floats or small tensors): for each weight its extrema, ``x * (1/s)``, rounding and
the scale back (per channel: the minimum and the maximum as two reductions, and a pass that
turns ``-0.0`` into ``+0.0``); for each activation its extrema, a moving-average range, and
the clamp and straight-through mask of codes that clip. Its ratio to float is what eager
fake quantization costs in PyTorch operations before any framework overhead. aquatic's
compiled loops (:mod:`aquatic.functional.fake_quant_jit`, with Numba) do the same
arithmetic in fewer passes, so its ratio can fall under this one (per-channel weights do).

Two more rows split aquatic's own cost (``--no-ladder`` leaves them out), each the int8
model with every quantizer's ``forward`` replaced:

- ``outputs only``: each quantizer returns the tensor that aquatic's compiled step writes
  into, with its autograd node, and no arithmetic: a weight's copy (``clone``, the identity
  gradient) and an activation's product with a mask (``x * mask``, the masked gradient;
  a mask of ones, so the values stay the input's). Its ratio is the cost of
  materializing the fake-quantized tensors.
- ``bare steps``: each quantizer calls its compiled step
  (:func:`~aquatic.functional.fake_quant_jit.observe_scalar_step`, per channel
  :func:`~aquatic.functional.fake_quant_jit.minmax_rows_step`) directly with the
  arguments its plan (:class:`~aquatic.quantizers.fused.Plan`) decided, skipping the
  quantizer's and the plan's checks: the cost of the passes themselves, with the fewest
  Python calls.

Between ``float``, ``outputs only``, ``bare steps`` and ``aquatic``, a run shows what the
copies, the loops and the checks each add.

The floor model is a cost reference, not a quantizer: it is not checked against aquatic's
values. Usage::

    python benchmarks/qat_floor.py [--threads 2] [--rounds 20] [--steps 5] [--models mlp,cnn]
        [--no-ladder]
"""

from __future__ import annotations

import argparse
import copy
import types
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import aquatic
from aquatic.functional import fake_quant_jit
from aquatic.quantizers import Quantizer
from qat_overhead import INT8_PER_CHANNEL, MODELS, Variant, measure

_ZERO = torch.zeros(())


class _Identity(torch.autograd.Function):
    """Fake-quantized weight values with the straight-through (identity) gradient."""

    @staticmethod
    def forward(ctx, weight: Tensor, inv: Tensor, scale: Tensor) -> Tensor:
        return _dequantize(torch.mul(weight, inv).round_(), scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


def _dequantize(codes: Tensor, scale) -> Tensor:
    if isinstance(scale, Tensor):  # per channel: codes * s, then -0.0 -> +0.0
        return torch.mul(codes, scale, out=codes).add_(0.0)
    return torch.add(_ZERO, codes, alpha=scale, out=codes)


class FloorQAT(nn.Module):
    """A Linear or Conv2d with int8 weights (min/max range) and an int8 output (moving
    average range), as bare tensor operations."""

    def __init__(self, layer: nn.Module, per_channel: bool, output: bool) -> None:
        super().__init__()
        self.layer = layer
        self.per_channel = per_channel
        self.output = output
        self.weight_range: Optional[tuple] = None
        self.output_range: Optional[tuple] = None

    def _weight(self) -> Tensor:
        weight = self.layer.weight
        flat = weight.detach().flatten(1)
        if self.per_channel:
            low, high = torch.amin(flat, 1), torch.amax(flat, 1)
            if self.weight_range is not None:
                low = torch.minimum(self.weight_range[0], low)
                high = torch.maximum(self.weight_range[1], high)
            self.weight_range = (low, high)
            shape = (-1,) + (1,) * (weight.dim() - 1)
            scale = torch.maximum(-low, high).div_(127).clamp_(min=1e-7).view(shape)
            inv = torch.reciprocal(scale)
        else:
            low, high = (v.item() for v in torch.aminmax(flat))
            if self.weight_range is not None:
                low, high = min(low, self.weight_range[0]), max(high, self.weight_range[1])
            self.weight_range = (low, high)
            scale = max(max(-low, high) / 127, 1e-7)
            inv = 1.0 / scale
        if weight.numel() >= 65536:
            return _Identity.apply(weight, inv, scale)
        output = weight.clone()
        codes = torch.mul(weight.detach(), inv, out=output.detach()).round_()
        _dequantize(codes, scale)
        return output

    def _quantize_output(self, y: Tensor) -> Tensor:
        detached = y.detach()
        low, high = (v.item() for v in torch.aminmax(detached))
        if self.output_range is not None:
            old_low, old_high = self.output_range
            low, high = old_low + (low - old_low) * 0.01, old_high + (high - old_high) * 0.01
        self.output_range = (low, high)
        scale = max((max(high, 0.0) - min(low, 0.0)) / 255, 1e-7)
        zero_point = -round(min(low, 0.0) / scale)
        codes = torch.mul(detached, 1.0 / scale).round_()
        clamped = torch.clamp(codes, -zero_point, 255 - zero_point)
        mask = torch.eq(codes, clamped, out=codes)
        output = y * mask
        torch.add(_ZERO, clamped, alpha=scale, out=output.detach())
        return output

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        weight = self._weight()
        if isinstance(layer, nn.Conv2d):
            y = F.conv2d(x, weight, layer.bias, layer.stride, layer.padding)
        else:
            y = F.linear(x, weight, layer.bias)
        return self._quantize_output(y) if self.output else y


def floor_model(model: nn.Module, per_channel: bool) -> nn.Module:
    """``model`` (an ``nn.Sequential``) with its Linear and Conv2d layers as :class:`FloorQAT`;
    the last layer's output stays in float, as in ``aquatic.quantize``."""
    layers = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    return nn.Sequential(
        *(FloorQAT(m, per_channel, m is not layers[-1]) if m in layers else m for m in model)
    )


def _outputs_only(quantizer: Quantizer, input: Tensor) -> Tensor:
    """The tensor aquatic's compiled step writes into, with its autograd node: a copy
    where the gradient is the identity (a weight), else a product with a mask (aquatic's
    starts as zeros; ones here, so that the values stay the input's and the layers
    after it compute on realistic data)."""
    if quantizer.is_activation:
        return input * torch.ones_like(input)
    return input.clone()


def _bare_step(quantizer: Quantizer, input: Tensor) -> Tensor:
    """The quantizer's compiled step, called with its plan's arguments and no checks;
    the quantizer itself until it has a plan (its first training step decides one)."""
    plan = quantizer._plan  # the plan's decisions, read from outside for this row only
    output = None
    if plan is not None:
        step = (
            fake_quant_jit.minmax_rows_step if plan.channels else fake_quant_jit.observe_scalar_step
        )
        output = step(input, plan.min_val, plan.max_val, *plan.arguments)
    return Quantizer.forward(quantizer, input) if output is None else output


def replaced(model: nn.Module, forward: Callable[[Quantizer, Tensor], Tensor]) -> nn.Module:
    """``model`` with every quantizer's ``forward`` replaced by ``forward``; each
    quantizer says whether it is an activation's (``is_activation``)."""
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            module.is_activation = name.endswith("activation")
            module.forward = types.MethodType(forward, module)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", default="mlp,mlp512,cnn", help="comma-separated")
    parser.add_argument(
        "--no-ladder",
        action="store_true",
        help="leave out the outputs-only and bare-steps rows",
    )
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    sequential = sorted(n for n in MODELS if n != "rows")  # floor_model takes nn.Sequential
    if set(names) - set(sequential):
        parser.error(
            f"unknown model(s) {sorted(set(names) - set(sequential))}; choose from {sequential}"
        )
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, batch 64, {args.rounds} rounds of {args.steps} steps")
    print(f"{'model':<7} {'variant':<22} {'median step (ms)':>17} {'ratio':>7} {'p10-p90':>12}")
    for name in names:
        torch.manual_seed(0)
        float_model = MODELS[name]()
        models = {
            "float": Variant(float_model),
            "aquatic": Variant(aquatic.quantize(float_model, aquatic.qconfig.int8)),
            "floor": Variant(floor_model(copy.deepcopy(float_model), per_channel=False)),
            "aquatic pc": Variant(aquatic.quantize(float_model, INT8_PER_CHANNEL)),
            "floor pc": Variant(floor_model(copy.deepcopy(float_model), per_channel=True)),
        }
        if not args.no_ladder:
            int8 = aquatic.qconfig.int8
            models["outputs only"] = Variant(
                replaced(aquatic.quantize(float_model, int8), _outputs_only)
            )
            models["bare steps"] = Variant(
                replaced(aquatic.quantize(float_model, int8), _bare_step)
            )
            models["bare steps pc"] = Variant(
                replaced(aquatic.quantize(float_model, INT8_PER_CHANNEL), _bare_step)
            )
        for variant, r in measure(models, args.rounds, args.steps).items():
            print(
                f"{name:<7} {variant:<22} {r.seconds * 1e3:>17.3f} {r.ratio:>6.2f}x "
                f"{f'{r.low:.2f}-{r.high:.2f}':>12}"
            )


if __name__ == "__main__":
    main()
