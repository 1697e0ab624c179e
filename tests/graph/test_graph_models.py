"""Real architectures the ordinary way (residual adds, depthwise convolutions, ReLU6,
global pooling, torch.flatten): quantize -> train a few steps -> convert(example_input)
-> the integer graph computes what the quantization-aware model computes."""

import pytest

from graph_models import INT8, MODELS, POW2, BasicBlock, ResNet, check, trained

import aquatic


@pytest.mark.parametrize("name", ["resnet8", "mobilenet_block"])
def test_power_of_two_scales_give_the_fake_quant_output_bit_for_bit(name):
    qmodel, x = trained(MODELS[name](), POW2)
    check(qmodel, x, exact=True)


@pytest.mark.parametrize("name", ["resnet8", "mobilenet_block"])
def test_int8_preset_within_two_output_steps(name):
    qmodel, x = trained(MODELS[name](), INT8)
    check(qmodel, x, exact=False)


def test_quantize_inserts_what_the_integer_model_needs():
    qmodel, _ = trained(ResNet((1, 1, 1)), POW2, steps=1)
    names = {name for name, _ in qmodel.named_modules()}
    # one output quantizer per residual add, inside the block that adds
    assert {"layers.0.0.add", "layers.1.0.add", "layers.2.0.add"} <= names
    assert isinstance(qmodel.layers[1][0].add, aquatic.nn.Add)
    assert isinstance(qmodel.input_quantizer, aquatic.nn.ActivationQuantizer)
    assert isinstance(qmodel.layers[1][0].conv1, aquatic.nn.Conv2d)  # names kept
    assert isinstance(qmodel.layers[1][0], BasicBlock)  # containers kept
