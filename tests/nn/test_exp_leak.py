import math

import pytest
import torch

from aquatic import QConfig
from aquatic.functional.neurons import LIFState
from aquatic.nn import ExpLeak
from aquatic.quantizers import BitShiftDecay, UniformQuantizer


def test_golden_trajectory():
    # alpha 0.5: 1; 0.5; 1.25; with bias 0.5: 1.5, 1.25, 2.125
    x = torch.tensor([1.0, 0.0, 1.0]).reshape(1, 3, 1)
    assert ExpLeak(alpha_mem=0.5)(x).flatten().tolist() == [1.0, 0.5, 1.25]
    assert ExpLeak(alpha_mem=0.5, bias=0.5)(x).flatten().tolist() == [1.5, 1.25, 2.125]


def test_norm_input_gives_unit_gain():
    # constant input c: v[t] = c (1 - alpha^(t+1)) -> c
    layer = ExpLeak(tau_mem=5.0, norm_input=True)
    out = layer(torch.full((1, 200, 1), 3.0, dtype=torch.float64))
    alpha = math.exp(-1 / 5)
    assert out[0, 9, 0].item() == pytest.approx(3.0 * (1 - alpha**10))
    assert out[0, -1, 0].item() == pytest.approx(3.0)


@pytest.mark.parametrize("method", ["fused", "loop"])
def test_state_streaming_and_gradients(method):
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    whole = ExpLeak(tau_mem=4.0, method=method).double()
    stream = ExpLeak(tau_mem=4.0, persistent_state=True, method=method).double()
    assert torch.equal(torch.cat([stream(x[:, :5]), stream(x[:, 5:])], 1), whole(x))
    layer = ExpLeak(tau_mem=4.0, train_decay=True, bias=True).double()
    v0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    layer(x, state=LIFState(v0))[:, -1].sum().backward()
    assert layer.tau_mem.grad.item() != 0 and layer.bias.grad.item() != 0
    torch.testing.assert_close(v0.grad, torch.full((2, 3), math.exp(-12 / 4), dtype=torch.float64))


def test_quantizers():
    qconfig = QConfig(
        alpha=BitShiftDecay.with_args(bits=4),
        activation=UniformQuantizer.with_args(bits=8, scale=0.25),
        state=UniformQuantizer.with_args(bits=16, scale=1 / 64),
        threshold=UniformQuantizer.with_args(bits=8),
    )
    layer = ExpLeak(alpha_mem=0.9, qconfig=qconfig)
    assert set(layer.quantizers) == {"alpha_mem", "v_mem", "activation"}
    assert layer.quantize_params() == {"alpha_mem": torch.tensor(0.875)}
    out = layer(torch.randn(2, 10, 3))
    assert torch.equal(out * 4, torch.round(out * 4))  # the returned membrane, on its grid
    state = layer.v_mem * 64
    assert torch.equal(state, torch.round(state))  # the state, on its own grid


def test_validation():
    with pytest.raises(ValueError, match="tau_mem must be > 0"):
        ExpLeak(tau_mem=-1.0)
    with pytest.raises(ValueError, match="alpha_mem must lie in"):
        ExpLeak(alpha_mem=2.0)
    with pytest.raises(ValueError, match="needs tau_mem="):
        ExpLeak()
    with pytest.raises(ValueError, match=r"\(N, T, \*\)"):
        ExpLeak(tau_mem=3.0)(torch.zeros(3))
