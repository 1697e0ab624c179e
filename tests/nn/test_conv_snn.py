"""A spiking convolutional network on (N, T, C, H, W) as one nn.Sequential: trains,
converts to integers exactly, exports to NIR."""

import pytest
import torch
from torch import nn

import aquatic
from aquatic import nn as ann
from aquatic.quantizers import UniformQuantizer


def qconfig():
    pow2 = UniformQuantizer.with_args(bits=8, power_of_two=True)
    state = UniformQuantizer.with_args(bits=16, scale=2**-6)
    return aquatic.QConfig(weight=pow2, bias=pow2, state=state)


def conv_snn(q=None, pool=None):
    q = qconfig() if q is None else q
    return nn.Sequential(
        ann.Conv2d(2, 4, 3, padding=1, qconfig=q),
        ann.IAF(threshold=1.0, qconfig=q),
        pool if pool is not None else ann.SumPool2d(2),
        ann.Conv2d(4, 4, 3, padding=1, qconfig=q),
        ann.IAF(threshold=1.0, qconfig=q),
        nn.Flatten(start_dim=2),
        ann.Linear(4 * 4 * 4, 3, qconfig=q),
        ann.IAF(threshold=1.0, qconfig=q),
    )


def task(seed=0):
    """Three classes of event streams: events mostly left, right, or everywhere."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(12) % 3
    rate = torch.full((12, 1, 2, 8, 8), 0.05)
    rate[y == 0, ..., :4] = 0.5
    rate[y == 1, ..., 4:] = 0.5
    rate[y == 2] = 0.3
    x = (torch.rand(12, 8, 2, 8, 8, generator=g) < rate).float()
    return x, y


def train(model, x, y, steps=25):
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x).sum(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = conv_snn()
    x, y = task()
    losses = train(model, x, y)
    return model.eval(), x, losses


def test_one_sequential_trains(trained):
    model, x, losses = trained
    assert model(x).shape == (12, 8, 3)
    assert min(losses[-5:]) < 0.5 * losses[0]


def test_converts_to_integers_exactly(trained):
    model, x, _ = trained
    with torch.no_grad():
        expected = model(x)
        hidden = model[:2](x)
    integer_model = aquatic.convert(model)
    assert integer_model.exact, integer_model.notes
    assert [m.kind for m in integer_model.layers][:3] == ["conv", "neuron", "sumpool"]
    out = integer_model(integer_model.quantize_input(x))
    assert torch.equal(integer_model.dequantize_output(out), expected)
    assert hidden.sum() > 0 and expected.sum() > 0  # spikes on both sides


def test_average_pooling_and_pooling_output_quantizer_convert():
    torch.manual_seed(1)
    act = aquatic.QConfig(activation=UniformQuantizer.with_args(bits=8, scale=2**-2))
    model = conv_snn(pool=ann.AvgPool2d(2, qconfig=act))
    x, y = task(1)
    train(model, x, y, steps=3)
    model.eval()
    integer_model = aquatic.convert(model)
    assert integer_model.exact, integer_model.notes
    out = integer_model(integer_model.quantize_input(x))
    assert torch.equal(integer_model.dequantize_output(out), model(x).detach())
    maxed = conv_snn(pool=ann.MaxPool2d(2))
    train(maxed, x, y, steps=2)
    integer_model = aquatic.convert(maxed.eval())
    assert "maxpool" in [m.kind for m in integer_model.layers]
    out = integer_model(integer_model.quantize_input(x))
    assert torch.equal(integer_model.dequantize_output(out), maxed(x).detach())
    partial = conv_snn(pool=ann.SumPool2d(2, ceil_mode=True))
    partial(x)
    with pytest.raises(ValueError, match="'2' \\(SumPool2d\\) sums partial windows"):
        aquatic.convert(partial.eval())


def test_nir_round_trip(trained):
    nir = pytest.importorskip("nir")
    from aquatic.interop import nir as anir

    model, x, _ = trained
    plain = conv_snn(aquatic.QConfig())  # NIR has no state quantizers
    plain.load_state_dict(model.state_dict(), strict=False)
    for layer, source in zip(plain, model):
        if hasattr(source, "quantize_params"):
            with torch.no_grad():
                for name, value in source.quantize_params().items():
                    getattr(layer, name).copy_(value)
    with torch.no_grad():
        expected = plain(x)
    graph = anir.export(plain, input_shape=(2, 8, 8), time_axis=True)
    assert type(graph.nodes["2"]).__name__ == "SumPool2d"
    assert type(graph.nodes["5"]).__name__ == "Flatten" and graph.nodes["5"].start_dim == 0
    assert list(graph.nodes["output"].output_type["output"]) == [3]
    loaded = anir.load(graph)
    assert torch.equal(loaded(x), expected) and expected.sum() > 0
    reread = anir.load(nir.NIRGraph.from_dict(graph.to_dict()))
    assert torch.equal(reread(x), expected)
    with pytest.raises(ValueError, match="merges the batch and time axes"):
        anir.export(nn.Sequential(nn.Flatten(1)), input_shape=(2, 3), time_axis=True)


def test_nir_pooling_output_quantizer_round_trip():
    pytest.importorskip("nir")
    from aquatic.interop import nir as anir

    act = aquatic.QConfig(activation=UniformQuantizer.with_args(bits=8, scale=2**-2))
    model = nn.Sequential(ann.AvgPool2d(2, qconfig=act), ann.IAF(threshold=0.5))
    x = torch.rand(2, 5, 1, 4, 4)
    with pytest.warns(UserWarning, match="'0.activation'"):
        graph = anir.export(model, input_shape=(1, 4, 4), time_axis=True)
    assert type(graph.nodes["0.activation"]).__name__ == "Scale"
    assert torch.equal(anir.load(graph)(x), model(x))
