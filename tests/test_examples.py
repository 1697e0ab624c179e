"""The scripts in examples/ run, learn, and deliver what their docstrings promise."""

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = ["qat_mlp_digits", "qat_cnn_digits", "snn_xylo", "quantize_pretrained"]
# A few epochs: enough to be far above chance, short enough for the whole file to run
# in seconds.
QUICK = {
    "qat_mlp_digits": {"epochs": 5},
    "qat_cnn_digits": {"epochs": 3},
    "snn_xylo": {"epochs": 3},
    "quantize_pretrained": {"epochs": 4, "finetune_epochs": 3},
}


def load(name: str):
    """Import ``examples/<name>.py`` by path, as the examples are not a package."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are tiny: splitting their matrix products over threads costs more
    # than it saves, and on a busy machine it can make the file many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def results(one_thread):
    return {name: load(name).main(quiet=True, **QUICK[name]) for name in SCRIPTS}


def test_qat_mlp_learns_and_its_integer_model_agrees(results):
    r = results["qat_mlp_digits"]
    assert r["accuracy"] > 0.85  # ten classes: chance is 0.1
    assert r["agreement"] >= 0.97
    assert abs(r["integer_accuracy"] - r["accuracy"]) <= 0.03


def test_qat_cnn_learns_and_its_integer_model_agrees(results):
    r = results["qat_cnn_digits"]
    assert r["accuracy"] > 0.85
    assert r["agreement"] >= 0.97
    assert abs(r["integer_accuracy"] - r["accuracy"]) <= 0.03


def test_xylo_chip_spikes_exactly_like_the_trained_model(results):
    r = results["snn_xylo"]
    assert r["accuracy"] > 0.5  # eight classes: chance is 0.125
    assert r["hidden_identical"] and r["output_identical"]
    # Identical spikes, so identical predictions; and the check is not vacuous.
    assert r["chip_accuracy"] == r["accuracy"]
    assert r["hidden_spikes"] > 0 and r["output_spikes"] > 0


def test_fine_tuning_after_quantize_and_dequantize(results):
    r = results["quantize_pretrained"]
    assert r["float_accuracy"] > 0.85
    assert r["quantized_accuracy"] < r["float_accuracy"]  # ternary weights cost accuracy
    assert r["finetuned_accuracy"] >= r["quantized_accuracy"] - 0.01
    assert r["finetuned_accuracy"] > 0.85
    # The mapping quantized both conv and linear layers by type, except the one it
    # named, which stayed in float.
    assert r["quantized_layers"] == ["features.3", "classifier"]
    plain = r["dequantized"]
    assert not [m for m in plain.modules() if type(m).__module__.startswith("aquatic.")]
    assert type(plain.features[3]) is nn.Conv2d and type(plain.classifier) is nn.Linear
    assert r["dequantized_matches"]


def test_seeded_runs_repeat(one_thread):
    mlp = load("qat_mlp_digits")
    first, second = mlp.main(epochs=2, quiet=True), mlp.main(epochs=2, quiet=True)
    del first["seconds"], second["seconds"]
    assert first == second


@pytest.mark.parametrize("name", SCRIPTS)
def test_prints_a_summary_unless_quiet(name, one_thread):
    module = load(name)
    loud, quiet = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(loud):
        figures = module.main(epochs=1, quiet=False)
    with contextlib.redirect_stdout(quiet):
        module.main(epochs=1, quiet=True)
    text = loud.getvalue()
    assert "took" in text and quiet.getvalue() == ""
    # Every accuracy it returns is one it printed.
    accuracies = [value for key, value in figures.items() if key.endswith("accuracy")]
    assert accuracies
    for value in accuracies:
        assert f"{100 * value:.1f}%" in text
