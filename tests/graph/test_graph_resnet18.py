"""A torchvision-style ResNet-18 (written in graph_models.py, no torchvision needed):
quantize -> train -> convert(example_input) gives the fake-quant output bit for bit."""

from graph_models import MODELS, POW2, check, trained


def test_resnet18_power_of_two_scales_bit_for_bit():
    qmodel, x = trained(MODELS["resnet18"](), POW2)
    check(qmodel, x, exact=True)
