"""A threshold quantizer that rounds a valid threshold to 0 (or below) is refused at
forward with the layer, the threshold and the fix, instead of neurons that fire at every
step (or NaN spike counts with max_spikes > 1)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import aquatic
from aquatic.quantizers import UniformQuantizer

LAYERS = {
    "LIF": lambda **kw: aquatic.nn.LIF(tau_mem=4.0, **kw),
    "IAF": lambda **kw: aquatic.nn.IAF(**kw),
    "LIFRecurrent": lambda **kw: aquatic.nn.LIFRecurrent(2, tau_mem=4.0, **kw),
}


@settings(max_examples=60, deadline=None)
@given(
    small=st.floats(1e-6, 10.0),
    large=st.floats(0.01, 100.0),
    bits=st.integers(2, 8),
    layer=st.sampled_from(sorted(LAYERS)),
    max_spikes=st.sampled_from([1, 3]),
)
def test_a_quantized_threshold_is_positive_or_refused(small, large, bits, layer, max_spikes):
    qconfig = aquatic.QConfig(threshold=UniformQuantizer.with_args(bits=bits))
    neuron = LAYERS[layer](threshold=[small, large], max_spikes=max_spikes, qconfig=qconfig)
    x = torch.rand(2, 4, 2)
    # the symmetric grid of the largest threshold: step max / (2**(bits-1) - 1)
    step = max(small, large) / (2 ** (bits - 1) - 1)
    if min(small, large) > 0.51 * step:  # rounds to one step or more
        out = neuron(x)
        assert torch.isfinite(out).all()
        assert (neuron.eval().spec().threshold > 0).all()
    elif min(small, large) < 0.49 * step:  # rounds to 0
        with pytest.raises(
            ValueError,
            match=rf"{layer}: its threshold quantizer .* rounds threshold\[\d\] = .* to 0, "
            "which is not positive",
        ):
            neuron(x)


def test_the_message_names_the_fix_and_convert_is_never_reached():
    qconfig = aquatic.QConfig(threshold=UniformQuantizer.with_args(bits=4))
    neuron = aquatic.nn.LIF(tau_mem=4.0, threshold=[0.01, 5.0], max_spikes=3, qconfig=qconfig)
    with pytest.raises(ValueError, match="finer grid .* or raise the smallest threshold"):
        neuron(torch.rand(1, 3, 2))
    with pytest.raises(ValueError, match="rounds threshold"):
        neuron.spec()


def test_a_scalar_threshold_is_named_without_an_index():
    fixed = UniformQuantizer.with_args(scale=1.0, zero_point=0)
    neuron = aquatic.nn.IAF(threshold=0.4, qconfig=aquatic.QConfig(threshold=fixed))
    with pytest.raises(ValueError, match=r"rounds threshold = 0.4 to 0,"):
        neuron(torch.rand(1, 3, 1))


def test_thresholds_on_a_shared_chip_grid():
    # Xylo's preset puts thresholds on the weights' grid: a threshold below half a weight
    # step would be 0 on the chip too
    from aquatic.hw import xylo

    qconfig = xylo.qconfig()
    linear = aquatic.nn.Linear(2, 2, bias=False, qconfig=qconfig)
    neuron = aquatic.nn.LIF(tau_mem=4.0, threshold=1e-4, qconfig=qconfig)
    with torch.no_grad():
        linear.weight.fill_(100.0)
    with pytest.raises(ValueError, match="LIF: its threshold quantizer"):
        neuron(linear(torch.rand(1, 3, 2)))
