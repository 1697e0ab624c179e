"""The integer multi-head attention against the quantization-aware aquatic.nn.MultiheadAttention."""

import io

import pytest
import torch
from torch import nn

import aquatic
from aquatic.functional.integer_math import exp_tables, table_exp
from aquatic.integer.attention import IntegerMultiheadAttention
from aquatic.integer.base import QSpec
from aquatic.integer.build_attention import build_attention
from aquatic.interop.onnx import export_integer
from aquatic.quantizers import UniformQuantizer

E, H = 16, 4
INT8 = aquatic.qconfig.int8
PER_ROW = INT8._replace(weight=UniformQuantizer.with_args(bits=8, symmetric=True, ch_axis=0))


def test_table_exp_follows_the_exponential_to_24_bits():
    rate = 0.0123
    low, high, split = exp_tables(rate)
    d = torch.arange(0, 2 ** (2 * split))
    expected = torch.exp(-rate * d.double()) * 2.0**24
    assert float((table_exp(d, low, high, split) - expected).abs().max()) <= 1.5
    assert int(table_exp(torch.tensor([2 ** (2 * split)]), low, high, split)) == 0
    with pytest.raises(ValueError, match="positive"):
        exp_tables(0.0)


def _codes(layer, x, **kwargs):
    with torch.no_grad():
        out, _ = layer(x, x, x, **kwargs) if isinstance(x, torch.Tensor) else layer(*x, **kwargs)
    grid = layer.out_proj.quantizers["activation"].grid()
    return torch.round(out / grid.scale).long() + grid.zero_point.long()


def _observed(seed, qconfig=INT8, **kwargs):
    torch.manual_seed(seed)
    layer = aquatic.nn.MultiheadAttention(E, H, qconfig=qconfig, **kwargs)
    return layer


SCALE, ZERO = 0.03, 128
SPEC = QSpec(torch.tensor(SCALE), torch.tensor(ZERO), None, 0, 255)


def _inputs(*shape):
    q = torch.randint(0, 256, shape)
    return q, ((q - ZERO) * SCALE).float()


@pytest.mark.parametrize("seed, batch_first", [(0, True), (1, False), (2, True)])
def test_self_attention_codes_match_the_quantization_aware_layer(seed, batch_first):
    layer = _observed(seed, PER_ROW if seed == 2 else INT8, batch_first=batch_first)
    q, x = _inputs(48, 9, E) if batch_first else _inputs(9, 48, E)
    layer(x, x, x)  # observe
    layer.eval()
    integer, spec = build_attention("attn", layer, SPEC)
    got, expected = integer(q).long(), _codes(layer, x)
    # Stated bound: one step, and only where a float32 value lies at a rounding boundary.
    assert int((got - expected).abs().max()) <= 1
    assert float((got == expected).double().mean()) >= 0.995
    assert float(spec.scale) == float(layer.out_proj.quantizers["activation"].grid().scale)


def test_masks_and_unbatched_input():
    layer = _observed(3, batch_first=True)
    q, x = _inputs(32, 8, E)
    layer(x, x, x)
    layer.eval()
    integer, _ = build_attention("attn", layer, SPEC)
    padding = torch.zeros(32, 8, dtype=torch.bool)
    padding[:16, 5:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(8)
    for kwargs in (
        {"key_padding_mask": padding},
        {"attn_mask": causal},
        {"attn_mask": causal < 0},
    ):
        expected = _codes(layer, x, **kwargs)
        got = integer(q, **kwargs).long()
        assert int((got - expected).abs().max()) <= 1
        assert float((got == expected).double().mean()) >= 0.995
    single = integer(q[0]).long()
    assert torch.equal(single, integer(q[:1])[0].long())
    with pytest.raises(ValueError, match="0 and -inf only"):
        integer(q, attn_mask=torch.full((8, 8), -1.0))


def test_cross_attention_with_other_key_and_value_sizes():
    layer = _observed(4, kdim=5, vdim=3)
    q, x = _inputs(6, 20, E)
    k, xk = _inputs(7, 20, 5)
    v, xv = _inputs(7, 20, 3)
    layer(x, xk, xv)
    layer.eval()
    integer, _ = build_attention("attn", layer, SPEC, SPEC, SPEC)
    expected = _codes(layer, (x, xk, xv))
    got = integer(q, k, v).long()
    assert int((got - expected).abs().max()) <= 1
    assert float((got == expected).double().mean()) >= 0.995


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = aquatic.nn.ActivationQuantizer(qconfig=INT8)
        self.attn = aquatic.nn.MultiheadAttention(E, H, batch_first=True, qconfig=INT8)
        self.head = aquatic.nn.Linear(E, 3, qconfig=INT8)

    def forward(self, x):
        x = self.quant(x)
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.head(out)


def test_graph_converts_attention_and_saves():
    torch.manual_seed(5)
    model = _Block()
    x = torch.randn(32, 6, E)
    model(x)
    model.eval()
    integer = aquatic.convert(model, example_input=x)
    with torch.no_grad():
        expected = model(x)
    got = integer.dequantize_output(integer(integer.quantize_input(x)))
    step = float(model.head.quantizers["activation"].grid().scale)
    assert float((got - expected).abs().max()) <= 2 * step + 1e-6
    assert float(((got - expected).abs() < 1e-6).double().mean()) >= 0.99
    buffer = io.BytesIO()
    integer.save(buffer)
    buffer.seek(0)
    again = type(integer).load(buffer)
    codes = integer.quantize_input(x)
    assert torch.equal(again(codes), integer(codes))
    with pytest.raises(TypeError, match="IntegerMultiheadAttention.*no exact ONNX form"):
        export_integer(integer, io.BytesIO(), codes)


def test_refusals_name_the_layer_and_the_fix():
    with pytest.raises(TypeError, match="float torch.nn.MultiheadAttention"):
        build_attention("a", nn.MultiheadAttention(E, H), SPEC)
    with pytest.raises(ValueError, match="add_bias_kv=True"):
        build_attention(
            "a", aquatic.nn.MultiheadAttention(E, H, add_bias_kv=True, qconfig=INT8), SPEC
        )
    weights_only = aquatic.nn.MultiheadAttention(E, H, qconfig=aquatic.qconfig.int4_weight)
    with pytest.raises(ValueError, match="no quantizer q, k, v, attention"):
        build_attention("a", weights_only, SPEC)
    with pytest.raises(ValueError, match="one scale and a range"):
        build_attention("a", _observed(6), QSpec(torch.tensor(0.1), torch.tensor(0)))

    class Masked(_Block):
        def forward(self, x, mask):
            x = self.quant(x)
            return self.attn(x, x, x, key_padding_mask=mask)[0]

    torch.manual_seed(7)
    model = Masked()
    x, mask = torch.randn(4, 5, E), torch.zeros(4, 5, dtype=torch.bool)
    model(x, mask)
    with pytest.raises(TypeError, match="without masks"):
        aquatic.convert(model.eval(), example_input=(x, mask), input_scale=1.0)


def test_too_fine_grids_are_refused_not_rounded_silently():
    ones = torch.ones(E, E, dtype=torch.long)
    grids = {k: [0, -(2**15), 2**15 - 1] for k in ("query", "key", "value", "q", "k", "v")}
    grids.update(attention=[0, 0, 2**16 - 1], output=[0, -(2**15), 2**15 - 1])
    scales = dict(query=0.01, key=0.01, value=0.01, q=0.01, k=0.01, v=1e-4, output=1e-4)
    scales.update(weight_q=0.01, weight_k=0.01, weight_v=0.01, weight_out=1e-4)
    scales.update(attention=1 / 65535)
    biases = dict(q=None, k=None, v=None, out=None)
    with pytest.raises(ValueError, match="'out' requantization keeps only"):
        IntegerMultiheadAttention(ones, ones, ones, ones * 32767, H, scales, grids, biases)
    scales.update(q=1e-6, k=1e-6)
    with pytest.raises(ValueError, match="layer .*too small for lookup tables"):
        IntegerMultiheadAttention(ones, ones, ones, ones, H, scales, grids, biases)
