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


def test_graph_models_follow_the_output_policy_and_fuse_batch_norm_by_default():
    """Without quantize_output, the layer feeding the return (through flatten/pooling)
    keeps no activation quantizer, and every conv + batch norm pair along the traced
    forward is fused; the integer graph then returns that layer's accumulator."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = ResNet((1, 1, 1))
    qmodel = aquatic.quantize(model, POW2)
    fc = qmodel.get_submodule("fc")
    assert "activation" not in fc.quantizers and "weight" in fc.quantizers
    convs = [m for m in qmodel.modules() if isinstance(m, aquatic.nn.FusedBatchNorm)]
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(batch_norms) > 0
    x = torch.rand(16, 1, 16, 16)
    optimizer = torch.optim.SGD(qmodel.parameters(), lr=0.02)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(qmodel(x), torch.randint(0, 10, (16,))).backward()
        optimizer.step()
    aquatic.nn.freeze_bn(qmodel)
    qmodel.eval()
    integer = aquatic.convert(qmodel, example_input=x)
    out = integer.dequantize_output(integer(integer.quantize_input(x)))
    with torch.no_grad():
        expected = qmodel(x)
    assert torch.allclose(out, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert (out.argmax(1) == expected.argmax(1)).all()
