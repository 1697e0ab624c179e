import pytest
import torch

from aquatic import QConfig
from aquatic.nn import IAF, LIF
from aquatic.quantizers import BitShiftDecay, UniformQuantizer


def test_golden_trajectory():
    # no leak, threshold 1, x = 0.4 each step: 0.4, 0.8, 1.2 -> 0.2, 0.6, 1.0 -> 0
    layer = IAF(record_states=True)
    out = layer(torch.full((1, 5, 1), 0.4, dtype=torch.float64))
    assert out.flatten().tolist() == [0, 0, 1, 0, 1]
    expected = torch.tensor([0.4, 0.8, 0.2, 0.6, 0.0], dtype=torch.float64)
    torch.testing.assert_close(layer.recordings["v_mem"].flatten(), expected)


def test_golden_zero_reset_and_multi_spike():
    # x = 2.5, 0.5: 2.5 -> 2 spikes, reset to 0; then 0.5
    layer = IAF(reset="zero", max_spikes=4, record_states=True)
    assert layer(torch.tensor([2.5, 0.5]).reshape(1, 2, 1)).flatten().tolist() == [2, 0]
    assert layer.recordings["v_mem"].flatten().tolist() == [0.0, 0.5]


@pytest.mark.parametrize("method", ["fused", "loop"])
@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(tau_syn=3.0, reset="zero"), dict(max_spikes=3, min_v_mem=-1.0, bias=0.1)],
    ids=str,
)
def test_iaf_equals_lif_with_alpha_one(kwargs, method):
    x = torch.randn(3, 25, 4, dtype=torch.float64)
    iaf = IAF(threshold=0.7, train_threshold=True, method=method, **kwargs).double()
    lif = LIF(alpha_mem=1.0, threshold=0.7, train_threshold=True, method=method, **kwargs).double()
    outs = []
    for layer in (iaf, lif):
        xx = x.clone().requires_grad_()
        out = layer(xx)
        (out * torch.linspace(0, 1, 25, dtype=torch.float64).reshape(1, 25, 1)).sum().backward()
        outs.append((out, layer.v_mem, xx.grad, layer.threshold.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    torch.testing.assert_close(outs[0][2], outs[1][2])
    torch.testing.assert_close(outs[0][3], outs[1][3])


def test_no_membrane_decay_to_quantize():
    qconfig = QConfig(
        alpha=BitShiftDecay.with_args(bits=4),
        tau=BitShiftDecay.with_args(bits=4, param="tau"),
        threshold=UniformQuantizer.with_args(bits=8, scale=0.25),
    )
    layer = IAF(threshold=1.1, tau_syn=4.0, qconfig=qconfig)
    assert set(layer.quantizers) == {"tau_syn", "alpha_syn", "threshold"}
    assert layer.spec().alpha_mem == 1.0
    assert layer.quantize_params()["threshold"] == 1.0
    assert set(dict(IAF(tau_syn=4.0, train_decay=True).named_parameters())) == {"tau_syn"}


def test_validation():
    with pytest.raises(ValueError, match="threshold must be positive"):
        IAF(threshold=-1.0)
    with pytest.raises(ValueError, match="unknown reset mode"):
        IAF(reset="hold")
    with pytest.raises(TypeError):
        IAF(tau_mem=5.0)
    with pytest.raises(ValueError, match=r"\(N, T, \*\)"):
        IAF()(torch.zeros(3, 4))
