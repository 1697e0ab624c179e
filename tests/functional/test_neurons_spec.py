import pytest
import torch
from torch.nn import functional as F

from aquatic.functional import (
    LIFState,
    NeuronSpec,
    StateOps,
    lif,
    lif_recurrent,
    lif_step,
    neuron_sequence,
    neuron_step,
)
from aquatic.functional.neurons_spec import check_spec
from aquatic.functional.surrogate import FastSigmoid


def _spec(**kwargs):
    defaults = dict(
        alpha_mem=torch.tensor([0.9, 0.7, 0.5]),
        alpha_syn=torch.tensor(0.6),
        threshold=torch.tensor([0.8, 1.0, 0.6]),
        bias=torch.tensor(0.05),
        max_spikes=2,
        surrogate=FastSigmoid(),
    )
    return NeuronSpec(**{**defaults, **kwargs})


def _keywords(spec):
    """The keyword arguments of lif / lif_step that say what ``spec`` says."""
    kwargs = spec._asdict()
    kwargs.update(kwargs.pop("state_ops")._asdict())
    # Loihi's conventions are spec fields only (the keyword functions keep the defaults).
    for name in ("strict_threshold", "input_after_decay", "input_delay"):
        assert kwargs.pop(name) is False
    return kwargs


def test_spec_defaults_synaptic_and_options():
    spec = NeuronSpec(0.5)
    assert spec.alpha_syn is None and spec.threshold == 1.0 and spec.spiking
    assert not spec.synaptic and not spec.state_ops.any()
    assert NeuronSpec(0.5, 0.2).synaptic
    assert spec.options() == ("subtract", None, 1, None, False, False, True)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_step_and_sequence_equal_the_keyword_functions(reset):
    spec = _spec(reset=reset, norm_input=True, min_v_mem=-0.3)
    x = torch.rand(2, 9, 3, generator=torch.Generator().manual_seed(0)) * 2 - 0.4
    for method in ("loop", "fused"):
        by_spec = neuron_sequence(x, spec, record_states=True, method=method)
        by_keyword = lif(x, record_states=True, method=method, **_keywords(spec))
        for a, b in zip(by_spec, by_keyword):
            if isinstance(a, tuple):
                assert all(torch.equal(p, q) for p, q in zip(a, b) if p is not None)
            else:
                assert torch.equal(a, b)
    state = state_keyword = None
    for t in range(9):
        s, state = neuron_step(x[:, t], spec, state)
        s_keyword, state_keyword = lif_step(x[:, t], state_keyword, **_keywords(spec))
        assert torch.equal(s, s_keyword) and torch.equal(state.v_mem, state_keyword.v_mem)
    assert torch.equal(state.v_mem, by_spec.state.v_mem)


def test_state_ops_run_only_in_the_loop():
    halve = StateOps(quantize_v_mem=lambda v: torch.round(v * 4) / 4)
    spec = _spec(state_ops=halve)
    x = torch.rand(1, 5, 3)
    assert torch.equal(
        neuron_sequence(x, spec).output, neuron_sequence(x, spec, method="loop").output
    )
    with pytest.raises(ValueError, match="fused method"):
        neuron_sequence(x, spec, method="fused")


def test_check_spec():
    with pytest.raises(TypeError, match="NeuronSpec"):
        neuron_sequence(torch.zeros(1, 2, 1), {"alpha_mem": 0.5})
    with pytest.raises(ValueError, match="threshold=None"):
        check_spec(NeuronSpec(0.5, threshold=None))
    leak = NeuronSpec(0.5, threshold=None, spiking=False)
    assert check_spec(leak) is leak
    out = neuron_sequence(torch.tensor([[[1.0], [0.0]]]), leak).output
    assert out.flatten().tolist() == [1.0, 0.5]


def _reference_recurrent(x, spec, weight, spikes=None):
    """LIFRecurrent's time loop as it was written in the layer: lif_step per step."""
    state, previous, outputs = None, spikes, []
    if previous is None:
        previous = x.new_zeros(x[:, 0].shape)
    for t in range(x.shape[1]):
        previous, state = lif_step(x[:, t] + F.linear(previous, weight), state, **_keywords(spec))
        outputs.append(previous)
    return torch.stack(outputs, 1), state


@pytest.mark.parametrize("synaptic", [False, True])
def test_lif_recurrent_equals_the_step_loop_values_and_gradients(synaptic):
    generator = torch.Generator().manual_seed(1)
    results = []
    for run in ("functional", "reference"):
        x = torch.rand(2, 12, 3, generator=torch.Generator().manual_seed(2)) * 1.5
        x.requires_grad_()
        weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(3)) * 0.5
        weight.requires_grad_()
        alpha = torch.tensor([0.9, 0.8, 0.7], requires_grad=True)
        threshold = torch.tensor(0.9, requires_grad=True)
        spec = _spec(
            alpha_mem=alpha, alpha_syn=torch.tensor(0.6) if synaptic else None, threshold=threshold
        )
        if run == "functional":
            result = lif_recurrent(x, spec, weight, record_states=True)
            out, v_final = result.output, result.state.v_mem
            assert torch.equal(result.state.spikes, out[:, -1])
            assert torch.equal(result.v_mem[:, -1], v_final)
            assert (result.i_syn is not None) == synaptic
        else:
            out, state = _reference_recurrent(x, spec, weight)
            v_final = state.v_mem
        weights = torch.randn(out.shape, generator=generator)
        (out * weights).sum().add(v_final.sum()).backward()
        results.append((out, v_final, x.grad, weight.grad, alpha.grad, threshold.grad))
        generator = torch.Generator().manual_seed(1)
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert results[0][0].sum() > 0 and results[0][3].abs().sum() > 0


def test_lif_recurrent_starts_from_the_given_spikes():
    spec = NeuronSpec(0.5)
    weight = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    x = torch.zeros(1, 2, 2)
    first = torch.tensor([[0.0, 1.0]])
    out = lif_recurrent(x, spec, weight, state=LIFState(torch.zeros(1, 2), None, first))
    expected, _ = _reference_recurrent(x, spec, weight, spikes=first)
    assert torch.equal(out.output, expected)
    assert out.output[0, 0].tolist() == [1.0, 0.0]  # neuron 1's spike reached neuron 0


def test_lif_recurrent_errors():
    spec = NeuronSpec(0.5)
    with pytest.raises(ValueError, match=r"\(N, T, C\)"):
        lif_recurrent(torch.zeros(2, 3), spec, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\(3, 3\) tensor"):
        lif_recurrent(torch.zeros(2, 4, 3), spec, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="state.spikes"):
        state = LIFState(torch.zeros(2, 3), None, torch.zeros(1, 3))
        lif_recurrent(torch.zeros(2, 4, 3), spec, torch.zeros(3, 3), state=state)
    with pytest.raises(TypeError, match="NeuronSpec"):
        lif_recurrent(torch.zeros(2, 4, 3), 0.5, torch.zeros(3, 3))
