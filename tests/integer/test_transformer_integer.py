"""Integer transformer encoder layers against the quantization-aware ones, and a small
transformer classifier converted end to end."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.integer.base import QSpec
from aquatic.integer.build_transformer import build_encoder_layer
from aquatic.integer.transformer import IntegerTransformerEncoderLayer, Program

INT8 = aquatic.qconfig.int8
E, H = 16, 2


def _sequential(norm_first, seed=0, activation="relu"):
    torch.manual_seed(seed)
    layer = aquatic.nn.TransformerEncoderLayer(
        E,
        H,
        32,
        dropout=0.0,
        activation=activation,
        batch_first=True,
        norm_first=norm_first,
        qconfig=INT8,
    )
    return nn.Sequential(aquatic.nn.ActivationQuantizer(qconfig=INT8), layer)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_codes_match_the_quantization_aware_layer(norm_first):
    model = _sequential(norm_first)
    x = torch.randn(96, 10, E)
    for _ in range(3):  # observe
        model(x)
    model.eval()
    integer = aquatic.convert(model)
    assert isinstance(integer.layers[-1], IntegerTransformerEncoderLayer)
    with torch.no_grad():
        expected = model(x)
    codes = integer(integer.quantize_input(x))
    got = integer.dequantize_output(codes)
    step = float(integer.output_spec.scale)
    difference = ((got - expected).abs() / step).round()
    # Stated bound: one output step, and only next to a rounding boundary of float32.
    assert float(difference.max()) <= 1
    assert float((difference == 0).double().mean()) >= 0.995
    assert not integer.exact and integer.notes


def test_quantized_layers_have_norm_twins_and_residual_quantizers():
    layer = aquatic.nn.TransformerEncoderLayer(E, H, 32, qconfig=INT8)
    assert type(layer.norm1) is aquatic.nn.LayerNorm and "activation" in layer.norm2.quantizers
    assert {"residual1", "residual2"} <= set(layer.quantizers)
    ref = nn.TransformerEncoderLayer(E, H, 32)
    layer.load_state_dict(ref.state_dict())  # a torch checkpoint loads (strict)
    assert torch.equal(layer.norm1.weight, ref.norm1.weight)
    back = layer.to_float()
    assert type(back.norm1) is nn.LayerNorm and type(back.self_attn) is nn.MultiheadAttention
    decoder = aquatic.nn.TransformerDecoderLayer(E, H, 32, dropout=0.0, qconfig=INT8)
    assert {"residual1", "residual2", "residual3"} <= set(decoder.quantizers)
    out = decoder(torch.randn(4, 2, E), torch.randn(5, 2, E))
    grid = decoder.norm3.quantizers["activation"].grid()
    assert torch.equal(torch.round(out / grid.scale) * grid.scale, out.detach())
    plain = aquatic.nn.TransformerEncoderLayer(E, H, 32, qconfig=aquatic.qconfig.int4_weight)
    assert type(plain.norm1) is nn.LayerNorm and not plain.quantizers


def test_refusals_name_the_layer_and_the_reason():
    model = _sequential(False, activation="gelu")
    x = torch.randn(8, 5, E)
    model(x)
    with pytest.raises(ValueError, match="activation 'gelu'.*activation='relu'"):
        aquatic.convert(model.eval())
    weights_only = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=INT8),
        aquatic.nn.TransformerEncoderLayer(E, H, 32, qconfig=aquatic.qconfig.int4_weight),
    )
    weights_only(x)
    with pytest.raises(ValueError, match="no quantizer residual1, residual2"):
        aquatic.convert(weights_only.eval())
    floating = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=INT8), nn.TransformerEncoderLayer(E, H, 32)
    )
    floating(x)
    with pytest.raises(TypeError, match="float torch.nn.TransformerEncoderLayer"):
        aquatic.convert(floating.eval(), example_input=x)
    decoder = aquatic.nn.TransformerDecoderLayer(E, H, 32, qconfig=INT8)
    spec = QSpec(torch.tensor(0.1), torch.tensor(0), None, -128, 127)
    with pytest.raises(TypeError, match="decoder layer.*build_decoder_layer"):
        build_encoder_layer("decoder", decoder, spec, Program())
    model = _sequential(True)
    model(x)
    integer = aquatic.convert(model.eval())
    with pytest.raises(TypeError, match="no saved form.*IntegerGraph"):
        aquatic.integer.save(integer, io.BytesIO())


class Classifier(nn.Module):
    """Embedding -> TransformerEncoder (2 layers) -> mean over tokens -> Linear."""

    def __init__(self, vocab, classes):
        super().__init__()
        self.embed = nn.Embedding(vocab, E)
        layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(E, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def _task(count, generator, vocab=12, length=8):
    """Which of tokens 0, 1, 2 occurs most often (ties to the smallest)."""
    tokens = torch.randint(0, vocab, (count, length), generator=generator)
    counts = torch.stack([(tokens == k).sum(1) for k in range(3)], 1)
    return tokens, counts.argmax(1)


def _train(model, tokens, labels, steps, lr):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = torch.randint(0, len(tokens), (64,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(tokens[batch]), labels[batch]).backward()
        optimizer.step()


def test_transformer_classifier_integer_argmax_agrees_with_the_qat_model():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    tokens, labels = _task(2048, generator)
    held_out, held_labels = _task(1000, generator)
    model = Classifier(12, 3)
    _train(model, tokens, labels, 150, 1e-2)
    qat = aquatic.quantize(model, INT8)
    _train(qat, tokens, labels, 40, 2e-3)
    qat.eval()
    with torch.no_grad():
        logits = qat(held_out)
    accuracy = float((logits.argmax(1) == held_labels).double().mean())
    assert accuracy > 0.6  # learned something (chance is about 0.4)
    integer = aquatic.convert(qat, example_input=held_out[:4])
    out = integer.dequantize_output(integer(held_out))
    agreement = float((out.argmax(1) == logits.argmax(1)).double().mean())
    assert agreement >= 0.99
    assert float(((out - logits).abs() < 1e-6).double().mean()) >= 0.95  # logit codes
    buffer = io.BytesIO()
    integer.save(buffer)
    buffer.seek(0)
    again = type(integer).load(buffer)
    codes = held_out[:64]
    assert torch.equal(again(codes), integer(codes))


def test_a_graph_may_return_the_encoder_output_itself():
    class Encoding(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = aquatic.nn.ActivationQuantizer(qconfig=INT8)
            self.encoder = _sequential(False)[1]

        def forward(self, x):
            return self.encoder(self.quant(x))

    model = Encoding()
    x = torch.randn(16, 5, E)
    model(x)
    integer = aquatic.convert(model.eval(), example_input=x)
    grid = model.encoder.norm2.quantizers["activation"].grid()
    assert float(integer.output_specs.scale) == float(grid.scale)
    with torch.no_grad():
        expected = model(x)
    got = integer.dequantize_output(integer(integer.quantize_input(x)))
    assert float(((got - expected).abs() / float(grid.scale)).round().max()) <= 1
