"""Recurrent models written the ordinary way (a GRU keyword spotter, an Embedding + LSTM
classifier, each with its own forward that indexes the layer's tuple): quantize -> train
a few steps -> convert(model.eval(), example_input=x) -> the integer graph agrees with
the quantization-aware model on held-out data; and the integer graph saves and loads."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer

INT8 = aquatic.qconfig.int8
WITH_STATE = INT8._replace(state=UniformQuantizer.with_args(bits=12))


class KeywordSpotter(nn.Module):
    """GRU over feature frames, a classifier on the last output step."""

    def __init__(self, last_state=False):
        super().__init__()
        self.last_state = last_state
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        out, h = self.gru(x)
        return self.fc(h[-1]) if self.last_state else self.fc(out[:, -1])


class TextClassifier(nn.Module):
    """Embedding, LSTM, a classifier on the last hidden state; also returns the cell."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(24, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, tokens):
        _, (h, c) = self.lstm(self.emb(tokens))
        return self.fc(h[-1]), c


def keywords(generator, count, classes=3, steps=10, features=8):
    """Each class is a fixed sequence of feature frames, plus noise."""
    templates = torch.randn(classes, steps, features, generator=torch.Generator().manual_seed(7))
    labels = torch.randint(0, classes, (count,), generator=generator)
    noise = 0.8 * torch.randn(count, steps, features, generator=generator)
    return templates[labels] + noise, labels


def sentences(generator, count, classes=3, steps=8, vocab=24):
    """Token sequences drawn from a word distribution of each class."""
    words = torch.rand(classes, vocab, generator=torch.Generator().manual_seed(5)) ** 4
    labels = torch.randint(0, classes, (count,), generator=generator)
    tokens = torch.multinomial(words[labels], steps, replacement=True, generator=generator)
    return tokens, labels


def fit(model, qconfig, data, steps=25, **options):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    qmodel = aquatic.quantize(model, qconfig, **options)
    x, y = data(generator, 96)
    optimizer = torch.optim.Adam(qmodel.parameters(), lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        out = qmodel(x)
        F.cross_entropy(out[0] if isinstance(out, tuple) else out, y).backward()
        optimizer.step()
    held_out = data(generator, 400)
    return qmodel.eval(), x, held_out


def agree(integer, qmodel, x):
    """The integer graph's outputs next to the quantization-aware model's (token indices
    are the codes themselves)."""
    codes = integer(x if not x.is_floating_point() else integer.quantize_input(x))
    out = integer.dequantize_output(codes)
    with torch.no_grad():
        expected = qmodel(x)
    return out, expected


def within_two_steps(out, expected, spec):
    step = float(spec.scale)
    close = ((out - expected).abs() <= 2 * step + 1e-6).float().mean()
    agreement = (out.argmax(1) == expected.argmax(1)).float().mean()
    return float(close), float(agreement)


@pytest.fixture(scope="module")
def spotter():
    return fit(KeywordSpotter(), INT8, keywords, quantize_output=True)


def check_spotter(qmodel, x, held_out, labels):
    assert isinstance(qmodel.gru, aquatic.nn.GRU)
    integer = aquatic.convert(qmodel, example_input=x)
    assert isinstance(integer, aquatic.integer.IntegerGraph)
    assert isinstance(integer.ops["gru"], aquatic.integer.IntegerGRU)
    out, expected = agree(integer, qmodel, held_out)
    close, agreement = within_two_steps(out, expected, integer.output_specs)
    assert close >= 0.99 and agreement >= 0.99
    accuracy = (expected.argmax(1) == labels).float().mean()
    assert accuracy > 0.6  # it learned something: agreement is not trivial


def test_gru_keyword_spotter_on_the_last_output_step(spotter):
    qmodel, x, (held_out, labels) = spotter
    check_spotter(qmodel, x, held_out, labels)


def test_gru_keyword_spotter_on_the_last_state():
    qmodel, x, (held_out, labels) = fit(
        KeywordSpotter(last_state=True), INT8, keywords, steps=15, quantize_output=True
    )
    check_spotter(qmodel, x, held_out, labels)


def test_gru_keyword_spotter_hidden_codes_are_the_quantization_aware_ones(spotter):
    """The integer graph's hidden codes against the quantizer's codes of the QAT hidden
    state (a reference computed here, outside the conversion)."""
    qmodel, x, (held_out, _) = spotter
    integer = aquatic.convert(qmodel, example_input=x)
    gru = integer.ops["gru"]
    with torch.no_grad():
        _, h = qmodel.gru(qmodel.input_quantizer(held_out))
    expected = qmodel.gru.quantizers["hidden_l0"].to_int(h[0]).to(torch.int64)
    codes = qmodel.input_quantizer.quantizers["activation"].to_int(held_out).to(torch.int64)
    _, h_n = gru(codes)
    assert (h_n[0] == expected).float().mean() >= 0.99


def test_embedding_lstm_classifier_converts_and_agrees():
    qmodel, x, (held_out, labels) = fit(
        TextClassifier(), WITH_STATE, sentences, quantize_output=True
    )
    # Token indices are integers: no input quantizer in front of the embedding.
    assert not any(isinstance(m, aquatic.nn.ActivationQuantizer) for m in qmodel.modules())
    integer = aquatic.convert(qmodel, example_input=x)
    spec = integer.input_specs[0]
    assert (float(spec.scale), int(spec.zero_point), spec.low, spec.high) == (1.0, 0, 0, 23)
    with pytest.raises(TypeError, match="row indices of an embedding"):
        integer.quantize_input(held_out)  # indices go to the integer model as they are
    (logits, cell), (expected, expected_cell) = agree(integer, qmodel, held_out)
    close, agreement = within_two_steps(logits, expected, integer.output_specs[0])
    assert close >= 0.99 and agreement >= 0.99
    assert (expected.argmax(1) == labels).float().mean() > 0.6
    # The cell state is read on its own grid (QConfig.state), not the hidden one.
    cell_step = float(integer.output_specs[1].scale)
    cell_quantizer = qmodel.lstm.quantizers["cell_l0"]
    assert cell_step == pytest.approx(float(cell_quantizer.grid().scale))
    assert ((cell - expected_cell).abs() <= cell_step + 1e-6).float().mean() >= 0.99


class Encoder(nn.Module):
    """Returns the GRU's tuple as it is."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 16)

    def forward(self, x):
        return self.gru(x)


def test_a_returned_state_tuple_keeps_its_structure_and_grids():
    qmodel, _, _ = fit(Encoder(), INT8, keywords, steps=0)
    x = torch.randn(6, 4, 8)  # (L, N, features)
    qmodel(x)  # calibrates the ranges
    qmodel.eval()
    integer = aquatic.convert(qmodel, example_input=x)
    out, h_n = integer.dequantize_output(integer(integer.quantize_input(x)))
    with torch.no_grad():
        expected_out, expected_h = qmodel(x)
    step = float(integer.output_specs[0].scale)
    assert out.shape == (6, 4, 16) and h_n.shape == (1, 4, 16)
    assert ((out - expected_out).abs() <= step + 1e-6).float().mean() >= 0.99
    assert torch.equal(h_n[0], out[-1])


def test_integer_graph_with_recurrent_layers_saves_and_loads():
    qmodel, x, (held_out, _) = fit(TextClassifier(), WITH_STATE, sentences, steps=3)
    integer = aquatic.convert(qmodel, example_input=x)
    buffer = io.BytesIO()
    integer.save(buffer)
    buffer.seek(0)
    loaded = aquatic.integer.IntegerGraph.load(buffer)
    for a, b in zip(integer(held_out), loaded(held_out)):
        assert torch.equal(a, b)
    assert isinstance(loaded.ops["lstm"], aquatic.integer.IntegerLSTM)


class Stacked(nn.Module):
    """A 3-layer GRU or LSTM: logits from the last layer's state, and the first layer's
    final hidden state and the output sequence returned as well."""

    def __init__(self, layer):
        super().__init__()
        self.lstm = layer is nn.LSTM
        self.rnn = layer(8, 12, num_layers=3, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        out, h = self.rnn(x)
        if self.lstm:
            return self.fc(h[0][-1]), h[1][0], out  # (logits, first layer's cell, output)
        return self.fc(h[-1]), h[0], out


@pytest.mark.parametrize("layer", [nn.GRU, nn.LSTM])
def test_stacked_recurrent_layers_convert_layer_by_layer(layer):
    qmodel = aquatic.quantize(Stacked(layer), WITH_STATE)
    x, _ = keywords(torch.Generator().manual_seed(3), 64, steps=6)
    qmodel(x)  # calibrates every range
    qmodel.eval()
    integer = aquatic.convert(qmodel, example_input=x)
    stack = integer.ops["rnn"]
    assert isinstance(stack, aquatic.integer.IntegerRecurrentStack)
    assert [layer.name for layer in stack.layers] == ["rnn_l0", "rnn_l1", "rnn_l2"]
    outputs = integer.dequantize_output(integer(integer.quantize_input(x)))
    with torch.no_grad():
        expected = qmodel(x)
    # each returned state on its own layer's grid: the QAT model's quantizer of that layer
    state = "cell_l0" if layer is nn.LSTM else "hidden_l0"
    first_grid = qmodel.rnn.quantizers[state].grid()
    assert float(integer.output_specs[1].scale) == pytest.approx(float(first_grid.scale))
    for out, reference, spec in zip(outputs[1:], expected[1:], integer.output_specs[1:]):
        assert ((out - reference).abs() <= float(spec.scale) + 1e-6).float().mean() >= 0.99
    assert (outputs[0].argmax(1) == expected[0].argmax(1)).float().mean() >= 0.99
    loaded = aquatic.integer.IntegerGraph.load(saved(integer))
    codes = integer.quantize_input(x)
    for a, b in zip(integer(codes), loaded(codes)):
        assert torch.equal(a, b)


def saved(integer):
    buffer = io.BytesIO()
    integer.save(buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("layer", [nn.GRU, nn.LSTM])
def test_stacked_states_of_several_grids_are_not_returned_whole(layer):
    class AllStates(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = layer(8, 12, num_layers=2)

        def forward(self, x):
            return self.gru(x)[1]  # h_n, or (h_n, c_n)

    qmodel = aquatic.quantize(AllStates(), WITH_STATE)
    x = torch.randn(5, 4, 8)
    qmodel(x)
    with pytest.raises(TypeError, match=r"each on its own\s+grid; return one layer.s \(h\[-1\]\)"):
        aquatic.convert(qmodel.eval(), example_input=x)


def test_a_stacked_layer_in_a_sequential_converts_and_its_states_are_refused_whole():
    torch.manual_seed(4)
    gru = aquatic.nn.GRU(8, 12, num_layers=2, qconfig=INT8)
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=INT8), gru, aquatic.nn.SelectOutput(0)
    )
    x = torch.randn(5, 4, 8)
    model(x)
    integer = aquatic.convert(model.eval())
    out = integer.dequantize_output(integer(integer.quantize_input(x)))
    with torch.no_grad():
        expected = model(x)
    step = float(gru.quantizers["hidden_l1"].grid().scale)
    assert float(integer.output_spec.scale) == pytest.approx(step)
    assert ((out - expected).abs() <= step + 1e-6).float().mean() >= 0.99
    model[2] = aquatic.nn.SelectOutput(1)  # h_n: each layer's codes on its own grid
    with pytest.raises(ValueError, match=r"own grid; in an nn.Sequential select the output"):
        aquatic.convert(model.eval())


class BidirectionalSpotter(nn.Module):
    """A bidirectional GRU over feature frames; a classifier on the last output step,
    which holds the forward direction's last state and the reverse one's first."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 16, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


class BidirectionalText(nn.Module):
    """Embedding, bidirectional LSTM, a classifier on both directions' final states."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(24, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, tokens):
        _, (h, _) = self.lstm(self.emb(tokens))
        return self.fc(torch.cat([h[-2], h[-1]], 1))


def test_bidirectional_gru_keyword_spotter_converts_and_agrees():
    torch.manual_seed(1)  # the float model's initial weights
    qmodel, x, (held_out, labels) = fit(
        BidirectionalSpotter(), INT8, keywords, quantize_output=True
    )
    gru = qmodel.gru
    assert gru.quantizers["hidden_l0"] is gru.quantizers["hidden_l0_reverse"]  # one grid
    integer = aquatic.convert(qmodel, example_input=x)
    assert isinstance(integer.ops["gru"], aquatic.integer.IntegerRecurrentStack)
    out, expected = agree(integer, qmodel, held_out)
    close, agreement = within_two_steps(out, expected, integer.output_specs)
    assert close >= 0.99 and agreement >= 0.99
    assert (expected.argmax(1) == labels).float().mean() > 0.6
    # Both directions' final hidden codes against the QAT model's, in torch's h_n layout.
    with torch.no_grad():
        qat_out, h = gru(qmodel.input_quantizer(held_out))
    codes = qmodel.input_quantizer.quantizers["activation"].to_int(held_out).to(torch.int64)
    out_codes, h_n = integer.ops["gru"](codes)
    reference = gru.quantizers["hidden_l0"].to_int(h).to(torch.int64)
    assert h_n.shape == (2, 400, 16) and out_codes.shape == (400, 10, 32)
    assert (h_n == reference).float().mean() >= 0.99
    assert torch.equal(out_codes[:, -1, :16], h_n[0]) and torch.equal(out_codes[:, 0, 16:], h_n[1])
    assert (out_codes == gru.quantizers["hidden_l0"].to_int(qat_out)).float().mean() >= 0.99


def test_bidirectional_embedding_lstm_classifier_converts_agrees_and_saves():
    torch.manual_seed(1)  # the float model's initial weights
    qmodel, x, (held_out, labels) = fit(
        BidirectionalText(), WITH_STATE, sentences, quantize_output=True
    )
    integer = aquatic.convert(qmodel, example_input=x)
    logits, expected = agree(integer, qmodel, held_out)
    close, agreement = within_two_steps(logits, expected, integer.output_specs)
    assert close >= 0.99 and agreement >= 0.99
    assert (expected.argmax(1) == labels).float().mean() > 0.6
    loaded = aquatic.integer.IntegerGraph.load(saved(integer))
    assert torch.equal(loaded(held_out), integer(held_out))
    assert isinstance(loaded.ops["lstm"], aquatic.integer.IntegerRecurrentStack)


class Projected(nn.Module):
    """A stacked bidirectional LSTM with a projection, started from given states."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 12, num_layers=2, bidirectional=True, proj_size=6)
        self.fc = nn.Linear(12, 3)

    def forward(self, x, h0, c0):
        out, (h, c) = self.lstm(x, (h0, c0))
        return self.fc(out[-1]), h[-1], c[0]


def test_stacked_bidirectional_projected_lstm_from_given_states():
    torch.manual_seed(5)
    qmodel = aquatic.quantize(Projected(), WITH_STATE)
    assert "weight_hr_l1_reverse" in qmodel.lstm.quantizers
    inputs = (torch.randn(6, 32, 8), 0.5 * torch.randn(4, 32, 6), torch.randn(4, 32, 12))
    qmodel(*inputs)  # calibrates every range
    qmodel.eval()
    integer = aquatic.convert(qmodel, example_input=inputs)
    stack = integer.ops["lstm"]
    assert [layer.weight_hr.shape for layer in stack.layers] == [(6, 12)] * 4
    codes = integer.quantize_input(*inputs)
    outputs = integer.dequantize_output(integer(*codes))
    with torch.no_grad():
        expected = qmodel(*inputs)
    for out, reference, spec in zip(outputs, expected, integer.output_specs):
        assert ((out - reference).abs() <= float(spec.scale) + 1e-6).float().mean() >= 0.99
    assert (outputs[0].argmax(1) == expected[0].argmax(1)).float().mean() >= 0.99
    # c[0] is read on the first layer's cell grid, h[-1] on the last layer's hidden grid.
    assert float(integer.output_specs[2].scale) == float(
        qmodel.lstm.quantizers["cell_l0"].grid().scale
    )
    hidden = qmodel.lstm.quantizers["hidden_l1_reverse"].grid().scale
    assert float(integer.output_specs[1].scale) == pytest.approx(float(hidden))
    loaded = aquatic.integer.IntegerGraph.load(saved(integer))
    for a, b in zip(loaded(*codes), integer(*codes)):
        assert torch.equal(a, b)


class GivenState(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x, h0):
        _, h = self.gru(x, h0)
        return self.fc(h[-1])


def test_a_gru_started_from_a_given_state_agrees():
    torch.manual_seed(6)
    qmodel = aquatic.quantize(GivenState(), INT8)
    inputs = (torch.randn(7, 64, 8), torch.randn(1, 64, 16))
    qmodel(*inputs)
    qmodel.eval()
    integer = aquatic.convert(qmodel, example_input=inputs)
    out = integer.dequantize_output(integer(*integer.quantize_input(*inputs)))
    with torch.no_grad():
        expected = qmodel(*inputs)
        started = qmodel(inputs[0], torch.zeros_like(inputs[1]))
    step = float(integer.output_specs.scale)
    assert ((out - expected).abs() <= 2 * step + 1e-6).float().mean() >= 0.99
    assert (out.argmax(1) == expected.argmax(1)).float().mean() >= 0.99
    assert not torch.allclose(expected, started)  # the given state matters
