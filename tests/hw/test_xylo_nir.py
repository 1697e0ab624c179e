"""A recurrent Xylo SNN through NIR: exported, loaded back, it spikes as the model does
and exports to Xylo the same parameters."""

import math
import warnings

import numpy as np
import pytest
import torch

import aquatic
from aquatic import nn as ann
from aquatic.hw import xylo
from aquatic.interop import nir as anir

nir = pytest.importorskip("nir")


def xylo_model(power_of_two):
    qh, qo = xylo.qconfig(power_of_two=power_of_two), xylo.qconfig(power_of_two=power_of_two)
    return torch.nn.Sequential(
        ann.Linear(4, 16, bias=False, qconfig=qh),
        ann.LIFRecurrent(16, tau_mem=8.0, tau_syn=4.0, max_spikes=31, qconfig=qh),
        ann.Linear(16, 3, bias=False, qconfig=qo),
        ann.LIF(tau_mem=8.0, tau_syn=4.0, qconfig=qo),
    )


def trained(model, x):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = (model(x).mean() - 0.2) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("power_of_two", [True, False])
def test_recurrent_xylo_snn_round_trips_through_nir(power_of_two, tmp_path):
    torch.manual_seed(0)
    x = (torch.rand(6, 50, 4) < 0.4).float()
    model = trained(xylo_model(power_of_two), x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = anir.export(model)
    # the recurrent layer: a CubaLIF node with a Linear loop of the quantized weights
    assert isinstance(graph.nodes["1"], nir.CubaLIF)
    assert ("1", "1_rec") in graph.edges and ("1_rec", "1") in graph.edges
    rec = model[1].quantize_params()["rec_weight"].numpy()
    np.testing.assert_array_equal(graph.nodes["1_rec"].weight, rec)
    meta = graph.metadata["aquatic"]
    assert meta["states"]["1"]["decay_mem"] == {"class": "BitShiftDecay", "bits": 4}
    assert set(meta["params"]["1"]) == {"threshold", "rec_weight"}
    nir.write(tmp_path / "xylo.nir", graph)
    loaded = anir.load(tmp_path / "xylo.nir")
    assert isinstance(loaded["1"], ann.LIFRecurrent)
    with torch.no_grad():
        hidden = model[1](model[0](x))
        expected = model(x)
        assert hidden.max() > 1 and expected.sum() > 0  # several spikes per step
        assert torch.equal(loaded(x), expected)
    # and Xylo's export of the loaded model is the original's, key for key
    spec, again = xylo.export(model), xylo.export(loaded)
    assert set(again) == set(spec)
    for key in spec:
        np.testing.assert_array_equal(again[key], spec[key], err_msg=key)
    assert np.abs(spec["weights_rec"]).sum() > 0
