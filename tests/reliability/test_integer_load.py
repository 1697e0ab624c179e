"""aquatic.integer.load checks everything in a file before it rebuilds a model: empty,
truncated or code-carrying files, the header's fields, the tensors, and the ranges the
integer accumulators can reach. Corrupt files are made by editing real saved models."""

import copy
import io
import json
import math
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import aquatic
import aquatic.nn as qnn
from aquatic.integer import load
from aquatic.quantizers import BitShiftDecay, UniformQuantizer

POW2 = UniformQuantizer.with_args(bits=8, power_of_two=True)
ACT = UniformQuantizer.with_args(bits=8, signed=False, symmetric=False, power_of_two=True)
INT32_MAX = 2**31 - 1


def calibrated(model, x):
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def conventional():
    torch.manual_seed(0)
    q = aquatic.QConfig(weight=POW2, activation=ACT)
    model = nn.Sequential(
        qnn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=ACT)),
        qnn.Conv2d(2, 4, 3, padding=1, qconfig=q),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        qnn.Linear(16, 3, qconfig=q),
    )
    x = torch.rand(8, 2, 4, 4)
    return aquatic.convert(calibrated(model, x)), x


def spiking():
    torch.manual_seed(1)
    grid = UniformQuantizer.with_args(bits=16, scale=2**-6)
    q = aquatic.QConfig(weight=POW2, threshold=grid, alpha=BitShiftDecay, state=grid)
    model = nn.Sequential(
        qnn.Linear(10, 6, bias=False, qconfig=q),
        qnn.LIFRecurrent(6, alpha_mem=0.75, alpha_syn=0.5, max_spikes=2, qconfig=q),
        qnn.Linear(6, 3, bias=False, qconfig=q),
        qnn.LIF(alpha_mem=0.875, qconfig=q),
    )
    x = (torch.rand(4, 8, 10) < 0.5).float()
    return aquatic.convert(calibrated(model, x)), x


MODELS = {"conventional": conventional(), "spiking": spiking()}


def saved(model):
    buffer = io.BytesIO()
    model.save(buffer)
    return buffer.getvalue()


def contents(name):
    data = torch.load(io.BytesIO(saved(MODELS[name][0])), weights_only=True)
    return json.loads(data["header"]), data["tensors"]


def edited(name, edit):
    """A file of model ``name`` with ``edit(header, tensors)`` applied."""
    header, tensors = contents(name)
    edit(header, tensors)
    buffer = io.BytesIO()
    torch.save({"header": json.dumps(header), "tensors": tensors}, buffer)
    buffer.seek(0)
    return buffer


def refused(buffer, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        load(buffer)
    assert type(info.value) is not KeyError
    return str(info.value)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unedited_files_load_and_compute_the_same(name):
    model, x = MODELS[name]
    loaded = load(io.BytesIO(saved(model)))
    codes = model.quantize_input(x)
    assert torch.equal(loaded(codes), model(codes))


# -- the file itself ------------------------------------------------------------------------
def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    for source in (path, io.BytesIO(b"")):
        with pytest.raises(ValueError, match="the file is empty"):
            load(source)


@given(fraction=st.floats(0.0, 0.999))
def test_truncated_files(fraction):
    data = saved(MODELS["conventional"][0])
    cut = int(len(data) * fraction)
    with pytest.raises(ValueError, match="the file is empty|truncated or not a torch.save"):
        load(io.BytesIO(data[:cut]))


def test_not_a_torch_file():
    with pytest.raises(ValueError, match="truncated or not a torch.save archive"):
        load(io.BytesIO(b"just some text, not an archive"))


class _Payload:
    def __reduce__(self):
        return (os.makedirs, ("/tmp/aquatic-load-must-not-run-this",))


def test_loading_never_runs_code_from_the_file():
    buffer = io.BytesIO()
    torch.save({"header": _Payload(), "tensors": {}}, buffer)
    buffer.seek(0)
    with pytest.raises(ValueError, match="never runs code from a file"):
        load(buffer)
    assert not os.path.exists("/tmp/aquatic-load-must-not-run-this")


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"header": {"format": "aquatic.integer"}, "tensors": {}}, "header must be a JSON string"),
        ({"header": "{", "tensors": {}}, "header is not valid JSON"),
        ({"header": "[1]", "tensors": {}}, "header must be a JSON object"),
        ({"header": "{}", "tensors": []}, "tensors must be a dict"),
        ({"header": "{}", "tensors": {}, "extra": 1}, "has unknown entries \\['extra'\\]"),
    ],
)
def test_top_level_types(data, fragment):
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    refused(buffer, fragment)


# -- the header -----------------------------------------------------------------------------
HEADER_KEYS = ["input", "output", "layers"]
SPEC_KEYS = ["scale", "zero_point", "axis", "low", "high"]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    "path",
    [("version",)]
    + [(key,) for key in HEADER_KEYS]
    + [("input", key) for key in SPEC_KEYS + ["rounding", "on_grid", "notes"]]
    + [("output", key) for key in SPEC_KEYS],
)
def test_every_missing_header_key_is_named(name, path):
    def edit(header, tensors):
        target = header
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    message = refused(edited(name, edit), "lacks the keys|version")
    assert repr(path[-1]) in message or path[-1] in message


def test_every_missing_layer_config_and_kind_is_named():
    def drop_kind(header, tensors):
        del header["layers"][1]["kind"]

    refused(edited("conventional", drop_kind), r"header.layers\[1\] must be an object with 'kind'")


@pytest.mark.parametrize(
    "path, value, fragment",
    [
        (("version",), "1", r"header.version must be an int"),
        (("version",), True, r"header.version must be an int"),
        (("layers",), {}, r"header.layers must be a list"),
        (("input",), [], r"header.input must be a JSON object"),
        (("input", "scale"), "0.5", r"header.input.scale must be a number"),
        (("input", "scale"), [0.5], r"header.input must have one scale"),
        (("input", "zero_point"), 0.5, r"header.input.zero_point must hold ints"),
        (("input", "zero_point"), 1000, r"header.input.zero_point 1000 is outside"),
        (("input", "low"), None, r"header.input.low must be an int"),
        (("input", "on_grid"), "yes", r"header.input.on_grid must be true or false"),
        (("input", "notes"), "x", r"header.input.notes must be a list of strings"),
        (("input", "axis"), 1, r"header.input.axis must be an int <= -1"),
        (("input", "rounding"), "up", r"header.input.rounding must be one of"),
        (("output", "high"), "255", r"header.output.high must be an int"),
        (("input", "surprise"), 1, r"header.input has unknown keys \['surprise'\]"),
        (("layers", 0, "kind"), "dense", r"header.layers\[0\].kind 'dense' is not a known"),
        (("layers", 0, "config", "stride"), [1, "1"], r"layers\[0\].config.stride must be a list"),
        (("layers", 0, "config", "stride"), [1, 1, 1], r"config.stride must hold 2 ints"),
        (
            ("layers", 0, "config", "padding"),
            [-1, 0],
            r"config.padding must be a list of ints >= 0",
        ),
        (("layers", 0, "config", "groups"), 0, r"config.groups must be an int >= 1"),
        (("layers", 0, "config", "dim"), 4, r"config.dim must be one of \[1, 2, 3\]"),
        (("layers", 0, "config", "check_overflow"), 0, r"check_overflow must be true or false"),
        (("layers", 0, "config", "name"), 3, r"config.name must be a string"),
        (("layers", 0, "config", "evil"), 1, r"config has unknown keys \['evil'\]"),
        (("layers", 1, "config", "rounding"), "stochastic", r"config.rounding must be one of"),
        (("layers", 1, "config", "low"), 300, r"layers\[1\].config has low=300 > high=255"),
        (
            ("layers", 3, "config", "kernel_size"),
            [0, 2],
            r"kernel_size must be a list of ints >= 1",
        ),
        (("layers", 4, "config", "op"), "squeeze", r"config.op must be one of"),
    ],
)
def test_wrong_types_and_values_in_the_header_are_named(path, value, fragment):
    def edit(header, tensors):
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    refused(edited("conventional", edit), fragment)


@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize("scale", [0.0, -0.5, math.inf, -math.inf, math.nan, 1e-320 * 0])
def test_scales_must_be_finite_and_positive(where, scale):
    def edit(header, tensors):
        header[where]["scale"] = scale

    refused(edited("conventional", edit), f"header.{where}.scale must hold finite numbers > 0")


@pytest.mark.parametrize("name, which", [("spiking", "v"), ("spiking", "i")])
def test_neuron_config(name, which):
    def rounding(header, tensors):
        header["layers"][1]["config"][f"{which}_rounding"] = "up"

    def low_high(header, tensors):
        config = header["layers"][1]["config"]
        config[f"{which}_low"], config[f"{which}_high"] = 5, -5

    def rule(header, tensors):
        header["layers"][1]["config"][f"{which}_rule"] = "exponential"

    refused(edited(name, rounding), rf"config.{which}_rounding must be one of")
    refused(edited(name, low_high), r"layers\[1\].config has low=5 > high=-5")
    refused(edited(name, rule), rf"config.{which}_rule must be one of")


# -- the tensors ----------------------------------------------------------------------------
def _set(key, value):
    def edit(header, tensors):
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value(tensors[key]) if callable(value) else value

    return edit


@pytest.mark.parametrize(
    "name, edit, fragment",
    [
        (
            "conventional",
            _set("0.weight", lambda w: w.float()),
            r"tensors\['0.weight'\] must hold integers",
        ),
        (
            "conventional",
            _set("0.weight", lambda w: w.bool()),
            r"must hold integers, got dtype torch.bool",
        ),
        ("conventional", _set("0.weight", [1, 2]), r"tensors\['0.weight'\] must be a tensor"),
        ("conventional", _set("0.weight", None), r"tensors\['0.weight'\] is missing"),
        ("conventional", _set("0.weight", lambda w: w[0]), r"'0.weight'\] must have 4 dims"),
        ("conventional", _set("0.bias", lambda b: b[:2]), r"'0.bias'\] must have shape \(4,\)"),
        (
            "conventional",
            _set("0.pre_shift", torch.tensor(99)),
            r"'0.pre_shift'\] ranges over \[99, 99\]",
        ),
        ("conventional", _set("0.pre_shift", torch.tensor(-1)), r"'0.pre_shift'\] ranges over"),
        (
            "conventional",
            _set("1.multiplier", lambda m: m * 0),
            r"'1.multiplier'\] ranges over \[0, 0\]",
        ),
        ("conventional", _set("1.shift", torch.tensor(-100)), r"'1.shift'\] ranges over \[-100"),
        (
            "conventional",
            _set("1.output_zero_point", torch.tensor(256)),
            r"'1.output_zero_point'\] ranges",
        ),
        (
            "conventional",
            _set("1.multiplier", torch.tensor([1, 2])),
            r"'1.multiplier'\] holds one value per channel",
        ),
        (
            "conventional",
            _set("0.input_zero_point", torch.tensor([1, 2])),
            r"holds one value per channel",
        ),
        (
            "conventional",
            _set("7.weight", torch.ones(1, 1, dtype=torch.int64)),
            r"tensors\['7.weight'\] is not named",
        ),
        ("conventional", _set("x", torch.ones(1)), r"tensors\['x'\] is not named '<layer index>"),
        (
            "conventional",
            _set("0.scale", torch.ones(1, dtype=torch.int64)),
            r"has unknown names \['scale'\]",
        ),
        ("spiking", _set("1.threshold", lambda t: t * 0), r"'1.threshold'\] ranges over \[0, 0\]"),
        ("spiking", _set("1.threshold", None), r"'1.threshold'\] is missing"),
        ("spiking", _set("1.mem_num", lambda m: m + 100), r"'1.mem_num'\] ranges over"),
        ("spiking", _set("1.rec_weight", lambda w: w[:3]), r"'1.rec_weight'\] must be square"),
        ("spiking", _set("1.rec_shift", None), r"'1.rec_shift'\] is missing"),
        ("spiking", _set("1.v_back_shift", None), r"'1.v_multiplier'\] needs its shift"),
        ("spiking", _set("1.v_rule_codes", torch.tensor(-1)), r"'1.v_rule_codes'\] ranges over"),
        (
            "spiking",
            lambda h, t: t.update(
                {"1.threshold": torch.full((4,), 256), "1.mem_num": torch.full((3,), 3)}
            ),
            r"'1.threshold'\] and its siblings do not broadcast together",
        ),
    ],
)
def test_malformed_tensors_are_named(name, edit, fragment):
    refused(edited(name, edit), fragment)


# -- weights out of the range the model was converted for -----------------------------------
def worst_case(tensors, header):
    """The largest |accumulator| of layer 0 over the input range (an independent count)."""
    weight = tensors["0.weight"].double()
    magnitude = max(abs(header["input"]["low"]), abs(header["input"]["high"]))
    bias = tensors["0.bias"].double().abs().max() if "0.bias" in tensors else 0.0
    shift = 2.0 ** int(tensors["0.pre_shift"].max())
    return float(weight.abs().flatten(1).sum(1).max()) * magnitude * shift + float(bias)


@pytest.mark.parametrize("name", sorted(MODELS))
@given(code=st.integers(-(2**40), 2**40), position=st.integers(0, 59))
def test_out_of_range_weights_are_refused_exactly_when_int32_could_overflow(name, code, position):
    header, tensors = contents(name)
    weight = tensors["0.weight"].clone()
    weight.view(-1)[position % weight.numel()] = code
    tensors["0.weight"] = weight
    buffer = io.BytesIO()
    torch.save({"header": json.dumps(header), "tensors": tensors}, buffer)
    buffer.seek(0)
    if abs(code) > INT32_MAX or worst_case(tensors, header) > INT32_MAX:
        message = refused(buffer, r"tensors\['0.weight'\]")
        assert "beyond int32" in message or "ranges over" in message
    else:
        loaded = load(buffer)
        assert torch.equal(loaded.layers[0].weight, weight)


def test_a_bias_out_of_range_is_refused():
    refused(edited("conventional", _set("0.bias", lambda b: b + 2**31)), r"'0.bias'\] ranges over")
    near_the_top = _set("0.bias", lambda b: torch.full_like(b, INT32_MAX - 10))
    refused(
        edited("conventional", near_the_top), r"'0.weight'\] \(layer '1'\) let the .* beyond int32"
    )


# -- quantize_input -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
@given(position=st.integers(0, 10**6))
def test_quantize_input_refuses_nan(name, position):
    model, x = MODELS[name]
    x = x.clone()
    x.view(-1)[position % x.numel()] = math.nan
    with pytest.raises(ValueError, match=r"quantize_input got NaN \(1 of .* values"):
        model.quantize_input(x)
