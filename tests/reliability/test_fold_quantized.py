"""fold_batch_norm on a model that is already quantized: the folded layer's quantizers
forget the ranges seen before the fold and re-observe, so the result equals folding first
and quantizing after."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import aquatic
from aquatic.quantizers import LSQQuantizer, UniformQuantizer

QCONFIGS = {
    "int8": aquatic.qconfig.int8,
    "per_channel": aquatic.QConfig(
        weight=UniformQuantizer.with_args(ch_axis=0), activation=UniformQuantizer
    ),
    "lsq": aquatic.QConfig(weight=LSQQuantizer.with_args(ch_axis=0), activation=UniformQuantizer),
}


def float_model(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten())
    bn = model[1]
    with torch.no_grad():  # statistics far from identity, so a stale range is far off
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.01, 0.1)
        bn.weight.uniform_(0.5, 3)
        bn.bias.uniform_(-1, 1)
    return model.eval()


def calibrate(model, x):
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()  # keep the running statistics
    with torch.no_grad():
        model(x)
    return model.eval()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(sorted(QCONFIGS)))
def test_fold_then_reobserve_equals_quantize_after_the_fold(seed, name):
    x = torch.randn(16, 2, 5, 5, generator=torch.Generator().manual_seed(seed))
    quantized = calibrate(
        aquatic.quantize(
            float_model(seed), QCONFIGS[name], fuse_batch_norm=False, quantize_output=True
        ),
        x,
    )
    folded = aquatic.fold_batch_norm(quantized)
    calibrate(folded, x)
    reference = calibrate(
        aquatic.quantize(
            aquatic.fold_batch_norm(float_model(seed)), QCONFIGS[name], quantize_output=True
        ),
        x,
    )
    assert torch.equal(folded(x), reference(x))


def test_the_folded_layer_forgets_its_ranges_and_reobserves_in_eval_mode():
    x = torch.randn(16, 2, 5, 5)
    quantized = calibrate(
        aquatic.quantize(
            float_model(0), aquatic.qconfig.int8, fuse_batch_norm=False, quantize_output=True
        ),
        x,
    )
    folded = aquatic.fold_batch_norm(quantized)
    for field in ("weight", "activation"):
        observer = folded[0].quantizers[field].observer
        assert not observer.initialized
        assert torch.isinf(observer.min_val).all()
    folded(x)  # eval mode: the first batch sets the range
    reference = calibrate(
        aquatic.quantize(
            aquatic.fold_batch_norm(float_model(0)), aquatic.qconfig.int8, quantize_output=True
        ),
        x,
    )
    assert torch.equal(folded(x), reference(x))
    # the original, quantized model is untouched (fold copies by default)
    assert quantized[0].quantizers["activation"].observer.initialized


def test_a_hand_set_scale_is_kept_with_a_warning():
    fixed = UniformQuantizer.with_args(scale=0.05, zero_point=0)
    qconfig = aquatic.QConfig(weight=fixed, activation=UniformQuantizer)
    quantized = calibrate(
        aquatic.quantize(float_model(1), qconfig, fuse_batch_norm=False, quantize_output=True),
        torch.randn(4, 2, 5, 5),
    )
    with pytest.warns(UserWarning, match=r"layer '0' keeps .* weight \(UniformQuantizer\)"):
        folded = aquatic.fold_batch_norm(quantized)
    assert float(folded[0].quantizers["weight"].scale) == pytest.approx(0.05)
    assert not folded[0].quantizers["activation"].observer.initialized


def test_an_unquantized_model_folds_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aquatic.fold_batch_norm(float_model(2))
