import copy
import math

import pytest
import torch

from aquatic import QConfig
from aquatic.functional.neurons import LIFState
from aquatic.nn import IAF, LIF, FastSigmoid, LIFCell, LIFRecurrent
from aquatic.quantizers import BitShiftDecay, UniformDecay, UniformQuantizer

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


# -- decays on a quantized state: the chip's integer rule -----------------------------------

STATE = UniformQuantizer.with_args(bits=16, scale=0.25)  # codes v / 0.25, int16


def membrane_codes(layer, x, scale=0.25):
    layer.record_states = True
    layer(x)
    return (layer.recordings["v_mem"] / scale).flatten().tolist()


def pulse(*values, steps=12):
    x = torch.zeros(1, steps, len(values))
    x[0, 0] = torch.tensor(values)
    return x


def test_bit_shift_decay_runs_xylos_rule_on_the_state_grid():
    # alpha 0.9 -> dash 3 (alpha_q 0.875); threshold far away. Input 2.5 = code 10, then 0:
    # v -= max(v >> 3, 1): 10, 9, 8, 7, 6 (7 >> 3 = 0 leaks 1), 5, ..., 1, 0, 0.
    # (alpha_q * v rounded to the nearest code would stop at 4: 4 * 0.875 = 3.5 -> 4.)
    qconfig = QConfig(alpha=BitShiftDecay.with_args(bits=4), state=STATE)
    layer = LIF(alpha_mem=0.9, threshold=100.0, qconfig=qconfig)
    assert membrane_codes(layer, pulse(2.5)) == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0]
    # negative codes: -10 >> 3 = -2 -> -8; then -1 each step (>> rounds toward -inf)
    assert membrane_codes(layer, pulse(-2.5)) == [-10, -8, -7, -6, -5, -4, -3, -2, -1, 0, 0, 0]
    # the same with the decay given as tau and quantized by QConfig.tau only
    tau_only = QConfig(tau=BitShiftDecay.with_args(bits=4, param="tau"), state=STATE)
    layer = LIF(tau_mem=10.0, threshold=100.0, qconfig=tau_only)  # dash round(3.39) = 3
    assert membrane_codes(layer, pulse(2.5)) == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0]


def test_bit_shift_decay_of_the_synaptic_current():
    # alpha_syn 0.5 -> dash 1: i = rule(i + x). x = 3.0 (code 12) at t = 0:
    # i: 12 - 6 = 6, 6 - 3 = 3, 3 - 1 = 2, 2 - 1 = 1, 1 - max(0, 1) = 0.
    # alpha_mem 0.0 -> dash 0: v = v - v + i = i. For IAF (no membrane leak) v sums i.
    qconfig = QConfig(alpha=BitShiftDecay.with_args(bits=4), state=STATE)
    layer = LIF(alpha_mem=0.0, alpha_syn=0.5, threshold=100.0, qconfig=qconfig)
    layer.record_states = True
    layer(pulse(3.0, steps=6))
    assert (layer.recordings["i_syn"] * 4).flatten().tolist() == [6, 3, 2, 1, 0, 0]
    assert (layer.recordings["v_mem"] * 4).flatten().tolist() == [6, 3, 2, 1, 0, 0]
    iaf = IAF(threshold=100.0, alpha_syn=0.5, qconfig=qconfig)
    assert membrane_codes(iaf, pulse(3.0, steps=6)) == [6, 9, 11, 12, 12, 12]


def test_uniform_decay_runs_loihis_rule():
    # 12-bit d = 1024 (alpha 0.75); code -7: rtz(-5.25) = -5, rtz(-3.75) = -3 (nearest
    # would give -4), rtz(-2.25) = -2, rtz(-1.5) = -1, rtz(-0.75) = 0.
    qconfig = QConfig(alpha=UniformDecay.with_args(bits=12), state=STATE)
    layer = LIF(alpha_mem=0.75, threshold=100.0, reset="zero", qconfig=qconfig)
    assert membrane_codes(layer, pulse(-1.75, steps=6)) == [-7, -5, -3, -2, -1, 0]


def test_per_channel_state_grid():
    # scales 0.25 and 0.5: 2.5 is code 10 and code 5; dash 3. 5 -> 4 -> 3 -> 2 -> 1 -> 0.
    grid = UniformQuantizer.with_args(bits=16, scale=[0.25, 0.5], ch_axis=1)
    qconfig = QConfig(alpha=BitShiftDecay.with_args(bits=4), state=grid)
    layer = LIF(alpha_mem=0.9, threshold=100.0, record_states=True, qconfig=qconfig)
    layer(pulse(2.5, 2.5, steps=6))
    codes = layer.recordings["v_mem"][0] / torch.tensor([0.25, 0.5])
    assert codes.T.tolist() == [[10, 9, 8, 7, 6, 5], [5, 4, 3, 2, 1, 0]]


@pytest.mark.parametrize(
    "qconfig",
    [
        QConfig(alpha=BitShiftDecay.with_args(bits=4)),  # no state quantizer
        QConfig(alpha=UniformQuantizer.with_args(bits=8, scale=1 / 8), state=STATE),  # no rule
    ],
    ids=["no-state-quantizer", "uniform-alpha"],
)
def test_without_a_rule_or_a_grid_the_decay_multiplies(qconfig):
    # alpha_q 0.875 either way; v = 2.5 * 0.875**t, rounded to the grid of 0.25 when the
    # state is quantized: codes 10, 8.75 -> 9, 7.875 -> 8, 7, 6.125 -> 6, 5.25 -> 5,
    # 4.375 -> 4, 3.5 -> 4 (half to even), 4, ...
    layer = LIF(alpha_mem=0.9, threshold=100.0, qconfig=qconfig)
    codes = membrane_codes(layer, pulse(2.5, steps=10))
    if qconfig.state is None:
        expected = [10 * 0.875**t for t in range(10)]
        assert codes == pytest.approx(expected, rel=1e-6)
    else:
        assert codes == [10, 9, 8, 7, 6, 5, 4, 4, 4, 4]


def test_switching_fake_quant_off_switches_the_rule_off():
    qconfig = QConfig(alpha=BitShiftDecay.with_args(bits=4), state=STATE)
    layer = LIF(alpha_mem=0.9, threshold=100.0, qconfig=qconfig)
    layer.quantizers["v_mem"].fake_quant_enabled = False
    # alpha_q = 0.875, float membrane: 2.5 * 0.875**t
    codes = membrane_codes(layer, pulse(2.5, steps=4))
    assert codes == pytest.approx([10, 8.75, 7.65625, 6.69921875])
    layer.quantizers["v_mem"].fake_quant_enabled = True
    layer.quantizers["alpha_mem"].fake_quant_enabled = False
    # alpha 0.9 unquantized, state on the grid: 10, 9, round(8.1) = 8, round(7.2) = 7
    assert membrane_codes(layer, pulse(2.5, steps=4)) == [10, 9, 8, 7]


def test_rule_gradient_is_the_float_products():
    # One step from an on-grid state: the rule's value differs from alpha * v, but its
    # gradient is alpha_q for v and v for alpha_q, as without the rule.
    grads = []
    for state in (STATE, None):
        qconfig = QConfig(alpha=BitShiftDecay.with_args(bits=4), state=state)
        cell = LIFCell(
            alpha_mem=0.9, alpha_syn=0.7, threshold=100.0, train_decay=True, qconfig=qconfig
        )
        v0 = torch.tensor([[1.75, -0.5]], requires_grad=True)
        i0 = torch.tensor([[0.5, 0.25]], requires_grad=True)
        x = torch.tensor([[0.25, 1.0]], requires_grad=True)
        _, new = cell(x, LIFState(v0, i0))
        (new.v_mem * torch.tensor([1.0, 3.0])).sum().backward()
        grads.append([v0.grad, i0.grad, x.grad, cell.alpha_mem.grad, cell.alpha_syn.grad])
    for with_rule, without in zip(*grads):
        torch.testing.assert_close(with_rule, without, rtol=0, atol=0)
    # d v1 / d v0 = alpha_q = 0.875; d/d alpha_mem = (v0 . [1, 3]) * 2**-3 / (1 - 0.9)
    assert grads[0][0].tolist() == [[0.875, 2.625]]
    torch.testing.assert_close(grads[0][3], torch.tensor((1.75 - 1.5) * 0.125 / 0.1))


def test_cell_and_recurrent_layer_use_the_rule_too():
    qconfig = QConfig(alpha=BitShiftDecay.with_args(bits=4), state=STATE)
    kwargs = dict(alpha_mem=0.9, alpha_syn=0.6, threshold=1.0, qconfig=qconfig)
    x = torch.rand(2, 15, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    layer = LIF(record_states=True, **kwargs)
    spikes = layer(x)
    cell, state, cell_spikes = LIFCell(**kwargs), None, []
    for t in range(15):
        s, state = cell(x[:, t], state)
        cell_spikes.append(s)
    recurrent = LIFRecurrent(3, record_states=True, **kwargs)
    with torch.no_grad():
        recurrent.rec_weight.zero_()
    assert torch.equal(torch.stack(cell_spikes, 1), spikes)
    assert torch.equal(recurrent(x), spikes)
    assert torch.equal(recurrent.recordings["v_mem"], layer.recordings["v_mem"])
    # and all of them differ from the multiplying layer (the rule ran)
    plain = LIF(record_states=True, **{**kwargs, "qconfig": QConfig(alpha=qconfig.alpha)})
    plain(x)
    assert not torch.equal(plain.recordings["v_mem"], layer.recordings["v_mem"])


def test_state_quantizer_that_has_seen_nothing_yet():
    # An observer-based state quantizer has no grid before its first step: the decay of a
    # given initial state multiplies, then the state is quantized.
    qconfig = QConfig(
        alpha=BitShiftDecay.with_args(bits=4), state=UniformQuantizer.with_args(bits=8)
    )
    layer = LIF(alpha_mem=0.9, threshold=100.0, qconfig=qconfig)
    layer(torch.zeros(1, 3, 1), state=LIFState(torch.tensor([[2.0]])))
    scale = layer.quantizers["v_mem"].qparams()["scale"]
    assert torch.equal(layer.v_mem / scale, torch.round(layer.v_mem / scale))


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


def test_checkpoint_gives_the_gradients_of_the_default():
    torch.manual_seed(0)
    x = torch.rand(3, 23, 4, dtype=torch.float64) * 0.8
    results = []
    for checkpoint in (None, 5):
        layer = LIF(
            tau_mem=6.0,
            tau_syn=3.0,
            train_decay=True,
            train_threshold=True,
            checkpoint=checkpoint,
        ).double()
        inputs = x.clone().requires_grad_()
        out = layer(inputs)
        loss = (out * torch.linspace(-1, 1, 23, dtype=torch.float64)[:, None]).sum()
        params = [p for _, p in sorted(layer.named_parameters())]
        results.append((out, torch.autograd.grad(loss, [inputs] + params)))
    (out, grads), (out_k, grads_k) = results
    assert torch.equal(out, out_k) and out.sum() > 0
    assert torch.equal(grads[0], grads_k[0])  # the input's gradient: the same bits
    for a, b in zip(grads[1:], grads_k[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_checkpoint_is_checked_and_only_for_the_fused_float_sequence():
    with pytest.raises(ValueError, match="checkpoint must be None"):
        LIF(tau_mem=5.0, checkpoint=0)
    layer = LIF(tau_mem=5.0, checkpoint=4, method="loop")
    with pytest.raises(ValueError, match="checkpoint=4 applies to the fused float sequence"):
        layer(torch.rand(1, 8, 2))
