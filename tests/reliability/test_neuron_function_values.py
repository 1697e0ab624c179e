"""The functional neurons refuse parameter values outside their ranges, by class:
decays outside [0, 1], thresholds not positive and finite, non-finite biases, an
infinite or NaN min_v_mem, and sequences without time steps; as numbers and as tensors,
on every path (fused, loop, one step, recurrent)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aquatic.functional import neurons as F
from aquatic.functional.neuron_types import NeuronSpec

X = torch.rand(2, 3, 4)

BAD_DECAYS = st.one_of(
    st.floats(max_value=-1e-6, allow_nan=False),
    st.floats(min_value=1 + 1e-6, allow_nan=False),
    st.just(math.nan),
)
BAD_THRESHOLDS = st.one_of(
    st.floats(max_value=0.0, allow_nan=False), st.sampled_from([math.nan, math.inf])
)
BAD_BIASES = st.sampled_from([math.nan, math.inf, -math.inf])


def run_all(**kwargs):
    """Every path that takes the parameters as given."""
    yield lambda: F.lif(X, method="fused", **kwargs)
    yield lambda: F.lif(X, method="loop", **kwargs)
    step_kwargs = {k: v for k, v in kwargs.items()}
    yield lambda: F.lif_step(X[:, 0], None, **step_kwargs)


def refuses(pattern, **kwargs):
    for call in run_all(**kwargs):
        with pytest.raises(ValueError, match=pattern):
            call()


@given(alpha=BAD_DECAYS, as_tensor=st.booleans())
def test_decays_outside_zero_one(alpha, as_tensor):
    value = torch.tensor([0.5, alpha, 0.5, 0.5]) if as_tensor else alpha
    refuses(r"alpha_mem must lie in \[0, 1\]", alpha_mem=value)
    refuses(r"alpha_syn must lie in \[0, 1\]", alpha_mem=0.5, alpha_syn=value)


@given(threshold=BAD_THRESHOLDS, as_tensor=st.booleans())
def test_thresholds_not_positive_and_finite(threshold, as_tensor):
    value = torch.tensor([1.0, 1.0, threshold, 1.0]) if as_tensor else threshold
    refuses("threshold must be positive and finite", alpha_mem=0.5, threshold=value)


def test_a_leaky_integrator_ignores_the_threshold():
    # exp_leak has no threshold to check; the membrane is returned
    out = F.exp_leak(X, alpha_mem=0.5)
    assert torch.isfinite(out.output).all()


@given(bias=BAD_BIASES, as_tensor=st.booleans())
def test_non_finite_biases(bias, as_tensor):
    value = torch.tensor([0.0, 0.0, 0.0, bias]) if as_tensor else bias
    refuses("bias must be finite", alpha_mem=0.5, bias=value)


def test_tensor_errors_name_the_index():
    with pytest.raises(ValueError, match=r"got 1.5 at index 2 of shape \(4,\)"):
        F.lif(X, alpha_mem=torch.tensor([0.5, 0.5, 1.5, 0.5]))


@pytest.mark.parametrize("min_v_mem", [-math.inf, math.inf, math.nan])
def test_min_v_mem_must_be_finite(min_v_mem):
    refuses("min_v_mem must be a finite number.*min_v_mem=None", alpha_mem=0.5, min_v_mem=min_v_mem)


def test_min_v_mem_must_be_a_number():
    with pytest.raises(TypeError, match="min_v_mem must be a number or None"):
        F.lif(X, alpha_mem=0.5, min_v_mem="low")


@pytest.mark.parametrize("method", ["fused", "loop"])
def test_no_time_steps(method):
    with pytest.raises(ValueError, match=r"no time steps \(T = 0"):
        F.lif(torch.rand(2, 0, 4), alpha_mem=0.5, method=method)
    with pytest.raises(ValueError, match=r"no time steps \(T = 0"):
        F.exp_leak(torch.rand(2, 0, 4), alpha_mem=0.5)


def test_specs_are_checked_too():
    spec = NeuronSpec(alpha_mem=0.5, threshold=torch.tensor(0.0))
    with pytest.raises(ValueError, match="threshold must be positive"):
        F.neuron_sequence(X, spec)
    with pytest.raises(ValueError, match="threshold must be positive"):
        F.neuron_step(X[:, 0], spec)
    with pytest.raises(ValueError, match="threshold must be positive"):
        F.lif_recurrent(X, spec, torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"no time steps \(T = 0"):
        F.lif_recurrent(torch.rand(2, 0, 4), NeuronSpec(alpha_mem=0.5), torch.zeros(4, 4))


@given(
    alpha=st.floats(0, 1),
    threshold=st.floats(1e-3, 1e3),
    bias=st.floats(-1e3, 1e3),
    min_v_mem=st.one_of(st.none(), st.floats(-1e3, 0)),
)
def test_valid_values_run_and_agree_across_paths(alpha, threshold, bias, min_v_mem):
    kwargs = dict(alpha_mem=alpha, threshold=threshold, bias=bias, min_v_mem=min_v_mem)
    fused = F.lif(X, method="fused", **kwargs)
    loop = F.lif(X, method="loop", **kwargs)
    assert torch.equal(fused.output, loop.output)
