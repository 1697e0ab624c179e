import copy
import math

import pytest
import torch

from aquatic import QConfig
from aquatic.functional.neurons import LIFState
from aquatic.nn import LIF, FastSigmoid, LIFCell, LIFRecurrent
from aquatic.quantizers import BitShiftDecay, UniformQuantizer

F64 = torch.float64


# -- construction and validation -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tau_mem=0.0), ValueError, r"tau_mem must be > 0.*got 0"),
        (dict(tau_mem=torch.tensor([5.0, -1.0])), ValueError, "tau_mem must be > 0"),
        (dict(tau_mem=10.0, tau_syn=-2.0), ValueError, "tau_syn must be > 0"),
        (dict(alpha_mem=1.5), ValueError, r"alpha_mem must lie in \[0, 1\].*tau_mem="),
        (dict(alpha_mem=0.9, alpha_syn=-0.1), ValueError, "alpha_syn must lie in"),
        (dict(tau_mem=10.0, threshold=0.0), ValueError, "threshold must be positive"),
        (dict(tau_mem=10.0, threshold=[1.0, -1.0]), ValueError, "threshold must be positive"),
        (dict(tau_mem=10.0, reset="none"), ValueError, "unknown reset mode 'none'"),
        (dict(tau_mem=10.0, alpha_mem=0.9), ValueError, "not both"),
        (dict(), ValueError, "needs tau_mem="),
        (dict(tau_mem=10.0, max_spikes=0), ValueError, "max_spikes"),
        (dict(tau_mem=10.0, method="cuda"), ValueError, "unknown method"),
        (dict(tau_mem=10.0, surrogate=FastSigmoid), TypeError, r"FastSigmoid\(\)"),
        (dict(tau_mem="ten"), TypeError, "tau_mem must be a number"),
        (dict(tau_mem=10.0, min_v_mem="low"), TypeError, "min_v_mem"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LIF(**kwargs)


def test_trainable_only_when_asked():
    layer = LIF(tau_mem=10.0, tau_syn=5.0, threshold=1.0)
    assert dict(layer.named_parameters()) == {}
    assert {"tau_mem", "tau_syn", "threshold"} <= set(layer.state_dict())
    assert layer.alpha_mem is None and layer.alpha_syn is None
    layer = LIF(alpha_mem=0.9, alpha_syn=0.8, train_decay=True, train_threshold=True, bias=True)
    assert set(dict(layer.named_parameters())) == {"alpha_mem", "alpha_syn", "threshold", "bias"}
    assert "(trained)" in repr(layer)


def test_tau_and_alpha_are_the_same_neuron():
    x = torch.randn(3, 20, 4)
    by_tau = LIF(tau_mem=8.0, tau_syn=3.0)
    by_alpha = LIF(alpha_mem=math.exp(-1 / 8), alpha_syn=math.exp(-1 / 3))
    torch.testing.assert_close(by_tau.decay("mem"), by_alpha.decay("mem"))
    assert torch.equal(by_tau(x), by_alpha(x))


def test_per_neuron_parameters():
    x = torch.rand(2, 30, 3) * 0.5
    taus, thresholds = [2.0, 5.0, 20.0], [0.5, 1.0, 2.0]
    layer = LIF(tau_mem=torch.tensor(taus), threshold=torch.tensor(thresholds))
    out = layer(x)
    for n, (tau, threshold) in enumerate(zip(taus, thresholds)):
        single = LIF(tau_mem=tau, threshold=threshold)(x[:, :, n : n + 1])
        assert torch.equal(out[:, :, n : n + 1], single)
    with pytest.raises(ValueError, match="does not broadcast"):
        layer(torch.zeros(2, 5, 4))


def test_golden_layer_trajectory():
    # alpha_mem 0.5, alpha_syn 0.5, bias 0.1, x = 1, 0, 2:
    # i = 0.5, 0.25, 1.125; v0 = 0.5 + 0.1 = 0.6; v1 = 0.3 + 0.25 + 0.1 = 0.65;
    # v2 = 0.325 + 1.125 + 0.1 = 1.55 -> spike -> 0.55
    layer = LIF(alpha_mem=0.5, alpha_syn=0.5, bias=0.1, record_states=True)
    out = layer(torch.tensor([1.0, 0.0, 2.0]).reshape(1, 3, 1))
    assert out.flatten().tolist() == [0, 0, 1]
    torch.testing.assert_close(layer.recordings["v_mem"].flatten(), torch.tensor([0.6, 0.65, 0.55]))
    torch.testing.assert_close(
        layer.recordings["i_syn"].flatten(), torch.tensor([0.5, 0.25, 1.125])
    )


@pytest.mark.parametrize("rank", [1, 2])
def test_bad_input_rank(rank):
    with pytest.raises(ValueError, match=r"\(N, T, \*\)"):
        LIF(tau_mem=5.0)(torch.zeros((4,) * rank))


def test_bad_state_shape():
    layer = LIF(tau_mem=5.0, tau_syn=2.0)
    with pytest.raises(ValueError, match=r"state.i_syn has shape \(2, 4\)"):
        layer(torch.zeros(2, 5, 3), state=LIFState(torch.zeros(2, 3), torch.zeros(2, 4)))


# -- state ---------------------------------------------------------------------------------


def test_each_forward_starts_from_zero_and_keeps_final_state():
    layer = LIF(tau_mem=5.0, record_states=True)
    x = torch.rand(2, 10, 3)
    first = layer(x)
    assert torch.equal(layer.v_mem, layer.recordings["v_mem"][:, -1])
    assert not layer.v_mem.requires_grad
    assert torch.equal(layer(x), first)  # not streamed: starts from zero again


def test_explicit_state():
    layer = LIF(alpha_mem=0.5)
    state = LIFState(torch.full((1, 1), 0.9))
    # v = 0.45 + 0.6 = 1.05 -> spike -> 0.05
    assert layer(torch.full((1, 1, 1), 0.6), state=state).item() == 1.0
    torch.testing.assert_close(layer.v_mem, torch.tensor([[0.05]]))


@pytest.mark.parametrize("method", ["fused", "loop"])
def test_persistent_state_streams(method):
    x = torch.rand(2, 20, 3)
    whole = LIF(tau_mem=5.0, tau_syn=2.0, method=method)(x)
    stream = LIF(tau_mem=5.0, tau_syn=2.0, persistent_state=True, method=method)
    parts = torch.cat([stream(x[:, :7]), stream(x[:, 7:])], 1)
    assert torch.equal(parts, whole)
    # a new batch size starts from zero
    assert torch.equal(stream(x[:1]), whole[:1])
    stream.reset_states()
    assert stream.v_mem is None and torch.equal(stream(x), whole)


def test_state_follows_to_and_is_not_shared():
    a, b = LIF(tau_mem=5.0, tau_syn=2.0), LIF(tau_mem=5.0, tau_syn=2.0)
    a(torch.rand(2, 4, 3))
    assert b.v_mem is None
    c = copy.deepcopy(a)
    c(torch.rand(2, 4, 3) + 1)
    assert not torch.equal(a.v_mem, c.v_mem)
    a.to(F64)
    assert a.v_mem.dtype == F64 and a.i_syn.dtype == F64 and a.tau_mem.dtype == F64
    assert a(torch.rand(2, 4, 3, dtype=F64)).dtype == F64
    assert "v_mem" not in a.state_dict()


def test_fused_and_loop_layers_agree():
    torch.manual_seed(1)
    x = torch.randn(3, 16, 5, dtype=F64)
    kwargs = dict(tau_mem=torch.linspace(2, 10, 5), tau_syn=3.0, train_decay=True)
    kwargs.update(train_threshold=True, bias=0.1, reset="zero", norm_input=True)
    layers = [LIF(**kwargs, method=m).to(F64) for m in ("fused", "loop")]
    outs = []
    for layer, xx in zip(layers, (x.clone().requires_grad_(), x.clone().requires_grad_())):
        out = layer(xx)
        (out * torch.arange(16.0, dtype=F64).reshape(1, 16, 1)).sum().backward()
        outs.append((out, xx.grad, [p.grad for p in layer.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    for p, q in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(p, q)


# -- quantization ----------------------------------------------------------------------------


def test_bit_shift_alpha_round_trips_to_dash():
    qconfig = QConfig(alpha=BitShiftDecay.with_args(bits=4))
    layer = LIF(alpha_mem=torch.tensor([0.9, 0.5, 0.99]), qconfig=qconfig)
    # dash = round(-log2(1 - alpha)) = round(3.32), 1, round(6.64)
    dash = layer.quantizers["alpha_mem"].to_int(layer.alpha_mem)
    assert dash.tolist() == [3, 1, 7]
    alpha_q = layer.quantize_params()["alpha_mem"]
    assert torch.equal(alpha_q, 1 - 2.0 ** -dash.float())
    # forward uses exactly these decays
    x = torch.rand(2, 12, 3)
    assert torch.equal(layer(x), LIF(alpha_mem=alpha_q)(x))


def test_bit_shift_tau_round_trips_to_dash():
    qconfig = QConfig(tau=BitShiftDecay.with_args(bits=4, param="tau"))
    layer = LIF(tau_mem=10.0, tau_syn=2.0, qconfig=qconfig)
    params = layer.quantize_params()
    assert set(params) == {"tau_mem", "tau_syn"}
    # alpha = exp(-1/10) = 0.905: dash = round(3.39) = 3; exp(-1/2) = 0.607: dash 1
    dash = layer.quantizers["tau_mem"].to_int(layer.tau_mem)
    assert dash.item() == 3 and layer.quantizers["tau_syn"].to_int(layer.tau_syn).item() == 1
    torch.testing.assert_close(torch.exp(-1 / params["tau_mem"]), torch.tensor(0.875))
    torch.testing.assert_close(layer.decay("syn"), torch.tensor(0.5))


def test_decays_from_taus_use_the_alpha_quantizer():
    qconfig = QConfig(alpha=BitShiftDecay.with_args(bits=4))
    layer = LIF(tau_mem=10.0, qconfig=qconfig)
    assert "alpha_mem" in layer.quantizers and "tau_mem" not in layer.quantizers
    assert layer.quantize_params() == {"alpha_mem": torch.tensor(0.875)}


def test_threshold_bias_and_state_quantizers():
    grid = UniformQuantizer.with_args(bits=12, scale=1 / 8)
    qconfig = QConfig(threshold=grid, bias=grid, state=grid)
    layer = LIF(alpha_mem=0.7, alpha_syn=0.6, threshold=1.1, bias=0.33, qconfig=qconfig)
    layer.record_states = True
    assert set(layer.quantizers) == {"threshold", "bias", "v_mem", "i_syn"}
    params = layer.quantize_params()
    assert params == {"threshold": torch.tensor(1.125), "bias": torch.tensor(0.375)}
    layer(torch.randn(2, 10, 3))
    for name in ("v_mem", "i_syn"):
        trace = layer.recordings[name] * 8
        assert torch.equal(trace, torch.round(trace)) and trace.abs().sum() > 0


def test_gradients_reach_tau_through_bit_shift_and_threshold():
    qconfig = QConfig(tau=BitShiftDecay.with_args(bits=4, param="tau"))
    layer = LIF(tau_mem=10.0, tau_syn=4.0, train_decay=True, train_threshold=True, qconfig=qconfig)
    x = torch.rand(4, 20, 3, requires_grad=True)
    layer(x).sum().backward()
    for grad in (layer.tau_mem.grad, layer.tau_syn.grad, layer.threshold.grad, x.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# -- LIFCell ----------------------------------------------------------------------------------


def test_cell_steps_equal_the_sequence():
    x = torch.randn(3, 15, 4)
    kwargs = dict(tau_mem=6.0, tau_syn=3.0, threshold=0.8, reset="zero", max_spikes=2)
    cell, layer = LIFCell(**kwargs), LIF(**kwargs)
    state, spikes = None, []
    for t in range(15):
        s, state = cell(x[:, t], state)
        spikes.append(s)
    assert torch.equal(torch.stack(spikes, 1), layer(x))
    assert torch.equal(state.v_mem, layer.v_mem) and torch.equal(state.i_syn, layer.i_syn)
    assert not hasattr(cell, "v_mem")


# -- LIFRecurrent ------------------------------------------------------------------------------


def test_recurrent_golden():
    # Neuron 1 feeds neuron 0 with weight 1 (rec_weight[0, 1]); alpha 0.5, threshold 1.
    # t0: x = (0, 1.2): v = (0, 1.2) -> neuron 1 spikes -> (0, 0.2)
    # t1: x = (0, 0) + W s = (1, 0): v = (1, 0.1) -> neuron 0 spikes -> (0, 0.1)
    # t2: nothing: v = (0, 0.05)
    layer = LIFRecurrent(2, alpha_mem=0.5, record_states=True)
    with torch.no_grad():
        layer.rec_weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    x = torch.tensor([[[0.0, 1.2], [0.0, 0.0], [0.0, 0.0]]])
    assert layer(x)[0].tolist() == [[0, 1], [1, 0], [0, 0]]
    torch.testing.assert_close(
        layer.recordings["v_mem"][0], torch.tensor([[0.0, 0.2], [0.0, 0.1], [0.0, 0.05]])
    )


def test_recurrent_with_zero_weights_is_lif():
    layer = LIFRecurrent(4, tau_mem=5.0, tau_syn=2.0)
    with torch.no_grad():
        layer.rec_weight.zero_()
    x = torch.randn(2, 10, 4)
    assert torch.equal(layer(x), LIF(tau_mem=5.0, tau_syn=2.0)(x))


def test_recurrent_streams_quantizes_and_learns():
    qconfig = QConfig(weight=UniformQuantizer.with_args(bits=8))
    layer = LIFRecurrent(3, tau_mem=5.0, persistent_state=True, qconfig=qconfig)
    assert set(layer.quantize_params()) == {"rec_weight"}
    x = torch.rand(2, 12, 3) * 2
    whole = LIFRecurrent(3, tau_mem=5.0, qconfig=qconfig)
    whole.load_state_dict(layer.state_dict())
    expected = whole(x)
    assert torch.equal(torch.cat([layer(x[:, :5]), layer(x[:, 5:])], 1), expected)
    expected.sum().backward()
    assert whole.rec_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(N, T, 3\)"):
        layer(torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="num_neurons"):
        LIFRecurrent(0, tau_mem=5.0)
