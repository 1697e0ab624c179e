"""aquatic.nn.MultiheadAttention and the transformer layers against torch and a reference."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.quantizers import AccumulatorBiasQuantizer, UniformQuantizer

W_SCALE, A_SCALE = 2.0**-6, 2.0**-4
FIXED = aquatic.QConfig(
    weight=UniformQuantizer.with_args(scale=W_SCALE),
    activation=UniformQuantizer.with_args(scale=A_SCALE),
)
E, H = 8, 2


def fq(x, scale):
    """Reference fake quantization, int8 on a fixed scale, straight-through gradient."""
    return x + (torch.clamp(torch.round(x / scale), -128, 127) * scale - x).detach()


def reference_attention(mha, x):
    """Quantized self-attention written out for (L, N, E) input."""
    length, batch, _ = x.shape
    wq, wk, wv = fq(mha.in_proj_weight, W_SCALE).chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    heads = lambda t: t.reshape(length, batch * H, E // H).transpose(0, 1)  # noqa: E731
    q = heads(fq(x @ wq.T + bq, A_SCALE))
    k = heads(fq(x @ wk.T + bk, A_SCALE))
    v = heads(fq(x @ wv.T + bv, A_SCALE))
    weights = fq(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(E // H), -1), A_SCALE)
    out = (weights @ v).transpose(0, 1).reshape(length, batch, E)
    out = out @ fq(mha.out_proj.weight, W_SCALE).T + mha.out_proj.bias
    return fq(out, A_SCALE), weights.view(batch, H, length, length).mean(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"batch_first": True},
        {"kdim": 5, "vdim": 3},
        {"add_bias_kv": True, "add_zero_attn": True},
    ],
)
def test_without_qconfig_it_is_torch(kwargs):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, dropout=0.0, **kwargs)
    twin = aquatic.nn.MultiheadAttention.from_float(ref)
    assert list(twin.state_dict()) == list(ref.state_dict())
    q = torch.randn(4, 3, E)
    k = torch.randn(4, 3, kwargs.get("kdim", E))
    v = torch.randn(4, 3, kwargs.get("vdim", E))
    shape = (4, 3) if kwargs.get("batch_first") else (3, 4)  # (N, S)
    mask = torch.rand(shape) > 0.7
    mask[:, 0] = False
    for training, grad in [(True, True), (False, False)]:
        ref.train(training), twin.train(training)
        with torch.set_grad_enabled(grad):
            for args in [{}, {"key_padding_mask": mask, "average_attn_weights": False}]:
                a, b = ref(q, k, v, **args), twin(q, k, v, **args)
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_quantized_forward_and_backward_match_the_reference():
    torch.manual_seed(1)
    mha = aquatic.nn.MultiheadAttention(E, H, qconfig=FIXED)
    with torch.no_grad():
        mha.in_proj_bias.uniform_(-0.1, 0.1)
    x = 0.5 * torch.randn(5, 3, E)
    out, weights = mha(x, x, x)
    ref_out, ref_weights = reference_attention(mha, x)
    assert ref_out.abs().max() < 127 * A_SCALE  # nothing clipped: the STE passes everywhere
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(weights, ref_weights)
    assert torch.allclose(out / A_SCALE, torch.round(out / A_SCALE), atol=1e-4)  # on the grid
    grads = torch.autograd.grad(out.pow(2).sum(), [mha.in_proj_weight, mha.out_proj.weight])
    ref_grads = torch.autograd.grad(ref_out.pow(2).sum(), [mha.in_proj_weight, mha.out_proj.weight])
    for grad, ref_grad in zip(grads, ref_grads):
        assert grad.abs().sum() > 0 and torch.allclose(grad, ref_grad, atol=1e-5)


def test_masks_exclude_keys_as_torch_does():
    torch.manual_seed(2)
    mha = aquatic.nn.MultiheadAttention(E, H, batch_first=True, qconfig=FIXED)
    x = torch.randn(2, 5, E)
    padding = torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    _, weights = mha(x, x, x, key_padding_mask=padding, attn_mask=causal, is_causal=True)
    assert torch.all(weights[0, :, 3:] == 0)
    assert torch.all(weights.triu(1) == 0)
    unbatched, _ = mha(x[1], x[1], x[1])
    assert torch.equal(unbatched, mha(x[1:], x[1:], x[1:])[0][0])


def encoder(seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2)


def test_two_layer_encoder_eval_under_no_grad_is_the_quantized_forward():
    model = aquatic.quantize(encoder(), {nn.Module: aquatic.qconfig.int8, r".*norm\d": None})
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, 16, generator=generator)
    target = torch.randn(8, 6, 16, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):  # QAT
        optimizer.zero_grad()
        F.mse_loss(model(x), target).backward()
        optimizer.step()
    model.eval()
    quantized = model(x)  # gradients enabled: torch's fused path is off anyway
    with torch.no_grad():
        fast = model(x)
        floating = aquatic.dequantize(model).eval()(x)
    assert torch.equal(fast, quantized)
    assert not torch.allclose(floating, quantized, atol=1e-3)  # float weights would differ
    # With a padding mask, torch.nn.TransformerEncoder runs its layers on nested tensors.
    padding = torch.zeros(8, 6, dtype=torch.bool)
    padding[:4, 4:] = True
    nested = []
    model.layers[1].register_forward_pre_hook(lambda m, args: nested.append(args[0].is_nested))
    expected = model(x, src_key_padding_mask=padding)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's prototype warning about nested tensors
        got = model(x, src_key_padding_mask=padding)
    assert nested == [False, True]
    keep = ~padding
    assert torch.allclose(got[keep], expected[keep], atol=1e-6)


def test_encoder_layer_without_qconfig_is_torch_fast_path_included():
    torch.manual_seed(3)
    ref = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval()
    twin = aquatic.nn.TransformerEncoderLayer.from_float(ref)
    assert list(twin.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(twin(x), ref(x))
    ref.train(), twin.train()
    torch.manual_seed(4)
    a = ref(x)
    torch.manual_seed(4)
    assert torch.equal(twin(x), a)


def test_decoder_layers_quantize_and_stack():
    torch.manual_seed(5)
    ref = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0)
    plain = aquatic.nn.TransformerDecoderLayer.from_float(ref)
    tgt, memory = torch.randn(4, 2, 16), torch.randn(6, 2, 16)
    assert torch.equal(plain(tgt, memory), ref(tgt, memory))
    decoder = aquatic.quantize(
        nn.TransformerDecoder(ref, 2), {nn.Module: aquatic.qconfig.int8, r".*norm\d": None}
    )
    layer = decoder.layers[0]
    assert type(layer) is aquatic.nn.TransformerDecoderLayer
    assert type(layer.multihead_attn) is aquatic.nn.MultiheadAttention
    assert type(layer.linear2) is aquatic.nn.Linear
    out = decoder(tgt, memory)
    out.sum().backward()
    assert layer.multihead_attn.in_proj_weight.grad is not None
    back = aquatic.dequantize(decoder).layers[0]
    assert type(back.self_attn) is nn.MultiheadAttention and type(back.linear1) is nn.Linear
    weight = layer.self_attn.quantize_params()["in_proj_weight"]
    assert torch.equal(back.self_attn.in_proj_weight, weight)


def test_quantize_leaves_no_attention_weight_in_float_silently():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aquatic.quantize(nn.Sequential(nn.MultiheadAttention(E, H)), aquatic.qconfig.int8)
    assert not caught  # out_proj is quantized by the twin
    shared = aquatic.nn.MultiheadAttention.from_float(nn.MultiheadAttention(E, H))
    assert shared.to_float(baked=False).in_proj_weight is shared.in_proj_weight


def test_bad_input_is_named():
    bias = FIXED._replace(bias=AccumulatorBiasQuantizer)
    with pytest.raises(ValueError, match="q, k and v projections"):
        aquatic.nn.MultiheadAttention(E, H, qconfig=bias)
    mha = aquatic.nn.MultiheadAttention(E, H, qconfig=FIXED)
    x = torch.randn(3, 2, E)
    with pytest.raises(ValueError, match="is_causal"):
        mha(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="3-D"):
        mha(x, x[0], x)
    with pytest.raises(TypeError, match="bool or floating-point"):
        mha(x, x, x, key_padding_mask=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.nn.MultiheadAttention"):
        aquatic.nn.MultiheadAttention.from_float(nn.Linear(2, 2))


def test_a_quantized_attention_inside_torch_layers_never_runs_float():
    torch.manual_seed(6)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2)
    model = aquatic.quantize(encoder, {nn.MultiheadAttention: aquatic.qconfig.int8})
    assert type(model.layers[0]) is nn.TransformerEncoderLayer  # torch's own layer
    x = torch.randn(3, 5, 16)
    model(x)
    model.eval()
    quantized = model(x)
    with torch.no_grad():
        assert torch.equal(model(x), quantized)
    plain = aquatic.nn.MultiheadAttention(16, 4, kdim=8)
    assert not plain._qkv_same_embed_dim and plain.q_proj_weight.shape == (16, 16)


def test_quantize_warns_about_torch_layers_whose_linears_alone_are_quantized():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32), 2)
    with pytest.warns(UserWarning, match="layers.0, layers.1 stay torch.nn.TransformerEncoder"):
        aquatic.quantize(encoder, {nn.Linear: aquatic.qconfig.int8})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aquatic.quantize(encoder, {nn.Module: aquatic.qconfig.int8, r".*norm\d": None})


def test_a_torch_checkpoint_loads_into_quantized_layers():
    torch.manual_seed(7)
    ref = nn.TransformerEncoderLayer(16, 4, 32)
    layer = aquatic.nn.TransformerEncoderLayer(16, 4, 32, qconfig=aquatic.qconfig.int8)
    layer.load_state_dict(ref.state_dict())  # strict: no quantizer state needed
    assert torch.equal(layer.self_attn.in_proj_weight, ref.self_attn.in_proj_weight)
    assert torch.equal(layer.self_attn.out_proj.weight, ref.self_attn.out_proj.weight)
    assert torch.equal(layer.linear2.bias, ref.linear2.bias)
    again = aquatic.nn.TransformerEncoderLayer(16, 4, 32, qconfig=aquatic.qconfig.int8)
    layer(torch.randn(5, 2, 16))
    again.load_state_dict(layer.state_dict())
    observed = layer.self_attn.quantizers["q"].observer.max_val
    assert torch.equal(again.self_attn.quantizers["q"].observer.max_val, observed)


def test_a_name_key_decides_a_child_of_a_quantized_transformer_layer():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32), 2)
    int4 = aquatic.qconfig.int4_weight
    mapping = {
        nn.Module: aquatic.qconfig.int8,
        r".*norm\d": None,
        "layers.0.linear1": None,
        "layers.1.self_attn": int4,
    }
    model = aquatic.quantize(encoder, mapping)
    first, second = model.layers
    assert first.linear1.qconfig is None and not first.linear1.quantizers
    assert first.linear2.qconfig == aquatic.qconfig.int8
    assert second.self_attn.qconfig == int4 and second.linear1.qconfig == aquatic.qconfig.int8
    assert torch.equal(first.linear1.weight, encoder.layers[0].linear1.weight)
    assert type(first.norm1) is nn.LayerNorm  # named None: float
    with pytest.raises(ValueError, match="not one of"):
        first.set_child_qconfigs({"dropout": None})
    first.set_child_qconfigs({"norm1": aquatic.qconfig.int8})
    assert type(first.norm1) is aquatic.nn.LayerNorm
    assert first.norm1.weight is encoder.layers[0].norm1.weight or torch.equal(
        first.norm1.weight, encoder.layers[0].norm1.weight
    )


def test_a_type_key_decides_the_children_of_a_quantized_transformer_layer():
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32), 2)
    int8, int4 = aquatic.qconfig.int8, aquatic.qconfig.int4_weight
    mapping = {nn.Module: int8, r".*norm\d": None, nn.Linear: None}
    model = aquatic.quantize(encoder, mapping)
    for layer in model.layers:
        assert layer.qconfig == int8 and layer.self_attn.qconfig == int8
        assert layer.linear1.qconfig is None and not layer.linear1.quantizers
        assert layer.linear2.qconfig is None and not layer.linear2.quantizers
    assert model(torch.randn(5, 2, 16)).shape == (5, 2, 16)
    # A type key for the children, under a type key for the layer.
    model = aquatic.quantize(encoder, {nn.TransformerEncoderLayer: int8, nn.Linear: int4})
    assert model.layers[0].linear1.qconfig == int4 and model.layers[0].self_attn.qconfig == int8
    model = aquatic.quantize(encoder, {nn.Module: int8, nn.MultiheadAttention: int4})
    assert model.layers[1].self_attn.qconfig == int4 and model.layers[1].linear2.qconfig == int8
    # A catch-all type key that covers the layer as well does not override its QConfig.
    model = aquatic.quantize(encoder, {nn.Module: int4, nn.TransformerEncoderLayer: int8})
    assert model.layers[0].linear1.qconfig == int8 and model.layers[0].self_attn.qconfig == int8


def test_name_keys_win_over_type_keys_for_transformer_children():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32), 2)
    int8, int4 = aquatic.qconfig.int8, aquatic.qconfig.int4_weight
    base = {nn.Module: int8, r".*norm\d": None, nn.Linear: None}
    model = aquatic.quantize(encoder, {**base, "layers.0.linear1": int4})
    assert model.layers[0].linear1.qconfig == int4  # its own name
    assert model.layers[1].linear1.qconfig is None  # the type key
    model = aquatic.quantize(encoder, {**base, "layers.1": int8})
    assert model.layers[1].linear2.qconfig == int8  # the nearest enclosing name
    assert model.layers[0].linear2.qconfig is None
    model = aquatic.quantize(encoder, {**base, r"layers\.\d\.linear2": int4})
    assert model.layers[0].linear2.qconfig == int4  # a regular expression on its name
    assert model.layers[0].linear1.qconfig is None


FINE = aquatic.QConfig(
    weight=UniformQuantizer.with_args(bits=16, scale=2.0**-14),
    activation=UniformQuantizer.with_args(bits=16, scale=2.0**-12),
)


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_first": True}, {"kdim": 5, "vdim": 3}, {"add_bias_kv": True, "add_zero_attn": True}],
)
def test_on_a_fine_grid_the_quantized_path_follows_torch(kwargs):
    """Every option of the explicit computation, against torch's own forward."""
    torch.manual_seed(8)
    ref = nn.MultiheadAttention(E, H, **kwargs)
    mha = aquatic.nn.MultiheadAttention.from_float(ref, FINE)
    q = torch.randn(4, 3, E)
    k = torch.randn(4, 3, kwargs.get("kdim", E))
    v = torch.randn(4, 3, kwargs.get("vdim", E))
    batch, keys = (4, 3) if kwargs.get("batch_first") else (3, 4)
    padding = torch.zeros(batch, keys, dtype=torch.bool)
    padding[0, -1] = True
    causal = nn.Transformer.generate_square_subsequent_mask(keys) if keys == 4 else None
    args = dict(key_padding_mask=padding, attn_mask=causal, average_attn_weights=False)
    (out, weights), (ref_out, ref_weights) = mha(q, k, v, **args), ref(q, k, v, **args)
    assert torch.allclose(out, ref_out, atol=2e-3) and torch.allclose(
        weights, ref_weights, atol=2e-3
    )
