"""The integer model that :func:`aquatic.convert` returns."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from aquatic.functional.fake_quant import broadcast_along
from aquatic.functional.integer import check_integer
from aquatic.integer import archive
from aquatic.integer.base import IntegerModule, QSpec

__all__ = ["IntegerModel"]

#: How far from the input grid (in steps) a value may lie when the input scale is assumed.
_ON_GRID = 1e-3


class IntegerModel(nn.Module):
    """A chain of integer modules: integer codes in, integer codes out.

    Use :meth:`quantize_input` and :meth:`dequantize_output` at the edges; in between,
    every operation is integer arithmetic (integer accumulators, requantization by
    integer multiplier and shift, saturation).

    Args:
        layers: the integer modules, in order.
        input_spec: scale, zero point and code range of the input.
        output_spec: scale (per tensor, or per channel along ``output_spec.axis``) and
            zero point of the output.
        input_rounding: how :meth:`quantize_input` rounds (``"nearest"``: half to even, or
            ``"floor"``), as the input quantizer does.
        input_on_grid: the quantization-aware model took its input unquantized (the input
            scale was given or assumed): :meth:`quantize_input` then refuses values that
            are not on the input grid, rather than silently rounding them.
        input_notes: why the input quantization may differ from the float model's.

    Attributes:
        layers: ``nn.ModuleList`` of :class:`~aquatic.integer.base.IntegerModule`.
        exact: whether every operation reproduces the quantization-aware model bit for
            bit (given inputs on the grid); :attr:`notes` says why not.

    Shape:
        - Input: integer codes, the shape the quantization-aware model takes.
        - Output: integer codes, the shape it returns.

    Example:
        >>> from aquatic.integer.layers import IntegerLinear
        >>> model = IntegerModel([IntegerLinear(torch.tensor([[2, -1]]))],
        ...                      QSpec(0.5, 0, low=-8, high=7), QSpec(0.25, 0))
        >>> codes = model.quantize_input(torch.tensor([[1.5, -2.0]]))
        >>> codes
        tensor([[ 3, -4]], dtype=torch.int32)
        >>> model.dequantize_output(model(codes))
        tensor([[2.5000]])
    """

    def __init__(
        self,
        layers: Sequence[IntegerModule],
        input_spec: QSpec,
        output_spec: QSpec,
        input_rounding: str = "nearest",
        input_on_grid: bool = False,
        input_notes: Optional[List[str]] = None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if input_spec.scale.dim() != 0 or input_spec.zero_point.dim() != 0:
            raise ValueError("the input of an integer model has one scale and one zero point")
        if not input_spec.bounded:
            raise ValueError("the input of an integer model needs a code range (low, high)")
        self.input_spec = input_spec
        self.output_spec = output_spec
        self.input_rounding = input_rounding
        self.input_on_grid = bool(input_on_grid)
        self.input_notes = list(input_notes or [])

    @property
    def notes(self) -> List[str]:
        """Why outputs may differ from the quantization-aware model's (empty when exact)."""
        return self.input_notes + [note for layer in self.layers for note in layer.notes]

    @property
    def exact(self) -> bool:
        return not self.notes

    def forward(self, input: Tensor) -> Tensor:
        """Run the integer layers on integer ``input`` codes."""
        if not isinstance(input, Tensor):
            raise TypeError(
                f"the integer model takes a tensor of codes, got {type(input).__name__}"
            )
        check_integer(input, "the integer model's input")
        spec = self.input_spec
        if input.numel() and (int(input.min()) < spec.low or int(input.max()) > spec.high):
            raise ValueError(
                f"input codes range over [{int(input.min())}, {int(input.max())}], outside the "
                f"input range [{spec.low}, {spec.high}] the model was converted for; use "
                "quantize_input, or convert with a wider input_range"
            )
        x = input
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.no_grad()
    def quantize_input(self, input: Tensor) -> Tensor:
        """Float ``input`` to int32 codes at the input scale (as the input quantizer does).

        Raises:
            ValueError: for NaN values (they have no code); with an assumed input scale
                (``input_scale=`` or spikes), for values off the input grid or outside the
                input range: the quantization-aware model saw them unrounded.
        """
        if not isinstance(input, Tensor) or not input.is_floating_point():
            hint = ""
            if (
                isinstance(input, Tensor)
                and not input.dtype.is_complex
                and input.dtype != torch.bool
            ):
                hint = (
                    "; integer inputs such as the row indices of an embedding are already "
                    "what the integer model takes: pass them to it directly"
                )
            raise TypeError(
                "quantize_input takes a floating-point tensor, got "
                f"{getattr(input, 'dtype', type(input).__name__)}{hint}"
            )
        nan = torch.isnan(input)
        if bool(nan.any()):
            where = tuple(int(i) for i in nan.nonzero()[0])
            raise ValueError(
                f"quantize_input got NaN ({int(nan.sum())} of {input.numel()} values, the "
                f"first at index {where}); NaN has no integer code: replace or drop those "
                "values (e.g. torch.nan_to_num) before quantizing"
            )
        spec = self.input_spec
        # As the quantizers compute it: x * (1 / s) in float32 for nearest rounding (the
        # fake-quantize kernels), x / s for floor rounding.
        if self.input_rounding == "floor":
            steps = input.float() / spec.scale.float()
            rounded = torch.floor(steps)
        else:
            steps = input.float() * torch.reciprocal(spec.scale.float())
            rounded = torch.round(steps)
        zero_point = int(spec.zero_point)
        if self.input_on_grid and input.numel():
            off = float((steps - rounded).abs().max())
            if off > _ON_GRID:
                raise ValueError(
                    f"an input value lies {off:.3g} steps off the input grid (scale "
                    f"{float(spec.scale):g}); the quantization-aware model used it unrounded. "
                    "Put an aquatic.nn.ActivationQuantizer first in the model, or convert "
                    "with the input_scale of the data's grid"
                )
            low, high = float(rounded.min()) + zero_point, float(rounded.max()) + zero_point
            if low < spec.low or high > spec.high:
                raise ValueError(
                    f"input codes would range over [{low:g}, {high:g}], outside the input range "
                    f"[{spec.low}, {spec.high}]; convert with input_range=(low, high) covering it"
                )
        codes = torch.clamp(rounded + zero_point, spec.low, spec.high)
        return codes.to(torch.int32)

    def dequantize_output(self, codes: Tensor) -> Tensor:
        """Integer output ``codes`` to float32 real values ``(codes - z) * s``."""
        check_integer(codes, "dequantize_output's input")
        spec = self.output_spec
        centered = codes.to(torch.int64) - broadcast_along(spec.zero_point, spec.axis)
        # (q - z) * s in float32, as a quantizer dequantizes.
        return centered.float() * broadcast_along(spec.scale.float(), spec.axis)

    def save(self, f) -> None:
        """Save to a file name or file object (see :func:`aquatic.integer.save`)."""
        input_header = {
            **self.input_spec.header(),
            "rounding": self.input_rounding,
            "on_grid": self.input_on_grid,
            "notes": self.input_notes,
        }
        archive.write(list(self.layers), input_header, self.output_spec.header(), f)

    @classmethod
    def load(cls, f) -> "IntegerModel":
        """Load a model saved by :meth:`save` (see :func:`aquatic.integer.load`)."""
        header, layers = archive.read(f)
        spec = header["input"]
        return cls(
            layers,
            QSpec.from_header(spec),
            QSpec.from_header(header["output"]),
            input_rounding=spec["rounding"],
            input_on_grid=spec["on_grid"],
            input_notes=spec["notes"],
        )
