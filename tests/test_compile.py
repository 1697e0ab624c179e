"""torch.compile(fullgraph=True) on every spiking layer, hardware preset and quantized
attention, norm, transformer and recurrent layer.

Each model trains two steps compiled and two steps eagerly from the same start; outputs,
gradients and every parameter and buffer afterwards must be bitwise equal. The
``aot_eager`` backend traces forward and backward as one graph each (a graph break
raises with ``fullgraph=True``) and runs the traced graphs with eager kernels; the
fused LIF sequence runs as one custom operator there, the same loops as eagerly.
"""

import copy

import pytest
import torch
from torch import nn

from aquatic import nn as ann
from aquatic.functional import LIFState
from aquatic.hw import dynapcnn, loihi, xylo
from aquatic.qconfig import int8

T, FEATURES = 4, 3


class Steps(nn.Module):
    """A ``LIFCell`` run over a sequence in a Python loop (unrolled by the compiler)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.linear = ann.Linear(FEATURES, 4)
        self.cell = ann.LIFCell(**kwargs)

    def forward(self, x):
        x = self.linear(x)
        state, outputs = LIFState(torch.zeros_like(x[:, 0]), torch.zeros_like(x[:, 0])), []
        for t in range(x.shape[1]):
            out, state = self.cell(x[:, t], state)
            outputs.append(out)
        return torch.stack(outputs, 1) + state.v_mem.unsqueeze(1)


class SelfAttention(nn.Module):
    """``attention(h, h, h)`` after a Linear, on ``(N, T, F)`` (batch second inside)."""

    def __init__(self, attention):
        super().__init__()
        self.linear, self.attention = ann.Linear(FEATURES, 4, qconfig=int8), attention

    def forward(self, x):
        h = self.linear(x).transpose(0, 1)
        return self.attention(h, h, h, need_weights=False)[0].transpose(0, 1)


class First(nn.Module):
    """The output sequence of a recurrent layer."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)[0]


def chain(*layers):
    return nn.Sequential(ann.Linear(FEATURES, 4), *layers)


def with_preset(preset, make):
    q = preset()
    return nn.Sequential(ann.Linear(FEATURES, 4, bias=False, qconfig=q), make(q))


MODELS = {
    "LIF": lambda: chain(
        ann.LIF(tau_mem=5.0, tau_syn=3.0, train_decay=True, train_threshold=True),
        ann.Linear(4, 2),
        ann.LIF(
            alpha_mem=0.9,
            threshold=0.1,
            reset="zero",
            max_spikes=2,
            min_v_mem=-0.5,
            norm_input=True,
        ),
    ),
    "LIF-recorded": lambda: chain(
        ann.LIF(
            alpha_mem=0.8,
            alpha_syn=0.6,
            bias=True,
            detach_reset=True,
            record_states=True,
            persistent_state=True,
        )
    ),
    "LIF-checkpoint": lambda: chain(
        ann.LIF(tau_mem=5.0, tau_syn=3.0, train_decay=True, train_threshold=True, checkpoint=3)
    ),
    "LIFCell": lambda: Steps(tau_mem=4.0, tau_syn=2.0, train_decay=True, max_spikes=3),
    "LIFRecurrent": lambda: chain(ann.LIFRecurrent(4, tau_mem=5.0, tau_syn=2.0)),
    "IAF": lambda: chain(ann.IAF(threshold=0.7, train_threshold=True)),
    "ExpLeak": lambda: chain(ann.ExpLeak(tau_mem=4.0, train_decay=True, bias=True)),
    "xylo": lambda: with_preset(
        xylo.qconfig,
        lambda q: ann.LIF(tau_mem=8.0, tau_syn=4.0, max_spikes=31, qconfig=q),
    ),
    "loihi": lambda: with_preset(
        loihi.qconfig,
        lambda q: ann.LIF(alpha_mem=0.9, alpha_syn=0.8, reset="zero", qconfig=q),
    ),
    "loihi-recorded": lambda: with_preset(
        loihi.qconfig,
        lambda q: ann.LIF(
            tau_mem=8.0, tau_syn=4.0, record_states=True, qconfig=q, **loihi.neuron_options()
        ),
    ),
    "dynapcnn": lambda: with_preset(dynapcnn.qconfig, lambda q: ann.IAF(threshold=1.0, qconfig=q)),
    # The mirror's layers (int8): attention quantizes transposed views of q, k and v.
    "MultiheadAttention": lambda: SelfAttention(ann.MultiheadAttention(4, 2, qconfig=int8)),
    "LayerNorm": lambda: chain(ann.LayerNorm(4, qconfig=int8)),
    "TransformerEncoderLayer": lambda: chain(
        ann.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True, qconfig=int8)
    ),
    "GRU": lambda: First(ann.GRU(FEATURES, 4, batch_first=True, qconfig=int8)),
    "LSTM": lambda: First(
        ann.LSTM(FEATURES, 4, num_layers=2, bidirectional=True, batch_first=True, qconfig=int8)
    ),
}
#: Dynamo refuses every subclass of torch's RNNBase unless allow_rnn is set.
RECURRENT = {"GRU", "LSTM"}


def train(model, step, steps=2):
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    results = []
    for _ in range(steps):
        x = (torch.rand(2, T, FEATURES, generator=generator) * 4).requires_grad_()
        out = step(x)
        target = torch.randn(out.shape, generator=generator)
        optimizer.zero_grad()
        ((out - target) ** 2).mean().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        optimizer.step()
        results.append((out.detach(), x.grad, grads))
    return results


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_training_is_bitwise_eager(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    eager = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(allow_rnn=name in RECURRENT):
        got = train(model, compiled)
    expected = train(eager, eager)
    for (out, x_grad, grads), (out_e, x_grad_e, grads_e) in zip(got, expected):
        assert torch.equal(out, out_e)
        assert torch.equal(x_grad, x_grad_e)
        assert x_grad.abs().sum() > 0  # not trivially equal: gradients flow
        assert len(grads) == len(grads_e) > 0
        for a, b in zip(grads, grads_e):
            assert torch.equal(a, b)
    assert sum(out.abs().sum() for out, _, _ in got) > 0  # and the layers produce output
    # Every parameter and buffer (observers, stored states) and every recording.
    state, state_e = dict(model.named_buffers()), dict(eager.named_buffers())
    state.update(model.named_parameters())
    state_e.update(eager.named_parameters())
    for module, module_e in zip(model.modules(), eager.modules()):
        for key, value in getattr(module, "recordings", {}).items():
            state[f"{id(module_e)}.{key}"] = value
            state_e[f"{id(module_e)}.{key}"] = module_e.recordings[key]
    assert list(state) == list(state_e)
    for key in state:
        assert torch.equal(state[key], state_e[key]), key


def test_compiled_qat_does_not_recompile_while_it_trains():
    """Training a compiled int8 QAT model recompiles once (observers go from empty to
    initialised after the first step), not on every step: no Python state that the
    compiled graph guards on may change while it trains."""
    import aquatic
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = aquatic.quantize(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)),
        aquatic.qconfig.int8,
    )
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def train(steps):
        for _ in range(steps):
            loss = compiled(torch.randn(4, 8)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    train(3)
    # Observers of classes not seen before, built meanwhile, must not recompile it.
    from aquatic.observers import PercentileObserver
    from aquatic.quantizers import UniformQuantizer

    percentile = UniformQuantizer.with_args(bits=8, observer=PercentileObserver)
    other = aquatic.quantize(nn.Linear(8, 4), aquatic.QConfig(weight=percentile))
    other(torch.randn(4, 8))
    train(3)
    assert counter.frame_count <= 2
    torch._dynamo.reset()


def test_compiled_per_channel_qat_is_one_graph_and_bitwise_eager():
    """Per-channel weight observers trace into one graph (``fullgraph=True``): the
    observer reads its class's rules from the instance, not from the class's
    ``__dict__``, which torch.compile refuses to read after a buffer changed shape."""
    import aquatic
    from aquatic.quantizers import UniformQuantizer

    qconfig = aquatic.qconfig.int8._replace(weight=UniformQuantizer.with_args(ch_axis=0))
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model = aquatic.quantize(float_model, qconfig)
    eager = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    generator = torch.Generator().manual_seed(0)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, eager)]
    for _ in range(3):
        x = torch.randn(4, 8, generator=generator)
        outs = []
        for run, optimizer in zip((compiled, eager), optimizers):
            out = run(x)
            optimizer.zero_grad()
            out.pow(2).mean().backward()
            optimizer.step()
            outs.append(out.detach())
        assert torch.equal(outs[0], outs[1])
    for (key, a), (_, b) in zip(model.state_dict().items(), eager.state_dict().items()):
        assert torch.equal(a, b), key
    assert model[0].quantizers["weight"].observer.min_val.shape == (16,)
    torch._dynamo.reset()
