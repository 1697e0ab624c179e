"""Integer transformer encoder and decoder layers: a small program of integer modules.

An :class:`aquatic.nn.TransformerEncoderLayer` becomes the integer modules of its parts
(:class:`~aquatic.integer.IntegerMultiheadAttention`, the feed-forward
:class:`~aquatic.integer.IntegerLinear` / :class:`~aquatic.integer.IntegerRequantize` /
:class:`~aquatic.integer.IntegerReLU`, the residual sums as
:class:`~aquatic.integer.IntegerCombine` onto the ``residual1``/``residual2`` grids, and
:class:`~aquatic.integer.IntegerLayerNorm`), wired as torch's layer wires them, post-norm
or pre-norm (Xiong et al. 2020, fig. 1). The wiring is a :class:`Program`: in a traced
graph each module becomes a step of the :class:`~aquatic.integer.IntegerGraph` (which
saves), and in an ``nn.Sequential`` an :class:`IntegerTransformerEncoderLayer` runs it.

An :class:`aquatic.nn.TransformerDecoderLayer` becomes the same parts, with a second
attention block (cross-attention) that reads the program's second input
:data:`MEMORY` and a third residual sum; it takes two inputs, so it converts in a
traced graph only.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

from torch import Tensor, nn

from aquatic.integer.base import IntegerModule

__all__ = ["Instruction", "Program", "IntegerTransformerEncoderLayer"]

#: The name of a program's input among the values its instructions read.
INPUT = "input"
#: The name of a decoder program's second input, the encoder output it attends to.
MEMORY = "memory"


class Instruction(NamedTuple):
    """``values[key] = module(*(values[a] for a in args))``."""

    key: str
    module: IntegerModule
    args: Tuple[str, ...]


class Program(list):
    """Instructions run in order on the value ``"input"``; the last one's is the result."""

    def add(self, key: str, module: IntegerModule, *args: str) -> str:
        self.append(Instruction(key, module, tuple(args)))
        return key

    def chain(self, key: str, modules: Sequence[IntegerModule], source: str) -> str:
        """Run ``modules`` one after the other on ``source``; returns the last key."""
        for index, module in enumerate(modules):
            source = self.add(f"{key}_{index}", module, source)
        return source


class IntegerTransformerEncoderLayer(IntegerModule):
    """An integer transformer encoder layer (or a stack of them) in an ``nn.Sequential``.

    Args:
        program: the layer's :class:`Program` (from
            :func:`aquatic.integer.build_transformer.build_encoder_layer`).
        name, notes, source: see :class:`~aquatic.integer.base.IntegerModule`.

    It has no saved form of its own: :func:`aquatic.integer.save` refuses it. A model
    with a ``forward`` of its own converts to an :class:`~aquatic.integer.IntegerGraph`
    in which the same modules are steps, and that saves.

    Shape:
        - Input: codes shaped as the float layer's input. Output: the same shape.
    """

    kind = ""  # not saved

    def __init__(
        self,
        program: Program,
        name: str = "",
        notes: Optional[List[str]] = None,
        source: str = "",
    ) -> None:
        super().__init__(name, notes, source)
        self.keys = [step.key for step in program]
        self.args = [step.args for step in program]
        self.steps = nn.ModuleList(step.module for step in program)

    def forward(self, input: Tensor) -> Tensor:
        values = {INPUT: input}
        for key, args, module in zip(self.keys, self.args, self.steps):
            values[key] = module(*(values[a] for a in args))
        return values[self.keys[-1]]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, steps={len(self.keys)}"
