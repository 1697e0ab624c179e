"""Building the integer program of quantization-aware transformer encoder and decoder
layers (:mod:`aquatic.integer.transformer`)."""

from __future__ import annotations

from typing import List, Tuple

import torch.nn.functional as F
from torch import nn

from aquatic.integer.base import QSpec
from aquatic.integer.build import build_accumulator
from aquatic.integer.build_attention import build_attention
from aquatic.integer.build_graph import build_combine
from aquatic.integer.build_norm import build_layer_norm
from aquatic.integer.layers import IntegerReLU
from aquatic.integer.reading import describe
from aquatic.integer.transformer import INPUT, MEMORY, IntegerTransformerEncoderLayer, Program
from aquatic.nn import TransformerDecoderLayer, TransformerEncoderLayer

__all__ = [
    "DECODERS",
    "ENCODERS",
    "build_decoder",
    "build_decoder_layer",
    "build_encoder",
    "build_encoder_layer",
    "encoder_module",
]

#: The module types :func:`build_encoder` converts.
ENCODERS = (TransformerEncoderLayer, nn.TransformerEncoder)
#: The module types :func:`build_decoder` converts (given the target and the memory).
DECODERS = (TransformerDecoderLayer, nn.TransformerDecoder)


def _is_relu(activation) -> bool:
    return activation is F.relu or isinstance(activation, nn.ReLU)


class _Parts:
    """Appends the integer modules of one transformer layer's parts to a program."""

    def __init__(self, name: str, layer: nn.Module, program: Program) -> None:
        self.name, self.layer, self.program = name, layer, program
        self.where = describe(name, layer)

    def attention(self, block: str, x: str, x_spec: QSpec, memory=None) -> Tuple[str, QSpec]:
        """Self-attention on ``x``, or cross-attention on ``memory`` (``(key, spec)``)."""
        key = f"{self.name}.{block}"
        if memory is None:
            module, out = build_attention(key, getattr(self.layer, block), x_spec)
            return self.program.add(key, module, x), out
        source, spec = memory
        module, out = build_attention(key, getattr(self.layer, block), x_spec, spec, spec)
        return self.program.add(key, module, x, source, source), out

    def feed_forward(self, x: str, x_spec: QSpec) -> Tuple[str, QSpec]:
        name, layer = self.name, self.layer
        modules, out = build_accumulator(f"{name}.linear1", layer.linear1, x_spec)
        low = None if out.low is None else max(out.low, int(out.zero_point.min()))
        modules.append(IntegerReLU(out.zero_point, out.axis, name=f"{name}.relu", source="relu"))
        out = QSpec(out.scale, out.zero_point, out.axis, low, out.high)
        more, out = build_accumulator(f"{name}.linear2", layer.linear2, out)
        return self.program.chain(f"{name}.feed_forward", modules + more, x), out

    def residual(self, index: int, x: str, x_spec: QSpec, y: str, y_spec: QSpec):
        """``x + y`` requantized onto the grid of quantizer ``residual{index}``."""
        key = f"residual{index}"
        quantizer = self.layer.quantizers[key]
        module, out = build_combine(
            "add", f"{self.name}.{key}", [x_spec, y_spec], quantizer, f"{self.where}, {key}"
        )
        return self.program.add(f"{self.name}.{key}", module, x, y), out

    def norm(self, index: int, x: str, x_spec: QSpec) -> Tuple[str, QSpec]:
        key = f"{self.name}.norm{index}"
        module, out = build_layer_norm(key, getattr(self.layer, f"norm{index}"), x_spec)
        return self.program.add(key, module, x), out

    def check(self, twin: type) -> None:
        """Refuse torch's float layer, an activation other than ReLU, and missing
        residual quantizers."""
        where, layer = self.where, self.layer
        if not isinstance(layer, twin):
            raise TypeError(
                f"{where} is a float torch.nn.{twin.__name__}; build it as "
                f"aquatic.nn.{twin.__name__} with a qconfig (aquatic.quantize does)"
            )
        if not _is_relu(layer.activation):
            activation = getattr(layer.activation, "__name__", layer.activation)
            raise ValueError(
                f"{where} has activation {activation!r}, whose output feeds linear2 "
                "unquantized, on no grid; the integer model converts activation='relu'"
            )
        missing = [key for key in layer._quantized_states if key not in layer.quantizers]
        if missing:
            raise ValueError(
                f"{where} has no quantizer {', '.join(missing)} for its residual sums; build "
                "it with a QConfig that has an activation quantizer (e.g. aquatic.qconfig.int8)"
            )


def build_encoder_layer(
    name: str, layer: nn.Module, spec: QSpec, program: Program, source: str = INPUT
) -> Tuple[str, QSpec]:
    """Append the integer modules of encoder layer ``layer`` (input ``source`` of codes
    described by ``spec``) to ``program``; returns the output's key and spec.

    Raises:
        TypeError: a torch layer rather than the aquatic twin, or a decoder layer.
        ValueError: an activation other than ReLU, a missing residual quantizer, or a part
            that cannot convert (named by its own builder).
    """
    parts = _Parts(name, layer, program)
    if isinstance(layer, (nn.TransformerDecoderLayer, nn.TransformerDecoder)):
        raise TypeError(
            f"{parts.where} is a decoder layer, which takes tgt and memory; convert it "
            "with build_decoder_layer"
        )
    parts.check(TransformerEncoderLayer)
    x, x_spec = source, spec
    if layer.norm_first:
        h, h_spec = parts.attention("self_attn", *parts.norm(1, x, x_spec))
        x, x_spec = parts.residual(1, x, x_spec, h, h_spec)
        f, f_spec = parts.feed_forward(*parts.norm(2, x, x_spec))
        return parts.residual(2, x, x_spec, f, f_spec)
    h, h_spec = parts.attention("self_attn", x, x_spec)
    x, x_spec = parts.norm(1, *parts.residual(1, x, x_spec, h, h_spec))
    f, f_spec = parts.feed_forward(x, x_spec)
    return parts.norm(2, *parts.residual(2, x, x_spec, f, f_spec))


def build_decoder_layer(
    name: str,
    layer: nn.Module,
    spec: QSpec,
    memory_spec: QSpec,
    program: Program,
    source: str = INPUT,
    memory: str = MEMORY,
) -> Tuple[str, QSpec]:
    """Append the integer modules of decoder layer ``layer`` (target ``source`` and
    ``memory`` of codes described by ``spec`` and ``memory_spec``) to ``program``;
    returns the output's key and spec.

    As torch's layer (Vaswani et al. 2017, fig. 1; pre-norm as Xiong et al. 2020):
    self-attention on the target, cross-attention of its result on ``memory``, then the
    feed-forward block, each in a residual sum (``residual1..3``) with its norm
    (``norm1..3``) after it (post-norm) or on its input (pre-norm).

    Raises:
        TypeError: a torch layer rather than the aquatic twin.
        ValueError: an activation other than ReLU, a missing residual quantizer, or a part
            that cannot convert (named by its own builder).
    """
    parts = _Parts(name, layer, program)
    parts.check(TransformerDecoderLayer)
    cross = (memory, memory_spec)
    x, x_spec = source, spec
    if layer.norm_first:
        h, h_spec = parts.attention("self_attn", *parts.norm(1, x, x_spec))
        x, x_spec = parts.residual(1, x, x_spec, h, h_spec)
        h, h_spec = parts.attention("multihead_attn", *parts.norm(2, x, x_spec), cross)
        x, x_spec = parts.residual(2, x, x_spec, h, h_spec)
        f, f_spec = parts.feed_forward(*parts.norm(3, x, x_spec))
        return parts.residual(3, x, x_spec, f, f_spec)
    h, h_spec = parts.attention("self_attn", x, x_spec)
    x, x_spec = parts.norm(1, *parts.residual(1, x, x_spec, h, h_spec))
    h, h_spec = parts.attention("multihead_attn", x, x_spec, cross)
    x, x_spec = parts.norm(2, *parts.residual(2, x, x_spec, h, h_spec))
    f, f_spec = parts.feed_forward(x, x_spec)
    return parts.norm(3, *parts.residual(3, x, x_spec, f, f_spec))


def build_decoder(name: str, module: nn.Module, spec: QSpec, memory_spec: QSpec, program: Program):
    """:func:`build_decoder_layer` for a layer, or for each layer of a
    ``torch.nn.TransformerDecoder`` in turn, all on the same memory (and its final
    ``norm``, if any)."""
    if not isinstance(module, nn.TransformerDecoder):
        return build_decoder_layer(name, module, spec, memory_spec, program)
    source = INPUT
    for index, layer in enumerate(module.layers):
        source, spec = build_decoder_layer(
            f"{name}.layers.{index}", layer, spec, memory_spec, program, source
        )
    if module.norm is not None:
        norm, spec = build_layer_norm(f"{name}.norm", module.norm, spec)
        source = program.add(f"{name}.norm", norm, source)
    return source, spec


def build_encoder(name: str, module: nn.Module, spec: QSpec, program: Program, source: str = INPUT):
    """:func:`build_encoder_layer` for a layer, or for each layer of a
    ``torch.nn.TransformerEncoder`` in turn (and its final ``norm``, if any)."""
    if not isinstance(module, nn.TransformerEncoder):
        return build_encoder_layer(name, module, spec, program, source)
    for index, layer in enumerate(module.layers):
        source, spec = build_encoder_layer(f"{name}.layers.{index}", layer, spec, program, source)
    if module.norm is not None:
        norm, spec = build_layer_norm(f"{name}.norm", module.norm, spec)
        source = program.add(f"{name}.norm", norm, source)
    return source, spec


def encoder_module(name: str, module: nn.Module, spec: QSpec):
    """``([IntegerTransformerEncoderLayer], spec)`` for an ``nn.Sequential``."""
    program = Program()
    _, spec = build_encoder(name, module, spec, program)
    notes: List[str] = [note for step in program for note in step.module.notes]
    layer = IntegerTransformerEncoderLayer(
        program, name=name, notes=notes, source=type(module).__name__
    )
    return [layer], spec
