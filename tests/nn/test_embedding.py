"""aquatic.nn.Embedding and EmbeddingBag against torch's layers and a reference quantizer."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer

torch.manual_seed(0)
ROWS, DIM = 12, 5
SCALES = torch.linspace(0.01, 0.05, ROWS)
PER_ROW = aquatic.QConfig(weight=UniformQuantizer.with_args(scale=SCALES, ch_axis=0))


def reference_table(weight):
    """Per-row int8 fake quantization, written out: round(w / s) clamped, times s."""
    s = SCALES[:, None]
    return torch.clamp(torch.round(weight / s), -128, 127) * s


def indices(*shape, seed=1):
    return torch.randint(0, ROWS, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kwargs", [{}, {"padding_idx": 3}, {"max_norm": 1.0}])
def test_embedding_without_qconfig_is_torch(kwargs):
    torch.manual_seed(1)
    ref = nn.Embedding(ROWS, DIM, **kwargs)
    twin = aquatic.nn.Embedding(ROWS, DIM, **kwargs)
    twin.load_state_dict(ref.state_dict())
    assert list(twin.state_dict()) == list(ref.state_dict())
    x = indices(4, 6)
    assert torch.equal(twin(x), ref(x))
    assert torch.equal(aquatic.nn.Embedding.from_float(ref)(x), ref(x))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_without_qconfig_is_torch(mode):
    ref = nn.EmbeddingBag(ROWS, DIM, mode=mode, padding_idx=0)
    twin = aquatic.nn.EmbeddingBag.from_float(ref)
    x = indices(4, 6)
    assert torch.equal(twin(x), ref(x))
    flat, offsets = indices(10), torch.tensor([0, 3, 3, 7])
    assert torch.equal(twin(flat, offsets), ref(flat, offsets))
    assert twin.to_float(baked=False).weight is ref.weight


def test_embedding_quantizes_each_row_with_its_own_scale():
    layer = aquatic.nn.Embedding(ROWS, DIM, qconfig=PER_ROW)
    x = indices(3, 7)
    expected = F.embedding(x, reference_table(layer.weight.detach()))
    assert torch.equal(layer(x), expected)
    assert torch.equal(layer.to_int()["weight"]["scale"], SCALES)
    # Straight-through inside the range, zero where the quantizer clips.
    layer(x).pow(2).sum().backward()
    weight = layer.weight.detach().clone().requires_grad_()
    inside = (torch.round(weight.detach() / SCALES[:, None]).abs() <= 127).float()
    table = reference_table(weight.detach()) + (weight - weight.detach()) * inside
    F.embedding(x, table).pow(2).sum().backward()
    assert (inside == 0).any()  # the test covers clipped values
    assert torch.allclose(layer.weight.grad, weight.grad)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_reduces_the_quantized_rows(mode):
    layer = aquatic.nn.EmbeddingBag(ROWS, DIM, mode=mode, qconfig=PER_ROW)
    table = reference_table(layer.weight.detach())
    flat, offsets = indices(9), torch.tensor([0, 2, 6])
    expected = F.embedding_bag(flat, table, offsets, mode=mode)
    assert torch.allclose(layer(flat, offsets), expected, atol=1e-6)


def test_quantize_swaps_embeddings_and_dequantize_bakes_the_table():
    model = nn.Sequential(nn.Embedding(ROWS, DIM), nn.EmbeddingBag(ROWS, DIM))
    qmodel = aquatic.quantize(model, PER_ROW)
    assert type(qmodel[0]) is aquatic.nn.Embedding and type(qmodel[1]) is aquatic.nn.EmbeddingBag
    assert qmodel[0].weight is not model[0].weight  # a copy, not in place
    plain = aquatic.dequantize(qmodel)
    assert type(plain[0]) is nn.Embedding
    assert torch.equal(plain[0].weight, reference_table(model[0].weight.detach()))


def test_a_torch_checkpoint_loads_into_a_quantized_embedding():
    ref = nn.Embedding(ROWS, DIM)
    layer = aquatic.nn.Embedding(ROWS, DIM, qconfig=PER_ROW)
    layer.load_state_dict(ref.state_dict())
    assert torch.equal(layer.weight, ref.weight)


def test_bad_input_is_named():
    layer = aquatic.nn.Embedding(ROWS, DIM, qconfig=PER_ROW)
    with pytest.raises(TypeError, match="integer indices"):
        layer(torch.zeros(3))
    with pytest.raises(ValueError, match="sparse"):
        aquatic.nn.Embedding(ROWS, DIM, sparse=True, qconfig=PER_ROW)
    with pytest.raises(ValueError, match="mode"):
        aquatic.nn.EmbeddingBag(ROWS, DIM, mode="median")
    with pytest.raises(TypeError, match="torch.nn.Embedding"):
        aquatic.nn.Embedding.from_float(nn.EmbeddingBag(ROWS, DIM))
