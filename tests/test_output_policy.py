"""The last layer's output stays in float by default (quantize's quantize_output): int8
QAT of a small digits CNN then trains as well as float, and converts."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer
from aquatic.walk import output_layers

pytest.importorskip("sklearn")
from aquatic.demo import load_digits  # noqa: E402


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


@pytest.fixture(autouse=True)
def one_thread(set_threads):
    # Small convolutions only lose from threads on a shared machine.
    set_threads(1)


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, x_test, y_test = load_digits(seed=0)
    return x_train.view(-1, 1, 8, 8), y_train, x_test.view(-1, 1, 8, 8), y_test


def train(model, x, y, epochs=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def test_output_layers_of_sequential_models():
    assert output_layers(cnn()) == ["6"]
    tail = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 2), nn.ReLU()), nn.Dropout())
    assert output_layers(tail) == ["1.0"]
    assert output_layers(nn.Sequential(nn.ReLU())) == []


def test_quantize_leaves_the_output_activation_off_unless_asked():
    qmodel = aquatic.quantize(cnn(), aquatic.qconfig.int8)
    assert "activation" in qmodel[0].quantizers and "activation" in qmodel[3].quantizers
    assert set(qmodel[6].quantizers) == {"weight"}
    asked = aquatic.quantize(cnn(), aquatic.qconfig.int8, quantize_output=True)
    assert "activation" in asked[6].quantizers
    named = aquatic.quantize(cnn(), {nn.Module: aquatic.qconfig.int8, "6": aquatic.qconfig.int8})
    assert "activation" in named[6].quantizers
    # Quantizing again with the same QConfig changes nothing (and warns about nothing).
    again = aquatic.quantize(qmodel, aquatic.qconfig.int8)
    assert again[6].qconfig == qmodel[6].qconfig


def test_int8_qat_reaches_the_float_loss_and_converts(digits):
    x_train, y_train, x_test, y_test = digits
    model = cnn()
    qmodel = aquatic.quantize(copy.deepcopy(model), aquatic.qconfig.int8)
    float_loss = train(model, x_train, y_train)
    int8_loss = train(qmodel, x_train, y_train)
    assert int8_loss <= 1.10 * float_loss, (int8_loss, float_loss)
    # Pixels are multiples of 1/16: the input grid of the integer model.
    integer_model = aquatic.convert(qmodel, input_scale=1 / 16)
    with torch.no_grad():
        fake = qmodel(x_test)
    logits = integer_model.dequantize_output(integer_model(integer_model.quantize_input(x_test)))
    agreement = (logits.argmax(1) == fake.argmax(1)).float().mean().item()
    assert agreement >= 0.99
    # Requantization upstream may be one step apart (int8 scales are no powers of two).
    assert float((logits - fake).abs().max()) <= 0.1 * float(fake.abs().max())


def test_power_of_two_qat_with_float_output_converts_bit_exact(digits):
    x_train, y_train, x_test, _ = digits
    pow2 = aquatic.QConfig(
        weight=UniformQuantizer.with_args(bits=8, power_of_two=True, ch_axis=0),
        bias=UniformQuantizer.with_args(bits=16, scale=2.0**-8),
        activation=UniformQuantizer.with_args(
            bits=8, signed=False, symmetric=False, power_of_two=True
        ),
    )
    qmodel = aquatic.quantize(cnn(), pow2)
    train(qmodel, x_train[:512], y_train[:512], epochs=1)
    integer_model = aquatic.convert(qmodel, input_scale=1 / 16, require_exact=True)
    codes = integer_model(integer_model.quantize_input(x_test))
    with torch.no_grad():
        assert torch.equal(integer_model.dequantize_output(codes), qmodel(x_test))
    assert codes.dtype == torch.int32  # the last layer's accumulator
