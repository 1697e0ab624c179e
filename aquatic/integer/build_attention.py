"""Building the :class:`~aquatic.integer.attention.IntegerMultiheadAttention` of a
quantization-aware :class:`aquatic.nn.MultiheadAttention`."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

from aquatic.integer.attention import IntegerMultiheadAttention
from aquatic.integer.base import QSpec
from aquatic.integer.build_norm import check_input_grid
from aquatic.integer.reading import describe, grid_steps, read_grid
from aquatic.nn import Linear, MultiheadAttention

__all__ = ["build_attention"]

_NEEDED = ("q", "k", "v", "attention")


def _weight(quantizer: nn.Module, value: Tensor, where: str, notes: List[str]):
    """Codes minus zero points, and the scale (one, or one per row)."""
    grid = read_grid(quantizer, where, notes, False)
    if grid.per_channel and grid.ch_axis % 2 != 0:
        raise ValueError(f"{where} is quantized per column; use ch_axis=0 (per row) or one scale")
    return grid_steps(value, grid, where), grid.scale


def _grid(quantizer: nn.Module, where: str, notes: List[str]) -> Tuple[Tensor, List[int]]:
    grid = read_grid(quantizer, where, notes)
    if grid.per_channel:
        raise ValueError(f"{where} quantizes per channel; use one scale (ch_axis=None)")
    return grid.scale, [int(grid.zero_point), grid.quant_min, grid.quant_max]


def _bias(value: Optional[Tensor]) -> Optional[List[float]]:
    return None if value is None else value.detach().double().cpu().tolist()


def build_attention(
    name: str,
    module: nn.Module,
    spec: QSpec,
    key: Optional[QSpec] = None,
    value: Optional[QSpec] = None,
) -> Tuple[IntegerMultiheadAttention, QSpec]:
    """The integer attention of ``module`` for query codes described by ``spec`` (and key
    and value codes by ``key``, ``value``; by default the query's: self-attention).

    Raises:
        TypeError: ``module`` is a ``torch.nn.MultiheadAttention``.
        ValueError: a quantizer the integer model needs is missing (weights, ``q``,
            ``k``, ``v``, ``attention``, ``out_proj``'s weight and activation),
            ``add_bias_kv`` or ``add_zero_attn``, or input codes without one scale and
            a range.
    """
    where = describe(name, module)
    if not isinstance(module, MultiheadAttention):
        raise TypeError(
            f"{where} is a float torch.nn.MultiheadAttention; build it as "
            "aquatic.nn.MultiheadAttention with a qconfig (aquatic.quantize does)"
        )
    if module.bias_k is not None or module.add_zero_attn:
        raise ValueError(
            f"{where} has add_bias_kv={module.bias_k is not None}, "
            f"add_zero_attn={module.add_zero_attn}; the integer attention has neither"
        )
    specs = {"query": spec, "key": key or spec, "value": value or key or spec}
    for which, found in specs.items():
        check_input_grid(found, f"{where} ({which})")
    quantizers, out = module.quantizers, module.out_proj
    same = module.__dict__.get("_same_dims", True)
    weights = ("in_proj_weight",) if same else ("q_proj_weight", "k_proj_weight", "v_proj_weight")
    out_needed = ("weight", "activation")
    missing = [k for k in weights + _NEEDED if k not in quantizers]
    if not isinstance(out, Linear):
        missing.append("out_proj")
    else:
        missing += [f"out_proj.{k}" for k in out_needed if k not in out.quantizers]
    if missing:
        raise ValueError(
            f"{where} has no quantizer {', '.join(missing)}; the integer model needs "
            "QConfig.weight and QConfig.activation (e.g. aquatic.qconfig.int8)"
        )
    if "bias" in out.quantizers and out.quantizers["bias"].follows_input_scale:
        raise ValueError(
            f"{where}: out_proj's bias quantizer follows the input scale, which there is the "
            "product of the attention and value grids; use a bias quantizer with a scale of "
            "its own"
        )
    notes: List[str] = []
    values = module.quantize_params()
    scales: Dict[str, object] = {k: float(s.scale) for k, s in specs.items()}
    grids = {k: [int(s.zero_point), s.low, s.high] for k, s in specs.items()}
    codes = {}
    if same:
        steps, scale = _weight(
            quantizers["in_proj_weight"],
            values["in_proj_weight"],
            f"{where}, in_proj_weight",
            notes,
        )
        rows = scale.expand(steps.shape[0]).chunk(3) if scale.dim() else (scale,) * 3
        for signal, part, row in zip("qkv", steps.chunk(3), rows):
            codes[signal], scales[f"weight_{signal}"] = part, row.tolist()
    else:
        for signal in "qkv":
            key_name = f"{signal}_proj_weight"
            steps, scale = _weight(
                quantizers[key_name], values[key_name], f"{where}, {key_name}", notes
            )
            codes[signal], scales[f"weight_{signal}"] = steps, scale.tolist()
    out_values = out.quantize_params()
    steps, scale = _weight(
        out.quantizers["weight"], out_values["weight"], f"{where}, out_proj.weight", notes
    )
    codes["out"], scales["weight_out"] = steps, scale.tolist()
    for signal in _NEEDED:
        scale, grids[signal] = _grid(quantizers[signal], f"{where}, quantizer {signal!r}", notes)
        scales[signal] = float(scale)
    scale, grids["output"] = _grid(
        out.quantizers["activation"], f"{where}, out_proj activation", notes
    )
    scales["output"] = float(scale)
    in_bias = values.get("in_proj_bias", module.in_proj_bias)
    parts = (None,) * 3 if in_bias is None else in_bias.chunk(3)
    biases = {signal: _bias(part) for signal, part in zip("qkv", parts)}
    biases["out"] = _bias(out_values.get("bias", out.bias))
    notes.append(
        f"{where}: the float model's projections, softmax and products are rounded in "
        "float32; codes next to a rounding boundary may be one step apart"
    )
    layer = IntegerMultiheadAttention(
        codes["q"],
        codes["k"],
        codes["v"],
        codes["out"],
        module.num_heads,
        scales,
        grids,
        biases,
        module.batch_first,
        name=name,
        notes=notes,
        source=type(module).__name__,
    )
    return layer, layer.output_spec()
