"""Xylo's readout integrates its bias from step 0, one step before the hidden spikes
arrive: the chip's readout is the model's readout run on the hidden spikes delayed by one
step (a first step without input). Without a readout bias that is the model's output one
step later; with one, export warns and the exact relation below holds."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aquatic import nn as ann
from aquatic.hw import xylo


def model_with(readout_bias, hidden_bias=0.0):
    qh, qo = xylo.qconfig(power_of_two=True), xylo.qconfig(power_of_two=True)
    return torch.nn.Sequential(
        ann.Linear(4, 8, bias=False, qconfig=qh),
        ann.LIF(tau_mem=8.0, tau_syn=4.0, max_spikes=31, bias=hidden_bias, qconfig=qh),
        ann.Linear(8, 3, bias=False, qconfig=qo),
        ann.LIF(tau_mem=8.0, tau_syn=4.0, bias=readout_bias, record_states=True, qconfig=qo),
    )


def calibrated(model, x):
    model(x)  # the quantizers observe the parameters (training mode)
    return model.eval()


def chip_readout_from_the_model(model, x):
    """The documented relation: the readout run on the hidden spikes one step late."""
    hidden = model[1](model[0](x))
    late = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], 1)
    return model[3](model[2](late))


@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    readout_bias=st.sampled_from([0.25, 0.5, -0.5, 1.0]),
    hidden_bias=st.sampled_from([0.0, 0.5]),
)
def test_the_chip_readout_is_the_model_readout_on_hidden_spikes_one_step_late(
    seed, readout_bias, hidden_bias
):
    torch.manual_seed(seed)
    x = (torch.rand(2, 20, 4) < 0.4).float() * 3
    model = calibrated(model_with(readout_bias, hidden_bias), x)
    with pytest.warns(UserWarning, match=r"layer '3' has a bias: Xylo's readout"):
        spec = xylo.export(model)
    out, rec = xylo.simulate(spec, x.long(), record=True)
    with torch.no_grad():
        expected = chip_readout_from_the_model(model, x)
    assert torch.equal(out, expected.long())
    grid = model[3].quantizers["v_mem"]
    steps = model[3].recordings["v_mem"] / grid.qparams()["scale"]
    assert torch.equal(rec["v_mem_out"], steps.long())
    # the chip's first step already integrates the bias (a membrane off rest, or a
    # spike), where the plain one-step relation would have a silent readout at rest
    assert bool((rec["v_mem_out"][:, 0] != 0).all() or out[:, 0].all())


def test_without_a_readout_bias_the_chip_is_the_model_one_step_later():
    torch.manual_seed(0)
    x = (torch.rand(2, 20, 4) < 0.4).float() * 3
    model = calibrated(model_with(None, 0.5), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = xylo.export(model)
    out = xylo.simulate(spec, x.long())
    with torch.no_grad():
        output = model(x)
        assert torch.equal(out, chip_readout_from_the_model(model, x).long())
    assert torch.equal(out[:, 1:], output[:, :-1].long()) and not out[:, 0].any()
