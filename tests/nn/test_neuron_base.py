import inspect
import math

import pytest
import torch

from aquatic import QConfig
from aquatic.functional import NeuronSpec, lif_recurrent, neuron_sequence, neuron_step
from aquatic.nn import IAF, LIF, ExpLeak, FastSigmoid, LIFCell, LIFRecurrent
from aquatic.nn.neuron_options import NEURON_ARGS, document_neuron_args
from aquatic.quantizers import BitShiftDecay, UniformQuantizer

# Fixed scales: quantizers without observers, so calling spec() twice gives the same.
FIXED = QConfig(
    tau=UniformQuantizer.with_args(bits=8, scale=0.25),
    threshold=UniformQuantizer.with_args(bits=8, scale=2**-4),
    bias=UniformQuantizer.with_args(bits=8, scale=2**-6),
    weight=UniformQuantizer.with_args(bits=8, scale=2**-5),
)
RULE = QConfig(
    alpha=BitShiftDecay.with_args(bits=4),
    state=UniformQuantizer.with_args(bits=16, scale=2**-8),
    weight=UniformQuantizer.with_args(bits=8, scale=2**-5),
)

LAYERS = {
    "LIF": lambda q: LIF(
        tau_mem=6.0, tau_syn=3.0, threshold=0.7, bias=0.1, max_spikes=2, qconfig=q
    ),
    "LIF-zero": lambda q: LIF(
        alpha_mem=0.8,
        threshold=0.5,
        reset="zero",
        min_v_mem=-0.5,
        norm_input=True,
        detach_reset=True,
        qconfig=q,
    ),
    "IAF": lambda q: IAF(threshold=0.9, tau_syn=2.0, bias=0.05, qconfig=q),
    "ExpLeak": lambda q: ExpLeak(tau_mem=4.0, bias=0.1, norm_input=True, qconfig=q),
    "LIFCell": lambda q: LIFCell(alpha_mem=0.8, alpha_syn=0.5, threshold=0.6, qconfig=q),
    "LIFRecurrent": lambda q: LIFRecurrent(3, tau_mem=5.0, tau_syn=2.0, qconfig=q),
}


def _run_spec(layer, x):
    """What functional code computes with ``layer.spec()``, as the layer would call it."""
    spec = layer.spec()
    if isinstance(layer, LIFCell):
        state, outputs = None, []
        for t in range(x.shape[1]):
            out, state = neuron_step(x[:, t], spec, state)
            outputs.append(out)
        return torch.stack(outputs, 1)
    if isinstance(layer, LIFRecurrent):
        return lif_recurrent(x, spec, layer.quantized("rec_weight")).output
    output = neuron_sequence(x, spec, method=layer.method).output
    return layer.quantize_output(output)


def _run_layer(layer, x):
    if isinstance(layer, LIFCell):
        state, outputs = None, []
        for t in range(x.shape[1]):
            out, state = layer(x[:, t], state)
            outputs.append(out)
        return torch.stack(outputs, 1)
    return layer(x)


@pytest.mark.parametrize("qconfig", [None, FIXED, RULE], ids=["float", "fixed", "rule"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_spec_computes_what_forward_computes(kind, qconfig):
    layer = LAYERS[kind](qconfig)
    x = torch.rand(2, 10, 3, generator=torch.Generator().manual_seed(0)) * 1.5 - 0.2
    expected = _run_layer(layer, x)
    assert torch.equal(_run_spec(layer, x), expected)
    assert expected.abs().sum() > 0


def test_spec_values():
    lif = LIF(
        tau_mem=10.0,
        tau_syn=5.0,
        threshold=0.8,
        bias=0.25,
        reset="zero",
        max_spikes=3,
        min_v_mem=-1.0,
        norm_input=True,
        detach_reset=True,
        surrogate=FastSigmoid(),
    )
    spec = lif.spec()
    assert isinstance(spec, NeuronSpec)
    assert torch.equal(spec.alpha_mem, torch.exp(torch.tensor(-0.1)).clamp(0, 1))
    assert torch.equal(spec.alpha_syn, torch.exp(torch.tensor(-0.2)).clamp(0, 1))
    assert spec.threshold.item() == pytest.approx(0.8) and spec.bias.item() == 0.25
    assert (spec.reset, spec.max_spikes, spec.min_v_mem) == ("zero", 3, -1.0)
    assert spec.norm_input and spec.detach_reset and spec.spiking and spec.synaptic
    assert isinstance(spec.surrogate, FastSigmoid)
    assert not spec.state_ops.any()


def test_spec_of_each_kind_of_neuron():
    iaf = IAF(threshold=1.5, max_spikes=2).spec()
    assert iaf.alpha_mem == 1.0 and iaf.alpha_syn is None and iaf.max_spikes == 2
    leak = ExpLeak(alpha_mem=0.5, min_v_mem=-2.0).spec()
    assert not leak.spiking and leak.threshold is None and leak.min_v_mem == -2.0
    assert LIFRecurrent(2, tau_mem=3.0).spec().spiking
    quantized = LIF(tau_mem=10.0, qconfig=RULE).spec()
    # on the bit-shift grid alpha = 1 - 2**-dash
    dash = -math.log2(1 - quantized.alpha_mem.item())
    assert dash == round(dash)
    ops = quantized.state_ops
    assert ops.quantize_v_mem is not None and ops.decay_v_mem is not None
    assert ops.quantize_i_syn is None and ops.decay_i_syn is None


def test_spec_reads_quantized_values():
    layer = LIF(alpha_mem=0.9, threshold=0.7, bias=0.1, qconfig=FIXED)
    spec = layer.spec()
    assert spec.threshold.item() == 0.6875  # 0.7 on a 1/16 grid
    assert spec.bias.item() == 0.09375  # 0.1 on a 1/64 grid
    assert torch.equal(spec.alpha_mem, layer.decay("mem"))


def test_neuron_params_is_deprecated():
    layer = IAF(threshold=1.0, tau_syn=2.0)
    with pytest.warns(DeprecationWarning, match="spec()"):
        params = layer.neuron_params()
    spec = layer.spec()
    assert params["alpha_mem"] == 1.0 and torch.equal(params["alpha_syn"], spec.alpha_syn)
    assert torch.equal(params["threshold"], spec.threshold) and params["bias"] is None


def test_decay_kind_is_checked():
    with pytest.raises(ValueError, match="'mem' or 'syn'"):
        LIF(tau_mem=2.0).decay("membrane")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_decay_from_tau_is_exp_of_minus_one_over_tau_bit_for_bit(dtype):
    """The decay and its gradient have the bits of ``exp(-1.0 / tau)`` over the range of
    tau (the clamp to TAU_MIN, values whose decay rounds to 1, nan), with no clamp to
    [0, 1] that could change either."""
    from aquatic.functional.neuron_types import TAU_MIN

    generator = torch.Generator().manual_seed(0)
    values = torch.cat(
        [
            torch.rand(200, generator=generator, dtype=torch.float64) * 50,
            torch.tensor([0.0, TAU_MIN / 2, TAU_MIN, 1e-3, 1.0, 3e7, 1e30, float("inf")]),
            torch.tensor([-2.0, float("nan")]),
        ]
    ).to(dtype)
    layer = LIF(tau_mem=torch.ones(values.shape), train_decay=True).to(dtype)
    with torch.no_grad():  # past the constructor's checks: values training may reach
        layer.tau_mem.copy_(values)
    alpha = layer.decay("mem")
    weights = torch.randn(alpha.shape, generator=generator, dtype=torch.float64).to(dtype)
    (alpha * weights).sum().backward()
    tau = values.clone().requires_grad_()
    expected = torch.exp(-1.0 / tau.clamp(min=TAU_MIN))
    (expected * weights).sum().backward()
    assert torch.equal(alpha.isnan(), expected.isnan()) and alpha.isnan().sum() == 1
    assert torch.equal(alpha.nan_to_num(), expected.detach().nan_to_num())
    assert torch.equal(layer.tau_mem.grad.nan_to_num(), tau.grad.nan_to_num())
    assert alpha.dtype == dtype and (alpha[:-1] >= 0).all() and (alpha[:-1] <= 1).all()
    assert (alpha == 1).sum() >= 2 and (layer.tau_mem.grad[:200] != 0).all()


def test_gradients_reach_the_parameters_through_the_spec():
    layer = LIF(tau_mem=5.0, threshold=0.5, bias=0.1, train_decay=True, train_threshold=True)
    layer(torch.rand(2, 8, 3) * 2).sum().backward()
    for name in ("tau_mem", "threshold", "bias"):
        assert getattr(layer, name).grad is not None, name


# -- the shared constructor arguments -------------------------------------------------------

SIGNATURES = {
    LIF: "tau_mem tau_syn threshold reset * alpha_mem alpha_syn surrogate max_spikes min_v_mem "
    "norm_input bias train_decay train_threshold detach_reset persistent_state record_states "
    "method checkpoint strict_threshold input_after_decay input_delay qconfig",
    LIFCell: "tau_mem tau_syn threshold reset * alpha_mem alpha_syn surrogate max_spikes "
    "min_v_mem norm_input bias train_decay train_threshold detach_reset qconfig",
    LIFRecurrent: "num_neurons tau_mem tau_syn threshold reset * alpha_mem alpha_syn surrogate "
    "max_spikes min_v_mem norm_input bias train_decay train_threshold detach_reset "
    "persistent_state record_states qconfig",
    IAF: "threshold reset * tau_syn alpha_syn surrogate max_spikes min_v_mem bias train_decay "
    "train_threshold detach_reset persistent_state record_states method checkpoint qconfig",
    ExpLeak: "tau_mem * alpha_mem norm_input bias min_v_mem train_decay persistent_state method "
    "qconfig",
}


@pytest.mark.parametrize("cls", list(SIGNATURES), ids=lambda cls: cls.__name__)
def test_constructor_signatures_and_docs(cls):
    words = []
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in words:
            words.append("*")
        words.append(parameter.name)
    assert " ".join(words) == SIGNATURES[cls]
    doc = cls.__doc__
    assert "%(neuron_args)s" not in doc
    args = doc[doc.index("    Args:\n") : doc.index("    Shape:")]
    for name in words:
        if name != "*":
            assert f"\n        {name}: " in args, name


def test_shared_descriptions_are_used():
    assert f"max_spikes: {NEURON_ARGS['max_spikes'].split(';')[0]}" in LIF.__doc__
    assert "detach_reset: no gradient through the spikes" in IAF.__doc__


def test_document_neuron_args_checks_its_class():
    class Undocumented:
        """Summary.

        Args:
            %(neuron_args)s
        """

        def __init__(self, tau_mem=None, colour="red"):
            pass

    with pytest.raises(TypeError, match="'colour' has no description"):
        document_neuron_args()(Undocumented)
    documented = document_neuron_args(colour="its colour.")(Undocumented)
    assert "colour: its colour." in documented.__doc__

    class NoMarker:
        """Summary."""

        def __init__(self, tau_mem=None):
            pass

    with pytest.raises(TypeError, match="neuron_args"):
        document_neuron_args()(NoMarker)
