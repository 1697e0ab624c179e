"""The schema of a saved integer model, checked before anything is rebuilt from it.

:func:`aquatic.integer.load` reads files that may come from anywhere. Every field of the
JSON header and every tensor is checked here (types, shapes against the header, integer
dtypes, scales finite and positive, known rounding names, shifts in range,
``low <= high``), and each failure is a ``ValueError`` naming the field, so that a
corrupt or hand-edited file never loads into a model that computes something else.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional


from aquatic.integer.requant import ROUNDINGS

__all__ = ["SchemaError", "check_header", "fail"]

#: Exponents of the dyadic decays ``A * 2**-P`` of spiking layers.
EXP_RANGE = (0, 62)

Check = Callable[[Any], Optional[str]]  # returns what is wrong, or None


class SchemaError(ValueError):
    """A field of a saved integer model is malformed; the message names the field."""


def fail(field: str, problem: str) -> SchemaError:
    return SchemaError(
        f"aquatic.integer.load: {field} {problem}; the file is corrupt or was not written by "
        "aquatic.integer.save"
    )


# -- checks of JSON values -----------------------------------------------------------------
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Check:
    def check(value: Any) -> Optional[str]:
        if not is_int(value):
            return f"must be an int, got {value!r}"
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                return f"must be an int >= {low}, got {value!r}"
            if low is None:
                return f"must be an int <= {high}, got {value!r}"
            return f"must be an int in [{low}, {high}], got {value!r}"
        return None

    return check


def optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def boolean(value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


def string(value: Any) -> Optional[str]:
    return None if isinstance(value, str) else f"must be a string, got {value!r}"


def strings(value: Any) -> Optional[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return None
    return f"must be a list of strings, got {value!r}"


def choice(*options: Any) -> Check:
    def check(value: Any) -> Optional[str]:
        return None if value in options else f"must be one of {list(options)}, got {value!r}"

    return check


def ints(low: int) -> Check:
    def check(value: Any) -> Optional[str]:
        if isinstance(value, list) and all(is_int(v) and v >= low for v in value):
            return None
        return f"must be a list of ints >= {low}, got {value!r}"

    return check


def number_or_list(positive: bool) -> Check:
    """A number (or a list of numbers, one per channel); finite and > 0 when ``positive``."""

    def check(value: Any) -> Optional[str]:
        values = value if isinstance(value, list) else [value]
        kind = "finite numbers > 0" if positive else "ints"
        if not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            return f"must be a number or a non-empty list of {kind}, got {value!r}"
        if positive and not all(math.isfinite(v) and v > 0 for v in values):
            return f"must hold finite numbers > 0, got {value!r}"
        if not positive and not all(is_int(v) for v in values):
            return f"must hold ints, got {value!r}"
        return None

    return check


def floats(value: Any) -> Optional[str]:
    if isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        return None
    return f"must be a list of finite numbers, got {value!r}"


def keyed(keys: tuple, check: Check, optional_keys: tuple = ()) -> Check:
    """An object with exactly ``keys`` (and any of ``optional_keys``), each value passing
    ``check``."""

    def check_all(value: Any) -> Optional[str]:
        if not isinstance(value, dict) or not set(keys) <= set(value) <= set(keys + optional_keys):
            extra = f" (and optionally {sorted(optional_keys)})" if optional_keys else ""
            return f"must be an object with the keys {sorted(keys)}{extra}, got {value!r}"
        for key in value:
            problem = check(value[key])
            if problem:
                return f"[{key!r}] {problem}"
        return None

    return check_all


def grid(value: Any) -> Optional[str]:
    """``[zero_point, low, high]`` with ``low <= zero_point <= high``."""
    if not (isinstance(value, list) and len(value) == 3 and all(is_int(v) for v in value)):
        return f"must be [zero_point, low, high] (ints), got {value!r}"
    if not value[1] <= value[0] <= value[2]:
        return f"must have low <= zero_point <= high, got {value!r}"
    return None


def _recurrent(signals: tuple) -> Dict[str, Check]:
    """The configuration of an integer RNN, GRU or LSTM (:mod:`aquatic.integer.recurrent`)."""
    states = tuple(key for key in ("hidden", "cell") if key in signals)
    projection = ("weight_hr",) if "cell" in signals else ()
    return {
        "scales": keyed(
            ("input", "weight_ih", "weight_hh") + signals, number_or_list(True), projection
        ),
        "grids": keyed(("input",) + signals, grid),
        "bias_ih": optional(floats),
        "bias_hh": optional(floats),
        "batch_first": boolean,
        "reverse": boolean,
        "state_scales": optional(keyed(states, number_or_list(True))),
        "state_grids": optional(keyed(states, grid)),
    }


AXIS = optional(integer(high=-1))
ROUNDING = choice(*ROUNDINGS)
COMMON: Dict[str, Check] = {"name": string, "notes": strings, "source": string}

#: Per kind: the JSON constructor arguments and their checks.
CONFIG: Dict[str, Dict[str, Check]] = {
    "linear": {"input_axis": AXIS, "check_overflow": boolean},
    "conv": {
        "dim": choice(1, 2, 3),
        "transposed": boolean,
        "stride": ints(1),
        "padding": ints(0),
        "dilation": ints(1),
        "groups": integer(1),
        "output_padding": ints(0),
        "input_axis": AXIS,
        "check_overflow": boolean,
    },
    "requantize": {
        "low": integer(),
        "high": integer(),
        "rounding": ROUNDING,
        "axis": AXIS,
    },
    "relu": {"axis": AXIS},
    "maxpool": {
        "dim": choice(1, 2, 3),
        "kernel_size": ints(1),
        "stride": ints(1),
        "padding": ints(0),
        "dilation": ints(1),
        "ceil_mode": boolean,
    },
    "sumpool": {
        "dim": choice(1, 2, 3),
        "kernel_size": ints(1),
        "stride": ints(1),
        "padding": ints(0),
    },
    "reshape": {
        "op": choice("flatten", "unflatten"),
        "start_dim": integer(),
        "end_dim": integer(),
        "dim": integer(),
        "sizes": ints(-1),
    },
    "sum": {"dim": integer()},
    "rnn": _recurrent(("gates", "hidden")),
    "layer_norm": {
        "shift": integer(0, 24),
        "precision": integer(0, 40),
        "eps_term": integer(0, 2**62),
        "output_zero_point": integer(),
        "low": integer(),
        "high": integer(),
    },
    "gru": _recurrent(("gates", "gate_outputs", "hidden")),
    "lstm": _recurrent(("gates", "gate_outputs", "cell", "hidden")),
    "recurrent_stack": {
        "layers": lambda v: None if isinstance(v, list) and v else f"must be a list, got {v!r}",
        "num_layers": integer(1),
        "bidirectional": boolean,
        "batch_first": boolean,
    },
    "neuron": {
        "spiking": boolean,
        "reset": choice("subtract", "zero"),
        "max_spikes": integer(1),
        "emulate_float32": boolean,
        "mem_exp": integer(*EXP_RANGE),
        "syn_exp": integer(*EXP_RANGE),
        "norm_exp": integer(*EXP_RANGE),
        "input_axis": AXIS,
        "state_limit": optional(integer(0)),
        **{
            f"{which}_{key}": check
            for which in ("v", "i")
            for key, check in {
                "low": optional(integer()),
                "high": optional(integer()),
                "rounding": ROUNDING,
                "rule": choice(None, "bitshift", "multiplicative"),
                "rule_bits": integer(0, 62),
            }.items()
        },
    },
}

#: Lists of a convolution or pooling layer that hold one entry per spatial dimension.
PER_DIM = ("stride", "padding", "dilation", "output_padding", "kernel_size")


def check_fields(field: str, value: Any, checks: Dict[str, Check], required: bool) -> None:
    """``value`` is a dict whose keys are among ``checks`` (all of them if ``required``)."""
    if not isinstance(value, dict):
        raise fail(field, f"must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(checks), key=str)
    if unknown:
        raise fail(field, f"has unknown keys {unknown} (known: {sorted(checks)})")
    if required:
        missing = sorted(set(checks) - set(value))
        if missing:
            raise fail(field, f"lacks the keys {missing}")
    for key, item in value.items():
        problem = checks[key](item)
        if problem:
            raise fail(f"{field}.{key}", problem)


def check_low_high(field: str, low: Any, high: Any) -> None:
    if low is not None and high is not None and low > high:
        raise fail(field, f"has low={low} > high={high}")


def check_spec(field: str, spec: Any, is_input: bool) -> None:
    """The header's ``input`` or ``output``: scale, zero point, axis and code range."""
    checks = {
        "scale": number_or_list(positive=True),
        "zero_point": number_or_list(positive=False),
        "axis": AXIS,
        "low": integer() if is_input else optional(integer()),
        "high": integer() if is_input else optional(integer()),
    }
    if is_input:
        checks.update(rounding=ROUNDING, on_grid=boolean, notes=strings)
    check_fields(field, spec, checks, required=True)
    check_low_high(field, spec["low"], spec["high"])
    scale, zero_point = spec["scale"], spec["zero_point"]
    if is_input and (isinstance(scale, list) or isinstance(zero_point, list)):
        raise fail(field, "must have one scale and one zero point (per tensor)")
    if isinstance(scale, list) and isinstance(zero_point, list) and len(zero_point) > 1:
        if len(scale) != len(zero_point):
            raise fail(field, f"has {len(scale)} scales but {len(zero_point)} zero points")
    if is_input and not spec["low"] <= zero_point <= spec["high"]:
        raise fail(f"{field}.zero_point", f"{zero_point} is outside [low, high]")


def check_header(header: Any, kinds: Dict[str, type], version: int) -> None:
    """The parsed JSON header: format fields, input and output specs, each layer's config."""
    checks: Dict[str, Check] = {
        "format": string,
        "version": integer(1, version),
        "input": lambda v: None,
        "output": lambda v: None,
        "layers": lambda v: None if isinstance(v, list) else f"must be a list, got {v!r}",
    }
    check_fields("header", header, checks, required=True)
    check_spec("header.input", header["input"], is_input=True)
    check_spec("header.output", header["output"], is_input=False)
    for index, entry in enumerate(header["layers"]):
        field = f"header.layers[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"kind", "config"}:
            raise fail(field, f"must be an object with 'kind' and 'config', got {entry!r}")
        kind = entry["kind"]
        if kind not in kinds:
            raise fail(f"{field}.kind", f"{kind!r} is not a known layer kind ({sorted(kinds)})")
        config_checks = CONFIG.get(kind)
        if config_checks is None:  # a kind registered elsewhere: its keys at least
            config_checks = {key: lambda v: None for key in kinds[kind]._config_keys}
        check_fields(f"{field}.config", entry["config"], {**COMMON, **config_checks}, False)
        check_config(f"{field}.config", kind, entry["config"])


def check_config(field: str, kind: str, config: Dict[str, Any]) -> None:
    """Relations between the fields of one layer's configuration."""
    dim = config.get("dim")
    if kind in ("conv", "maxpool", "sumpool") and dim is not None:
        for key in PER_DIM:
            if key in config and len(config[key]) not in (1, dim):
                raise fail(f"{field}.{key}", f"must hold {dim} ints (dim={dim}), got {config[key]}")
    if kind in ("requantize", "layer_norm"):
        check_low_high(field, config.get("low"), config.get("high"))
    if kind == "recurrent_stack":
        for position, entry in enumerate(config.get("layers", [])):
            where = f"{field}.layers[{position}]"
            if not isinstance(entry, dict) or set(entry) != {"kind", "config"}:
                raise fail(where, f"must be an object with 'kind' and 'config', got {entry!r}")
            if entry["kind"] not in ("rnn", "gru", "lstm"):
                raise fail(
                    f"{where}.kind", f"must be 'rnn', 'gru' or 'lstm', got {entry['kind']!r}"
                )
            checks = {**COMMON, **CONFIG[entry["kind"]]}
            check_fields(f"{where}.config", entry["config"], checks, False)
    if kind == "neuron":
        for which in ("v", "i"):
            check_low_high(field, config.get(f"{which}_low"), config.get(f"{which}_high"))
