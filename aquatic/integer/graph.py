"""The integer model of a traced graph, which :func:`aquatic.convert` returns for models
that are not ``nn.Sequential``."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from aquatic.functional.fake_quant import broadcast_along
from aquatic.functional.integer import check_integer
from aquatic.integer.base import IntegerModule, QSpec
from aquatic.integer.graph_archive import read_graph, write_graph
from aquatic.integer.graph_steps import TENSOR_FUNCTIONS, Ref, Step, fill_refs
from aquatic.integer.model import IntegerModel

__all__ = ["IntegerGraph", "Ref", "Step", "TENSOR_FUNCTIONS"]


def _map(value: Any, fn) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    return fn(value)


class IntegerGraph(nn.Module):
    """A graph of integer modules: integer codes in, integer codes out.

    The counterpart of :class:`~aquatic.integer.IntegerModel` for a model whose
    ``forward`` is not a chain (residual additions, concatenations, reshapes...), with
    the same edge API: :meth:`quantize_input`, :meth:`dequantize_output`, :attr:`exact`
    and :attr:`notes`, :meth:`save` and :meth:`load`. Every step either runs an integer
    module (``ops``) or moves codes without computing (a reshape, an index, a size query).

    Args:
        ops: the integer modules, by step name.
        steps: the :class:`Step` s, in running order.
        inputs: ``(name, spec, rounding, on_grid, notes)`` of each input, in order.
        output: the output's structure: a :class:`Ref`, or a tuple or list of them.
        output_specs: the :class:`~aquatic.integer.base.QSpec` of each output value, in
            the same structure.

    Shape:
        - Input: integer codes, the shapes the quantization-aware model takes.
        - Output: integer codes, as the quantization-aware model returns them.
    """

    def __init__(
        self,
        ops: Dict[str, IntegerModule],
        steps: Sequence[Step],
        inputs: Sequence[Tuple[str, QSpec, str, bool, List[str]]],
        output: Any,
        output_specs: Any,
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(ops)
        self.steps = list(steps)
        self.input_names = [name for name, *_ in inputs]
        # One edge model per input: it quantizes as the IntegerModel of a chain does.
        self._edges = [
            IntegerModel([], spec, spec, rounding, on_grid, notes)
            for _, spec, rounding, on_grid, notes in inputs
        ]
        self.output = output
        self.output_specs = output_specs

    @property
    def input_specs(self) -> List[QSpec]:
        return [edge.input_spec for edge in self._edges]

    @property
    def notes(self) -> List[str]:
        """Why outputs may differ from the quantization-aware model's (empty when exact)."""
        notes = [note for edge in self._edges for note in edge.input_notes]
        return notes + [note for op in self.ops.values() for note in op.notes]

    @property
    def exact(self) -> bool:
        return not self.notes

    def forward(self, *inputs: Tensor) -> Any:
        """Run the graph on integer input codes (one tensor per model input)."""
        if len(inputs) != len(self._edges):
            raise TypeError(f"the integer graph takes {len(self._edges)} inputs, got {len(inputs)}")
        env: Dict[str, Any] = {}
        for name, edge, codes in zip(self.input_names, self._edges, inputs):
            if not isinstance(codes, Tensor):
                raise TypeError(
                    f"input {name!r} must be a tensor of codes, got {type(codes).__name__}"
                )
            check_integer(codes, f"input {name!r}")
            spec = edge.input_spec
            if codes.numel() and (int(codes.min()) < spec.low or int(codes.max()) > spec.high):
                raise ValueError(
                    f"input {name!r} codes range over [{int(codes.min())}, {int(codes.max())}], "
                    f"outside [{spec.low}, {spec.high}]; use quantize_input"
                )
            env[name] = codes
        for step in self.steps:
            args, kwargs = fill_refs(step.args, env), fill_refs(step.kwargs, env)
            if step.module is not None:
                env[step.name] = self.ops[step.module](*args, **kwargs)
            else:
                env[step.name] = TENSOR_FUNCTIONS[step.function](*args, **kwargs)
        return fill_refs(self.output, env)

    @torch.no_grad()
    def quantize_input(self, *inputs: Tensor) -> Union[Tensor, Tuple[Tensor, ...]]:
        """Float inputs to int32 codes, each as its input quantizer does (see
        :meth:`aquatic.integer.IntegerModel.quantize_input`); a tuple for several inputs."""
        if len(inputs) != len(self._edges):
            raise TypeError(f"quantize_input takes {len(self._edges)} inputs, got {len(inputs)}")
        codes = tuple(edge.quantize_input(x) for edge, x in zip(self._edges, inputs))
        return codes[0] if len(codes) == 1 else codes

    def dequantize_output(self, codes: Any) -> Any:
        """Integer output codes to float32 real values ``(codes - z) * s`` (the same
        structure as the output: a tensor, or a tuple or list of them)."""
        return self._dequantize(codes, self.output_specs)

    def _dequantize(self, codes: Any, specs: Any) -> Any:
        if isinstance(specs, QSpec):
            check_integer(codes, "dequantize_output's input")
            centered = codes.to(torch.int64) - broadcast_along(specs.zero_point, specs.axis)
            return centered.float() * broadcast_along(specs.scale.float(), specs.axis)
        if isinstance(specs, (list, tuple)) and isinstance(codes, (list, tuple)):
            return type(specs)(self._dequantize(c, s) for c, s in zip(codes, specs))
        return codes  # a value that is no tensor of codes (a shape, a number)

    def save(self, f) -> None:
        """Save to a file name or file object: plain tensors and a JSON header, no
        pickled code (see :mod:`aquatic.integer.graph_archive`)."""
        inputs = [
            (name, edge.input_spec, edge.input_rounding, edge.input_on_grid, edge.input_notes)
            for name, edge in zip(self.input_names, self._edges)
        ]
        write_graph(dict(self.ops), self.steps, inputs, self.output, self.output_specs, f)

    @classmethod
    def load(cls, f) -> "IntegerGraph":
        """Load a graph saved by :meth:`save`; every field and tensor is checked first,
        and the accumulators check for int32 overflow as they run."""
        return cls(*read_graph(f))

    def extra_repr(self) -> str:
        return f"inputs={self.input_names}, steps={len(self.steps)}, exact={self.exact}"
