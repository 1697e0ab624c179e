"""aquatic.functional.quantized_attention against torch's scaled dot-product attention."""

import pytest
import torch
import torch.nn.functional as F

from aquatic.functional import additive_mask, quantized_attention


def test_without_quantizers_it_is_scaled_dot_product_attention():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 3, 6, generator=generator) for _ in range(3))
    keep = torch.rand(4, 3, 3, generator=generator) > 0.3
    keep[..., 0] = True
    out, weights = quantized_attention(q, k, v, additive_mask(~keep, q.dtype, "mask"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.all(weights[~keep] == 0) and torch.allclose(weights.sum(-1), torch.ones(4, 3))


def test_each_quantizer_applies_where_documented():
    seen = {}

    def spy(name):
        def quantize(x):
            seen[name] = x.shape
            return x.round()

        return quantize

    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    out, weights = quantized_attention(
        q, k, v, None, 0.0, False, spy("q"), spy("k"), spy("v"), spy("weights")
    )
    assert seen == {"q": (2, 3, 4), "k": (2, 5, 4), "v": (2, 5, 4), "weights": (2, 3, 5)}
    assert torch.equal(weights, weights.round())  # the weights that multiply v
    assert torch.allclose(out, weights @ v.round())


def test_masks_of_other_dtypes_are_refused():
    with pytest.raises(TypeError, match="bool or floating-point"):
        additive_mask(torch.zeros(2, dtype=torch.int64), torch.float32, "attn_mask")
    assert torch.equal(additive_mask(torch.tensor([0.5]), torch.float32, "m"), torch.tensor([0.5]))
