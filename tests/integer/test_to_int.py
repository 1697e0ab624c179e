"""layer.to_int(): integer codes and what maps them back to the values forward uses."""

import pytest
import torch

import aquatic
import aquatic.nn as qnn
from aquatic.hw import xylo
from aquatic.quantizers import AccumulatorBiasQuantizer, BitShiftDecay, UniformQuantizer

INTEGER_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def dequantized(entry, like):
    """``(codes - zero_point) * scale`` broadcast along ``ch_axis``."""
    scale = torch.as_tensor(entry["scale"]).float()
    zero_point = torch.as_tensor(entry["zero_point"])
    if scale.dim() == 1:
        shape = [1] * like.dim()
        shape[entry["ch_axis"]] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (entry["codes"].to(torch.int64) - zero_point).float() * scale


@pytest.mark.parametrize(
    "qconfig",
    [
        aquatic.qconfig.int8,
        aquatic.qconfig.int4_weight,
        aquatic.qconfig.binary_weight,
        aquatic.QConfig(
            weight=UniformQuantizer.with_args(bits=6, symmetric=False, ch_axis=0),
            bias=AccumulatorBiasQuantizer.with_args(input_scale=0.05),
        ),
    ],
)
def test_conventional_codes_rebuild_the_quantized_parameters(qconfig):
    torch.manual_seed(0)
    layer = qnn.Conv2d(3, 4, 3, qconfig=qconfig)
    layer(torch.rand(2, 3, 6, 6))
    ints = layer.to_int()
    values = layer.quantize_params()
    assert set(ints) == set(values) and "weight" in ints
    for name, entry in ints.items():
        assert entry["codes"].dtype in INTEGER_DTYPES
        assert entry["codes"].shape == values[name].shape
        assert bool((entry["codes"] >= entry["quant_min"]).all())
        assert bool((entry["codes"] <= entry["quant_max"]).all())
        torch.testing.assert_close(dequantized(entry, values[name]), values[name])


def test_spiking_layer_gives_dash_for_bit_shift_decays():
    torch.manual_seed(0)
    qconfig = xylo.qconfig()
    model = torch.nn.Sequential(
        qnn.Linear(8, 4, bias=False, qconfig=qconfig),
        qnn.LIF(tau_mem=torch.tensor([2.0, 8.0, 30.0, 100.0]), tau_syn=3.0, qconfig=qconfig),
    )
    model((torch.rand(2, 5, 8) < 0.5).float())
    ints = model[1].to_int()
    values = model[1].quantize_params()
    assert {"tau_mem", "tau_syn", "alpha_mem", "alpha_syn", "threshold"} <= set(ints)
    for name in ("alpha_mem", "alpha_syn"):
        dash = ints[name]["codes"]
        assert dash.dtype in INTEGER_DTYPES
        assert torch.equal(ints[name]["dash"].to(torch.int64), dash.to(torch.int64))
        torch.testing.assert_close(1 - 2.0 ** -dash.double(), values[name].double().expand_as(dash))
    threshold = ints["threshold"]
    torch.testing.assert_close(dequantized(threshold, values["threshold"]), values["threshold"])


def test_recurrent_weights_and_plain_decays():
    torch.manual_seed(1)
    qconfig = aquatic.QConfig(weight=UniformQuantizer, alpha=BitShiftDecay)
    layer = qnn.LIFRecurrent(3, alpha_mem=torch.tensor([0.5, 0.8, 0.99]), qconfig=qconfig)
    ints = layer.to_int()
    assert ints["alpha_mem"]["codes"].tolist() == [1, 2, 7]  # 1 - 2**-dash nearest
    torch.testing.assert_close(
        dequantized(ints["rec_weight"], layer.rec_weight), layer.quantize_params()["rec_weight"]
    )


def test_no_range_yet_is_a_clear_error():
    layer = qnn.Linear(
        3, 2, qconfig=aquatic.QConfig(bias=AccumulatorBiasQuantizer, weight=UniformQuantizer)
    )
    with pytest.raises(ValueError, match="'bias' quantizer has no range yet"):
        layer.to_int()
