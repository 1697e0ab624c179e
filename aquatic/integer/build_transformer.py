"""Building the integer program of quantization-aware transformer encoder layers
(:mod:`aquatic.integer.transformer`)."""

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
from aquatic.integer.transformer import INPUT, IntegerTransformerEncoderLayer, Program
from aquatic.nn import TransformerEncoderLayer

__all__ = ["ENCODERS", "build_encoder", "build_encoder_layer", "encoder_module"]

#: The module types :func:`build_encoder` converts.
ENCODERS = (TransformerEncoderLayer, nn.TransformerEncoder)


def _is_relu(activation) -> bool:
    return activation is F.relu or isinstance(activation, nn.ReLU)


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
    where = describe(name, layer)
    if isinstance(layer, (nn.TransformerDecoderLayer, nn.TransformerDecoder)):
        raise TypeError(
            f"{where}: the integer model has no transformer decoder layers; it converts "
            "aquatic.nn.TransformerEncoderLayer (alone or in a torch.nn.TransformerEncoder)"
        )
    if not isinstance(layer, TransformerEncoderLayer):
        raise TypeError(
            f"{where} is a float torch.nn.TransformerEncoderLayer; build it as "
            "aquatic.nn.TransformerEncoderLayer with a qconfig (aquatic.quantize does)"
        )
    if not _is_relu(layer.activation):
        raise ValueError(
            f"{where} has activation {getattr(layer.activation, '__name__', layer.activation)!r}, "
            "whose output feeds linear2 unquantized, on no grid; the integer model converts "
            "activation='relu'"
        )
    missing = [key for key in layer._quantized_states if key not in layer.quantizers]
    if missing:
        raise ValueError(
            f"{where} has no quantizer {', '.join(missing)} for its residual sums; build it "
            "with a QConfig that has an activation quantizer (e.g. aquatic.qconfig.int8)"
        )

    def attention(x: str, x_spec: QSpec) -> Tuple[str, QSpec]:
        module, out = build_attention(f"{name}.self_attn", layer.self_attn, x_spec)
        return program.add(f"{name}.self_attn", module, x), out

    def feed_forward(x: str, x_spec: QSpec) -> Tuple[str, QSpec]:
        modules, out = build_accumulator(f"{name}.linear1", layer.linear1, x_spec)
        low = None if out.low is None else max(out.low, int(out.zero_point.min()))
        modules.append(IntegerReLU(out.zero_point, out.axis, name=f"{name}.relu", source="relu"))
        out = QSpec(out.scale, out.zero_point, out.axis, low, out.high)
        more, out = build_accumulator(f"{name}.linear2", layer.linear2, out)
        return program.chain(f"{name}.feed_forward", modules + more, x), out

    def residual(index: int, x: str, x_spec: QSpec, y: str, y_spec: QSpec):
        key = f"residual{index}"
        module, out = build_combine(
            "add", f"{name}.{key}", [x_spec, y_spec], layer.quantizers[key], f"{where}, {key}"
        )
        return program.add(f"{name}.{key}", module, x, y), out

    def norm(index: int, x: str, x_spec: QSpec) -> Tuple[str, QSpec]:
        module, out = build_layer_norm(
            f"{name}.norm{index}", getattr(layer, f"norm{index}"), x_spec
        )
        return program.add(f"{name}.norm{index}", module, x), out

    x, x_spec = source, spec
    if layer.norm_first:
        h, h_spec = attention(*norm(1, x, x_spec))
        x, x_spec = residual(1, x, x_spec, h, h_spec)
        f, f_spec = feed_forward(*norm(2, x, x_spec))
        return residual(2, x, x_spec, f, f_spec)
    h, h_spec = attention(x, x_spec)
    x, x_spec = norm(1, *residual(1, x, x_spec, h, h_spec))
    f, f_spec = feed_forward(x, x_spec)
    return norm(2, *residual(2, x, x_spec, f, f_spec))


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
