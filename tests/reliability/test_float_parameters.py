"""aquatic.quantize never leaves a weight in float silently: it names each one."""

import warnings

import pytest
import torch
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer

int8 = aquatic.qconfig.int8


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.rnn = nn.LSTM(8, 8, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        h, _ = self.rnn(self.emb(tokens))
        return self.head(self.bn(self.norm(h[:, -1])))


def _float_warning(model, qconfig):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = aquatic.quantize(model, qconfig)
    messages = [str(w.message) for w in caught if "stay in float" in str(w.message)]
    return quantized, messages


def test_each_float_parameter_is_named_with_the_fix():
    _, messages = _float_warning(Tagger(), int8)
    assert len(messages) == 1
    message = messages[0]
    for name in ("norm.weight (LayerNorm)", "norm.bias (LayerNorm)"):
        assert name in message
    assert "aquatic.quantize_parameter" in message
    # The head and the embedding have twins (quantized); BatchNorm folds into the layer
    # before it.
    assert "head." not in message and "bn." not in message and "emb." not in message


def test_mapping_a_module_to_none_keeps_it_in_float_silently():
    mapping = {nn.Linear: int8, "emb": None, "rnn": None, "norm": None}
    quantized, messages = _float_warning(Tagger(), mapping)
    assert messages == []
    assert type(quantized.emb) is nn.Embedding


def test_a_regular_expression_key_counts_as_a_choice():
    quantized, messages = _float_warning(Tagger(), {nn.Linear: int8, "emb|rnn|norm": None})
    assert messages == []


def test_parameters_quantized_with_quantize_parameter_are_not_named():
    model = Tagger()
    aquatic.quantize_parameter(model.emb, "weight", UniformQuantizer(bits=4))
    _, messages = _float_warning(model, {nn.Linear: int8, "rnn": None, "norm": None})
    assert messages == []


def test_a_model_of_twins_only_warns_nothing():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantized = aquatic.quantize(model, int8)
    assert isinstance(quantized[3], aquatic.nn.Linear)


def test_the_warning_does_not_change_the_result():
    torch.manual_seed(0)
    model = Tagger().eval()
    with pytest.warns(UserWarning, match="stay in float"):
        quantized = aquatic.quantize(model, {nn.Linear: None})
    tokens = torch.randint(0, 10, (4, 5))
    assert torch.equal(quantized(tokens), model(tokens))
