"""aquatic.convert on sequence models: embeddings, GRU and LSTM in an nn.Sequential."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.integer import IntegerModel
from aquatic.quantizers import UniformQuantizer

INT8 = aquatic.qconfig.int8
WITH_STATE = INT8._replace(state=UniformQuantizer.with_args(bits=12))
PER_ROW = INT8._replace(weight=UniformQuantizer.with_args(ch_axis=0))


def keywords(generator, count, classes=3, steps=10, features=8):
    """Each class is a fixed sequence of feature frames, plus noise."""
    templates = torch.randn(classes, steps, features, generator=torch.Generator().manual_seed(7))
    labels = torch.randint(0, classes, (count,), generator=generator)
    return (
        templates[labels] + 0.8 * torch.randn(count, steps, features, generator=generator),
        labels,
    )


def sentences(generator, count, classes=3, steps=8, vocab=24):
    """Token sequences drawn from a word distribution of each class."""
    words = torch.rand(classes, vocab, generator=torch.Generator().manual_seed(5)) ** 4
    labels = torch.randint(0, classes, (count,), generator=generator)
    return torch.multinomial(words[labels], steps, replacement=True, generator=generator), labels


def fit(model, x, y, steps=20):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def test_keyword_spotting_gru_converts_and_agrees():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        aquatic.nn.ActivationQuantizer(qconfig=INT8),
        aquatic.nn.GRU(8, 16, batch_first=True, qconfig=INT8),
        aquatic.nn.SelectOutput(0),
        aquatic.nn.LastStep(1),
        aquatic.nn.Linear(16, 3, qconfig=INT8),
    )
    fit(model, *keywords(generator, 64))
    x, y = keywords(generator, 300)  # held out
    with torch.no_grad():
        logits = model(x)
    assert (logits.argmax(1) == y).float().mean() > 0.8  # it learned
    integer_model = aquatic.convert(model)
    codes = integer_model(integer_model.quantize_input(x))
    assert codes.shape == (300, 3)
    agreement = (codes.argmax(1) == logits.argmax(1)).float().mean().item()
    assert agreement >= 0.99


def test_embedding_lstm_classifier_converts_and_agrees():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = nn.Sequential(
        aquatic.nn.Embedding(24, 8, qconfig=PER_ROW),
        aquatic.nn.LSTM(8, 16, batch_first=True, qconfig=WITH_STATE),
        aquatic.nn.SelectOutput(0),
        aquatic.nn.LastStep(1),
        aquatic.nn.Linear(16, 3, qconfig=INT8),
    )
    fit(model, *sentences(generator, 64))
    x, y = sentences(generator, 300)
    with torch.no_grad():
        logits = model(x)
    assert (logits.argmax(1) == y).float().mean() > 0.8
    integer_model = aquatic.convert(model)
    assert isinstance(integer_model, IntegerModel)
    codes = integer_model(x)  # row indices are the input codes
    agreement = (codes.argmax(1) == logits.argmax(1)).float().mean().item()
    assert agreement >= 0.99
    with pytest.raises(ValueError, match="outside the input range"):
        integer_model(torch.tensor([[24]]))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("qconfig", [INT8, PER_ROW], ids=["per_tensor", "per_row"])
def test_embedding_bag_codes_match_the_quantization_aware_bag(mode, qconfig):
    torch.manual_seed(2)
    bag = aquatic.nn.EmbeddingBag(24, 6, mode=mode, padding_idx=0, qconfig=qconfig)
    generator = torch.Generator().manual_seed(3)
    bag(torch.randint(0, 24, (64, 5), generator=generator))  # observe ranges
    bag.eval()
    module = aquatic.convert(nn.Sequential(bag)).layers[0]
    output = bag.quantizers["activation"]
    flat = torch.randint(0, 24, (40,), generator=generator)
    offsets = torch.tensor([0, 4, 4, 11, 30])  # an empty bag too
    for args in [(flat.view(8, 5),), (flat, offsets)]:
        with torch.no_grad():
            expected = output.to_int(bag(*args)).to(torch.int64)
        codes = module(*args)
        assert (codes - expected).abs().max() <= 1
        assert (codes == expected).float().mean() >= 0.95


def test_embedding_lookup_is_bit_exact_and_errors_are_named():
    emb = aquatic.nn.Embedding(10, 4, qconfig=INT8._replace(activation=None))
    emb(torch.arange(10))
    integer_model = aquatic.convert(nn.Sequential(emb.eval()))
    x = torch.randint(0, 10, (5, 3))
    real = integer_model.dequantize_output(integer_model(x))
    assert torch.equal(real, emb(x).detach())
    per_row = aquatic.nn.Embedding(10, 4, qconfig=PER_ROW._replace(activation=None))
    per_row(x)
    with pytest.raises(ValueError, match="QConfig.activation"):
        aquatic.convert(nn.Sequential(per_row.eval()))
    float_table = aquatic.nn.Embedding(10, 4, qconfig=aquatic.QConfig(activation=INT8.activation))
    float_table(x)
    with pytest.raises(ValueError, match="QConfig.weight"):
        aquatic.convert(nn.Sequential(float_table.eval()))
    with pytest.raises(TypeError, match="SelectOutput takes a tuple"):
        aquatic.nn.SelectOutput(0)(x)
    with pytest.raises(TypeError, match="SelectOutput"):
        aquatic.nn.LastStep(1)((x, x))


def test_embedding_models_save_and_load(tmp_path):
    torch.manual_seed(4)
    bag = aquatic.nn.EmbeddingBag(20, 6, mode="sum", padding_idx=0, qconfig=PER_ROW)
    model = nn.Sequential(bag, aquatic.nn.Linear(6, 3, qconfig=INT8))
    x = torch.randint(0, 20, (5, 4))
    model(x)
    integer_model = aquatic.convert(model.eval())
    integer_model.save(tmp_path / "bag.aqt")
    loaded = aquatic.integer.load(tmp_path / "bag.aqt")
    assert torch.equal(loaded(x), integer_model(x))
