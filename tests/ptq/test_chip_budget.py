"""mixed_precision with a hardware profile as the budget: the answer deploys."""

import types

import pytest
import torch
from torch import nn

import aquatic
from aquatic import nn as ann
from aquatic.hw import DoesNotFitError, dynapcnn, loihi, xylo
from aquatic.ptq import ChipBudget


def _spikes(*shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=gen) < 0.3).float()


def _xylo_model(inputs=4):
    torch.manual_seed(0)
    hidden, readout = xylo.qconfig(), xylo.qconfig()
    return nn.Sequential(
        nn.Linear(inputs, 16, bias=False),
        ann.LIF(tau_mem=8.0, tau_syn=4.0, max_spikes=31, threshold=0.3, qconfig=hidden),
        nn.Linear(16, 3, bias=False),
        ann.LIF(tau_mem=8.0, tau_syn=4.0, threshold=0.3, qconfig=readout),
    )


def _loihi_model():
    torch.manual_seed(0)
    q, options = loihi.qconfig(), loihi.neuron_options()
    return nn.Sequential(
        nn.Linear(4, 8, bias=False),
        ann.LIF(tau_mem=4.0, threshold=0.5, qconfig=q, **options),
        nn.Linear(8, 3, bias=False),
        ann.LIF(alpha_mem=0.875, threshold=0.5, qconfig=q, **options),
    )


def _dynapcnn_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 8),
        ann.IAF(threshold=0.3, qconfig=dynapcnn.qconfig()),
        nn.Linear(8, 3),
        ann.IAF(threshold=0.3, qconfig=dynapcnn.qconfig()),
    )


def _codes(spec_weight):
    return torch.as_tensor(spec_weight).abs().max().item()


CHIPS = {
    "xylo": (_xylo_model, xylo, (4, 15, 4), lambda s: [s["weights_in"], s["weights_out"]]),
    "loihi": (_loihi_model, loihi, (4, 15, 4), lambda s: [l["weight"] for l in s["layers"]]),
    "dynapcnn": (
        _dynapcnn_model,
        dynapcnn,
        (4, 10, 16),
        lambda s: [l["weight"] for l in s["layers"]],
    ),
}


@pytest.mark.parametrize("chip", sorted(CHIPS))
@pytest.mark.parametrize("candidates", [(2, 4, 8), (2, 3)])
def test_answer_exports_and_weights_hold_the_chosen_bits(chip, candidates):
    make, profile, shape, weights = CHIPS[chip]
    model, data = make(), [_spikes(*shape, seed=1)]
    mapping = aquatic.mixed_precision(
        model, data, budget=profile, candidates=candidates, progress=False
    )
    assert sorted(mapping.bits) == ["0", "2"]
    assert set(mapping.bits.values()) <= set(candidates)
    quantized = aquatic.calibrate(mapping.quantize(model), data, progress=False)
    spec = profile.export(quantized)  # the chip's own checks pass
    for name, codes in zip(("0", "2"), weights(spec)):
        bits = mapping.bits[name]
        # Loihi's fixed step 2/64 sits on its state grid of 1/64: codes are doubled.
        unit = 2 if chip == "loihi" else 1
        assert _codes(codes) <= unit * 2 ** (bits - 1)
    # The float model is unchanged and the quantized one runs.
    assert all(type(m) is not ann.Linear for m in model)
    assert quantized(data[0]).shape[-1] == 3


def test_each_population_keeps_one_shared_scale_in_the_copy():
    model, data = _xylo_model(), [_spikes(4, 15, 4)]
    mapping = aquatic.mixed_precision(model, data, budget=xylo.budget(), progress=False)
    quantized = mapping.quantize(model)
    weight_group = quantized[0].quantizers["weight"].group
    assert weight_group is quantized[1].quantizers["threshold"].group
    assert weight_group is not model[1].quantizers["threshold"].group
    assert quantized[2].quantizers["weight"].group is quantized[3].quantizers["threshold"].group


def test_chip_costs_one_word_per_weight_and_prefers_the_widest_among_equals():
    budget = xylo.budget()
    layer = nn.Linear(10, 3)
    assert {budget.cost(layer, b, macs=0) for b in (2, 4, 8)} == {30}
    # A silent network: every candidate loses nothing, so the widest is kept.
    model = _xylo_model()
    mapping = aquatic.mixed_precision(model, [torch.zeros(2, 5, 4)], budget=xylo, progress=False)
    assert mapping.bits == {"0": 8, "2": 8}


def test_a_network_that_cannot_fit_is_named_before_the_analysis():
    with pytest.raises(DoesNotFitError, match="20 input channels; Xylo has at most 16"):
        aquatic.mixed_precision(_xylo_model(20), [_spikes(2, 5, 20)], budget=xylo, progress=False)
    model = _dynapcnn_model()
    with pytest.raises(DoesNotFitError, match="Xylo's hidden neurons are an aquatic.nn.LIF"):
        aquatic.mixed_precision(model, [_spikes(2, 5, 16)], budget=xylo, progress=False)


def test_bad_chip_budgets_get_clear_errors():
    model, data = _xylo_model(), [_spikes(2, 5, 4)]
    with pytest.raises(ValueError, match="candidates 1, 16 cannot deploy on it"):
        aquatic.mixed_precision(model, data, budget=xylo, candidates=(1, 4, 16), progress=False)
    with pytest.raises(TypeError, match="hardware profile"):
        aquatic.mixed_precision(model, data, budget=aquatic.hw, progress=False)
    with pytest.raises(ValueError, match="qconfig_for cannot be combined with a chip"):
        aquatic.mixed_precision(
            model,
            data,
            budget=xylo,
            qconfig_for=lambda b: aquatic.ptq.weight_qconfig(b),
            progress=False,
        )
    with pytest.raises(TypeError, match="hardware profile"):
        aquatic.mixed_precision(model, data, budget=types.SimpleNamespace(), progress=False)
    float_neurons = _xylo_model()
    float_neurons[1] = ann.LIF(tau_mem=8.0, tau_syn=4.0, max_spikes=31)
    with pytest.raises(ValueError, match="layer '1' \\(LIF\\) carries no QConfig"):
        aquatic.mixed_precision(float_neurons, data, budget=xylo, progress=False)
    with pytest.raises(ValueError, match="min_bits <= max_bits"):
        ChipBudget("X", check=print, weight_qconfig=print, min_bits=4, max_bits=2)
