"""Checks of the tensors of a saved integer model, and of the ranges its integer
accumulators can reach (see :mod:`aquatic.integer._schema` for the header)."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from aquatic.integer._schema import fail
from aquatic.integer.base import INT32_MAX, KINDS
from aquatic.integer.recurrent import TANH_BITS

__all__ = ["check_layer", "certify"]

#: Right shifts beyond 62 give 0 (see ``rounding_right_shift``); left shifts (negative
#: values) of more than 62 bits would leave int64.
SHIFT_RANGE = (-62, 1024)
#: Left shifts of an accumulator (``pre_shift``).
PRE_SHIFT_RANGE = (0, 62)
#: Fixed-point multipliers have at most 31 bits (``quantize_multiplier``).
MULTIPLIER_RANGE = (1, 2**31 - 1)


def check_tensor(field: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise fail(field, f"must be a tensor, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise fail(field, f"must hold integers, got dtype {value.dtype}")
    return value


def in_range(field: str, value: Tensor, low: Optional[int], high: Optional[int]) -> None:
    if value.numel() == 0:
        return
    smallest, largest = int(value.min()), int(value.max())
    if (low is not None and smallest < low) or (high is not None and largest > high):
        raise fail(field, f"ranges over [{smallest}, {largest}], outside [{low}, {high}]")


def per_channel(field: str, value: Tensor, channels: Optional[int]) -> None:
    """A scalar, or a 1-D tensor with one entry per channel (``channels``, if known)."""
    if value.dim() == 0 or (value.dim() == 1 and value.numel() == 1):
        return
    if value.dim() != 1 or (channels is not None and value.numel() != channels):
        expected = "a scalar or 1-D" if channels is None else f"a scalar or ({channels},)"
        raise fail(field, f"must be {expected}, got shape {tuple(value.shape)}")


def needs_axis(field: str, value: Tensor, axis: Optional[int]) -> None:
    if value.numel() > 1 and axis is None:
        raise fail(field, "holds one value per channel, but the layer's axis is null")


def check_layer(
    index: Any, kind: str, config: Dict[str, Any], tensors: Dict[str, Any], known: tuple
) -> None:
    """The tensors of layer ``index``: names, integer dtypes, shapes and value ranges."""
    field = f"tensors['{index}.{{}}']"
    if kind == "recurrent_stack":  # each layer's tensors, named "<position>.<argument>"
        layers = config.get("layers", [])
        own: List[Dict[str, Any]] = [{} for _ in layers]
        for key, value in tensors.items():
            position, _, argument = key.partition(".")
            if not (position.isdigit() and argument and int(position) < len(layers)):
                raise fail(field.format(key), f"names no layer of the {len(layers)}")
            own[int(position)][argument] = value
        for position, (entry, values) in enumerate(zip(layers, own)):
            sub = entry["kind"]
            keys = KINDS[sub]._tensor_keys
            check_layer(f"{index}.{position}", sub, entry["config"], values, keys)
        return
    unknown = sorted(set(tensors) - set(known))
    if unknown:
        raise fail(f"tensors of header.layers[{index}] ({kind})", f"has unknown names {unknown}")
    values = {key: check_tensor(field.format(key), value) for key, value in tensors.items()}
    checker = _LAYER_CHECKS.get(kind)
    if checker is not None:
        checker(lambda key: field.format(key), config, values)


def _accumulator(name: Callable[[str], str], config: Dict[str, Any], t: Dict[str, Tensor]):
    if "weight" not in t:
        raise fail(name("weight"), "is missing")
    weight = t["weight"]
    conv = "dim" in config
    ndim = config.get("dim", 2) + 2 if conv else 2
    if weight.dim() != ndim:
        raise fail(name("weight"), f"must have {ndim} dims, got shape {tuple(weight.shape)}")
    out = weight.shape[0]
    if conv and config.get("transposed", False):
        out = weight.shape[1] * config.get("groups", 1)
    if "bias" in t and tuple(t["bias"].shape) != (out,):
        raise fail(name("bias"), f"must have shape ({out},), got {tuple(t['bias'].shape)}")
    # Codes of an int32 accumulator: anything beyond int32 cannot come from a conversion.
    for key in ("weight", "bias"):
        if key in t:
            in_range(name(key), t[key], -INT32_MAX - 1, INT32_MAX)
    in_features = None if conv else weight.shape[1]
    if "input_zero_point" in t:
        per_channel(name("input_zero_point"), t["input_zero_point"], in_features)
        needs_axis(name("input_zero_point"), t["input_zero_point"], config.get("input_axis"))
    if "pre_shift" in t:
        per_channel(name("pre_shift"), t["pre_shift"], out)
        in_range(name("pre_shift"), t["pre_shift"], *PRE_SHIFT_RANGE)


def _requantize(name: Callable[[str], str], config: Dict[str, Any], t: Dict[str, Tensor]):
    for key in ("multiplier", "shift"):
        if key not in t:
            raise fail(name(key), "is missing")
    channels = {v.numel() for v in t.values() if v.dim() == 1 and v.numel() > 1}
    if len(channels) > 1:
        raise fail(name("multiplier"), f"and its siblings disagree on the channels {channels}")
    for key, value in t.items():
        per_channel(name(key), value, None)
        needs_axis(name(key), value, config.get("axis"))
    in_range(name("multiplier"), t["multiplier"], *MULTIPLIER_RANGE)
    in_range(name("shift"), t["shift"], *SHIFT_RANGE)
    if "output_zero_point" in t:
        in_range(
            name("output_zero_point"), t["output_zero_point"], config.get("low"), config.get("high")
        )


def _zero_point_only(name: Callable[[str], str], config: Dict[str, Any], t: Dict[str, Tensor]):
    if "zero_point" in t:
        per_channel(name("zero_point"), t["zero_point"], None)


def _neuron(name: Callable[[str], str], config: Dict[str, Any], t: Dict[str, Tensor]):
    # Per-neuron values take any shape that broadcasts over the neurons ((C, 1, 1) for
    # channels of a convolutional layer): they must broadcast together.
    shaped = ("threshold", "bias", "min_v", "mem_num", "syn_num", "norm_num")
    try:
        torch.broadcast_shapes(*(t[key].shape for key in shaped if key in t))
    except RuntimeError:
        shapes = {key: tuple(t[key].shape) for key in shaped if key in t}
        raise fail(name("threshold"), f"and its siblings do not broadcast together: {shapes}")
    if "rec_weight" in t:
        rec = t["rec_weight"]
        if rec.dim() != 2 or rec.shape[0] != rec.shape[1]:
            raise fail(name("rec_weight"), f"must be square (n, n), got {tuple(rec.shape)}")
        for key in ("rec_multiplier", "rec_shift"):
            if key not in t:
                raise fail(name(key), "is missing (the layer has recurrent weights)")
    if config.get("spiking", True):
        if "threshold" not in t:
            raise fail(name("threshold"), "is missing (a spiking layer needs one)")
        in_range(name("threshold"), t["threshold"], 1, None)
    if "mem_num" not in t and config.get("v_rule") is None:
        raise fail(name("mem_num"), "is missing (the membrane decays by it)")
    if "syn_num" not in t and config.get("i_rule") is not None:
        raise fail(name("syn_num"), "is missing (the layer has a synaptic decay rule)")
    for decay in ("mem", "syn", "norm"):  # decays A 2**-P lie in [0, 1]
        if f"{decay}_num" in t:
            high = 2 ** config.get(f"{decay}_exp", 0)
            in_range(name(f"{decay}_num"), t[f"{decay}_num"], 0, high)
    for key, value in t.items():
        if key.endswith("multiplier"):
            in_range(name(key), value, *MULTIPLIER_RANGE)
        elif key.endswith("shift"):
            in_range(name(key), value, *SHIFT_RANGE)
    for which in ("v", "i"):
        quantized = f"{which}_multiplier" in t
        parts = ("shift", "back_multiplier", "back_shift")
        if quantized and not all(f"{which}_{part}" in t for part in parts):
            raise fail(name(f"{which}_multiplier"), "needs its shift, back_multiplier, back_shift")
        bounds = (config.get(f"{which}_low"), config.get(f"{which}_high"))
        if quantized and None in bounds:
            raise fail(f"the config {which}_low, {which}_high", "must be ints (quantized state)")
        rule = config.get(f"{which}_rule")
        if rule is not None:
            codes = t.get(f"{which}_rule_codes")
            if codes is None or not quantized:
                raise fail(name(f"{which}_rule_codes"), f"is needed by the {rule!r} decay rule")
            high = 2**16 - 1 if rule == "bitshift" else 2 ** config.get(f"{which}_rule_bits", 0)
            in_range(name(f"{which}_rule_codes"), codes, 0, high)


def _recurrent(name: Callable[[str], str], config: Dict[str, Any], t: Dict[str, Tensor]):
    """Weights ``(G H, in)`` and ``(G H, H)``, biases and per-row scales of ``G H``, and
    tables that cover the ``gates`` (and ``cell``) grid with codes on their target grid."""
    lstm = "cell" in config.get("grids", {})
    rnn = "gate_outputs" not in config.get("grids", {})  # the header check named the kind's
    tables = [("activation", "gates", "hidden")] if rnn else []
    if not rnn:
        tables = [("sigmoid", "gates", "gate_outputs"), ("tanh", "gates", "gate_outputs")]
    if lstm:
        tables.append(("cell_tanh", "cell", None))
    keys = ("weight_ih", "weight_hh") + tuple(key for key, _, _ in tables)
    for key in keys:
        if key not in t:
            raise fail(name(key), "is missing")
    w_ih, w_hh, w_hr = t["weight_ih"], t["weight_hh"], t.get("weight_hr")
    gates = 4 if lstm else 1 if rnn else 3
    if w_hr is None:
        if w_hh.dim() != 2 or w_hh.shape[1] == 0 or w_hh.shape[0] != gates * w_hh.shape[1]:
            raise fail(name("weight_hh"), f"must be ({gates} H, H), got shape {tuple(w_hh.shape)}")
    elif w_hh.dim() != 2 or w_hh.shape[1] == 0 or w_hh.shape[0] % gates:
        raise fail(name("weight_hh"), f"must be ({gates} H, H_out), got shape {tuple(w_hh.shape)}")
    rows = w_hh.shape[0]
    if w_ih.dim() != 2 or w_ih.shape[0] != rows:
        raise fail(name("weight_ih"), f"must be ({rows}, in), got shape {tuple(w_ih.shape)}")
    if w_hr is not None:
        expected = (w_hh.shape[1], rows // gates)
        if tuple(w_hr.shape) != expected:
            raise fail(
                name("weight_hr"), f"must be (H_out, H) = {expected}, got {tuple(w_hr.shape)}"
            )
        if "weight_hr" not in config.get("scales", {}):
            raise fail("the config's scales", "lack 'weight_hr', which the projection needs")
    for key in ("weight_ih", "weight_hh", "weight_hr"):
        if key in t:
            in_range(name(key), t[key], -INT32_MAX - 1, INT32_MAX)
    for key in ("bias_ih", "bias_hh"):
        if config.get(key) is not None and len(config[key]) != rows:
            raise fail(f"the config's {key}", f"must hold {rows} numbers, got {len(config[key])}")
    for key, scale in config.get("scales", {}).items():
        count = w_hh.shape[1] if key == "weight_hr" else rows
        if isinstance(scale, list) and len(scale) not in (1, count):
            raise fail(f"the config's scales[{key!r}]", f"must be a number or hold {count}")
    grids = config.get("grids", {})
    for key, source, target in tables:
        table = t[key]
        if source not in grids or (target is not None and target not in grids):
            continue  # the header check names the missing grid
        _, low, high = grids[source]
        if table.dim() != 1 or table.numel() != high - low + 1:
            raise fail(
                name(key),
                f"must hold one code per {source} code ({high - low + 1}), got shape {tuple(table.shape)}",
            )
        if target is None:
            in_range(name(key), table, -(2**TANH_BITS), 2**TANH_BITS)
        else:
            in_range(name(key), table, grids[target][1], grids[target][2])


_LAYER_CHECKS: Dict[str, Callable[..., None]] = {
    "rnn": _recurrent,
    "gru": _recurrent,
    "lstm": _recurrent,
    "linear": _accumulator,
    "conv": _accumulator,
    "requantize": _requantize,
    "relu": _zero_point_only,
    "sumpool": _zero_point_only,
    "neuron": _neuron,
}


# -- the ranges the accumulators can reach ---------------------------------------------------
Range = Optional[Tuple[int, int]]


def _magnitude(codes: Range, zero_point: Tensor) -> Optional[int]:
    """The largest ``|code - zero_point|`` (as ``QSpec.magnitude``), or ``None``."""
    if codes is None:
        return None
    low, high = codes
    return max(abs(low - int(zero_point.max())), abs(high - int(zero_point.min())), 0)


def _accumulator_bound(index: int, layer: Any, codes: Range) -> Range:
    """Check that the accumulator stays in int32 for inputs in ``codes``, as the
    conversion certified; returns its output range."""
    magnitude = _magnitude(codes, layer.input_zero_point)
    if magnitude is None:
        return None
    weight = layer.weight.double().abs()
    out_axis = 1 if getattr(layer, "transposed", False) else 0
    dims = tuple(d for d in range(weight.dim()) if d != out_axis)
    weight_sum = float(weight.sum(dim=dims).max()) if weight.numel() else 0.0
    bias = 0.0 if layer.bias is None else float(layer.bias.double().abs().max())
    shift = int(layer.pre_shift.max()) if layer.pre_shift.numel() else 0
    bound = weight_sum * magnitude * 2.0**shift + bias
    if layer.check_overflow:  # checked while it runs, as the conversion chose
        return None
    if bound > INT32_MAX:
        raise fail(
            f"tensors['{index}.weight'] (layer {layer.name!r})",
            f"let the accumulator reach {bound:.6g} (|weights| summing to {weight_sum:.6g} times "
            f"input codes up to {magnitude}), beyond int32 ({INT32_MAX}): weights or bias out of "
            "the range the layer was converted for",
        )
    return -int(bound), int(bound)


def certify(layers: Any, input_low: int, input_high: int) -> None:
    """Follow the range of the codes through ``layers`` from the input range, as
    :func:`aquatic.convert` did, and check each accumulator against int32."""
    codes: Range = (input_low, input_high)
    for index, layer in enumerate(layers):
        kind = layer.kind
        if codes is not None and isinstance(codes[0], tuple) and kind != "select_output":
            codes = None  # a recurrent layer's tuple, not selected: no bound to follow
        if kind in ("linear", "conv"):
            codes = _accumulator_bound(index, layer, codes)
        elif kind == "requantize":
            codes = (layer.low, layer.high)
        elif kind == "relu":
            if codes is not None:
                codes = (max(codes[0], int(layer.zero_point.min())), codes[1])
        elif kind in ("maxpool", "reshape", "last_step"):
            pass
        elif kind in ("rnn", "gru", "lstm"):  # (output, h_n) or (output, (h_n, c_n)) codes
            hidden = tuple(layer.grids["hidden"][1:])
            cell = tuple(layer.grids["cell"][1:]) if "cell" in layer.grids else None
            codes = (hidden, (hidden, cell) if cell else hidden)  # type: ignore[assignment]
        elif kind == "recurrent_stack":  # the final states of several grids: not followed
            hidden = tuple(layer.layers[-1].grids["hidden"][1:])
            codes = (hidden, None)  # type: ignore[assignment]
        elif kind == "select_output":
            nested = codes is not None and isinstance(codes[0], tuple)
            codes = codes[layer.index] if nested and -2 <= layer.index < 2 else None
        elif kind == "sumpool":
            magnitude = _magnitude(codes, layer.zero_point)
            bound = None if magnitude is None else magnitude * math.prod(layer.kernel_size)
            codes = None if bound is None else (-bound, bound)
        elif kind == "neuron" and layer.spiking:
            codes = (0, layer.max_spikes)
        else:  # sums over time, membranes, kinds unknown here: no bound to follow
            codes = None
