"""ONNX export computes what the model computes or refuses: QuantizeLinear rounds half to
even, so floor-rounded activations are refused and stochastic ones export as nearest
with a warning."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer

pytest.importorskip("onnx")
from aquatic.interop import onnx as aonnx  # noqa: E402


def qconfig(activation_rounding, weight_rounding="nearest"):
    return aquatic.QConfig(
        weight=UniformQuantizer.with_args(rounding=weight_rounding),
        activation=UniformQuantizer.with_args(rounding=activation_rounding),
    )


def where_quantized(kind, rounding):
    """A small model whose one activation quantizer rounds with ``rounding``."""
    torch.manual_seed(0)
    if kind == "layer":
        model = nn.Sequential(aquatic.nn.Linear(4, 3, qconfig=qconfig(rounding)))
        name = "layer '0': activation quantizer"
    elif kind == "ActivationQuantizer":
        q = aquatic.QConfig(activation=UniformQuantizer.with_args(rounding=rounding))
        model = nn.Sequential(aquatic.nn.ActivationQuantizer(qconfig=q), nn.Linear(4, 3))
        name = "layer '0': activation quantizer"
    else:  # a quantizer used as a module
        model = nn.Sequential(UniformQuantizer(rounding=rounding), nn.Linear(4, 3))
        name = "quantizer '0'"
    model(torch.randn(16, 4))
    return model.eval(), name


@pytest.mark.parametrize("kind", ["layer", "ActivationQuantizer", "module"])
def test_floor_rounded_activations_are_refused(kind, tmp_path):
    model, name = where_quantized(kind, "floor")
    with pytest.raises(
        ValueError,
        match=rf"{name} rounds down \(rounding='floor'\), but ONNX QuantizeLinear rounds "
        "half to even",
    ):
        aonnx.export(model, torch.randn(1, 4), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kind", ["layer", "ActivationQuantizer", "module"])
def test_stochastic_activations_export_as_nearest_with_a_warning(kind, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, name = where_quantized(kind, "stochastic")
    with pytest.warns(
        UserWarning,
        match=rf"{name}: rounding='stochastic' is for training; the ONNX export rounds to nearest",
    ):
        aonnx.export(model, torch.randn(1, 4), tmp_path / "m.onnx")
    for quantizer in model.modules():
        if isinstance(quantizer, UniformQuantizer):
            quantizer.rounding = "nearest"  # what the export computes
    x = torch.randn(32, 4)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {"input": x.numpy()})
    expected = model(x).detach().numpy()
    if kind == "layer":  # the output is quantized: the same codes
        np.testing.assert_array_equal(out, expected)
    else:  # a float Linear after the codes: the same codes, float sums in another order
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(weight_rounding=st.sampled_from(["nearest", "floor", "stochastic"]))
def test_weights_on_their_grid_export_whatever_their_rounding(weight_rounding):
    # weights are exported as the quantized values forward uses: no rounding in ONNX
    import os
    import tempfile

    torch.manual_seed(1)
    model = nn.Sequential(aquatic.nn.Linear(4, 3, qconfig=qconfig("nearest", weight_rounding)))
    model(torch.randn(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        path = os.path.join(tempfile.mkdtemp(), "m.onnx")
        aonnx.export(model.eval(), torch.randn(1, 4), path)
