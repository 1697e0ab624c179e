"""NIR export says what NIR cannot hold: a subtractive reset warns (naming the layers),
and the rounding of activation quantizers survives the round trip through metadata."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer

nir = pytest.importorskip("nir")
from aquatic.interop import nir as anir  # noqa: E402

NEURONS = {
    "LIF": lambda reset: aquatic.nn.LIF(tau_mem=5.0, reset=reset),
    "IAF": lambda reset: aquatic.nn.IAF(reset=reset),
    "synaptic LIF": lambda reset: aquatic.nn.LIF(tau_mem=5.0, tau_syn=3.0, reset=reset),
    "synaptic IAF": lambda reset: aquatic.nn.IAF(tau_syn=3.0, reset=reset),
}


@pytest.mark.parametrize("kind", sorted(NEURONS))
def test_a_subtractive_reset_warns_naming_the_layers(kind):
    model = nn.Sequential(
        aquatic.nn.Linear(3, 3), NEURONS[kind]("subtract"), aquatic.nn.Linear(3, 2)
    )
    model.append(NEURONS[kind]("subtract"))
    with pytest.warns(UserWarning, match=r"layers '1', '3' reset by subtracting") as caught:
        graph = anir.export(model)
    message = str(caught[0].message)
    assert "NIR cannot express" in message and "metadata['aquatic']['resets']" in message
    x = torch.rand(2, 10, 3) * 2
    assert torch.equal(anir.load(graph)(x), model(x))  # aquatic's loader restores it


@pytest.mark.parametrize("kind", sorted(NEURONS))
def test_a_reset_to_zero_exports_without_a_warning(kind):
    model = nn.Sequential(aquatic.nn.Linear(3, 3), NEURONS[kind]("zero"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        anir.export(model)


def quantized_model(rounding, seed):
    torch.manual_seed(seed)
    activation = UniformQuantizer.with_args(bits=6, rounding=rounding)
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=aquatic.QConfig(activation=activation)),
        aquatic.nn.Linear(4, 3, qconfig=aquatic.QConfig(activation=activation)),
        aquatic.nn.LIF(tau_mem=4.0, reset="zero"),
    )
    model(torch.randn(8, 6, 4))  # calibrate
    return model.eval()


@settings(max_examples=20, deadline=None)
@given(rounding=st.sampled_from(["nearest", "floor"]), seed=st.integers(0, 1000))
def test_the_rounding_of_activation_quantizers_survives_a_round_trip(
    rounding, seed, tmp_path_factory
):
    model = quantized_model(rounding, seed)
    with pytest.warns(UserWarning, match="NIR has no quantization nodes"):
        graph = anir.export(model, input_shape=(4,))
    assert graph.metadata["aquatic"]["quantizers"]["1"]["rounding"] == rounding
    path = tmp_path_factory.mktemp("nir") / "model.nir"
    nir.write(path, graph)
    loaded = anir.load(path)
    for name in ("0", "1"):
        assert loaded[name].quantizers["activation"].rounding == rounding
    x = torch.randn(4, 6, 4)
    assert torch.equal(loaded(x), model(x))


def test_stochastic_rounding_is_restored():
    model = quantized_model("stochastic", 0)
    with pytest.warns(UserWarning):
        loaded = anir.load(anir.export(model, input_shape=(4,)))
    assert loaded["1"].quantizers["activation"].rounding == "stochastic"


def test_a_file_without_rounding_loads_as_nearest():
    model = quantized_model("nearest", 1)
    with pytest.warns(UserWarning):
        graph = anir.export(model, input_shape=(4,))
    for entry in graph.metadata["aquatic"]["quantizers"].values():
        del entry["rounding"]
    assert anir.load(graph)["1"].quantizers["activation"].rounding == "nearest"


@pytest.mark.parametrize("bad", ["up", "", 3])
def test_an_unknown_rounding_in_the_metadata_is_refused_by_key(bad):
    model = quantized_model("nearest", 2)
    with pytest.warns(UserWarning):
        graph = anir.export(model, input_shape=(4,))
    graph.metadata["aquatic"]["quantizers"]["1"]["rounding"] = bad
    with pytest.raises(
        ValueError,
        match=r"\['quantizers'\]\['1'\]\['rounding'\] must be one of 'nearest', 'floor', "
        "'stochastic'",
    ):
        anir.load(graph)


def test_one_subtracting_layer_is_named_in_the_singular():
    model = nn.Sequential(aquatic.nn.Linear(3, 3), aquatic.nn.IAF())
    with pytest.warns(UserWarning, match=r"^layer '1' resets by subtracting the threshold"):
        anir.export(model)
