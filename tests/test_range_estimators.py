"""Each range estimator against a brute-force reference on small tensors."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import aquatic
from aquatic.functional.qparams import calculate_qparams
from aquatic.functional.ranges import kl_threshold, mse_range
from aquatic.observers import HistogramObserver, MSEObserver, PercentileObserver
from aquatic.qconfig import QConfig
from aquatic.quantizers import UniformQuantizer


def _data(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen)
    x.view(-1)[0] = 9.0  # an outlier
    return x


# -- percentile ---------------------------------------------------------------------------


@pytest.mark.parametrize("percentile", [90.0, 99.0, 100.0])
def test_percentile_per_tensor_matches_numpy(percentile):
    batches = [_data(7, 5, seed=s) for s in range(3)]
    obs = PercentileObserver(percentile=percentile)
    for x in batches:
        obs(x)
    lows = [np.percentile(x.numpy().astype(np.float64), 100 - percentile) for x in batches]
    highs = [np.percentile(x.numpy().astype(np.float64), percentile) for x in batches]
    assert obs.min_val.item() == pytest.approx(np.mean(lows), rel=1e-5)
    assert obs.max_val.item() == pytest.approx(np.mean(highs), rel=1e-5)
    assert int(obs.num_batches) == 3


def test_percentile_per_channel_matches_numpy():
    x = _data(4, 6, 3)
    obs = PercentileObserver(percentile=95.0, ch_axis=1)
    obs(x)
    rows = x.movedim(1, 0).reshape(6, -1).numpy().astype(np.float64)
    expected = np.percentile(rows, [5.0, 95.0], axis=1)
    np.testing.assert_allclose(obs.min_val.numpy(), expected[0], rtol=1e-5)
    np.testing.assert_allclose(obs.max_val.numpy(), expected[1], rtol=1e-5)


def test_percentile_update_returns_true_extrema():
    x = _data(50)
    low, high = PercentileObserver(percentile=90.0).update(x)
    assert low == x.min() and high == x.max()


def test_percentile_bad_argument():
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(percentile=0.0)
    with pytest.raises(TypeError, match="percentile"):
        PercentileObserver(percentile="99")


# -- MSE ----------------------------------------------------------------------------------


def _brute_mse(values, quant_min, quant_max, symmetric, steps):
    """Every candidate clip, one at a time, with torch's own fake quantization."""
    low, high = values.min(), values.max()
    best = None
    for k in range(1, steps + 1):
        f = k / steps
        scale, zero_point = calculate_qparams(low * f, high * f, quant_min, quant_max, symmetric)
        q = torch.fake_quantize_per_tensor_affine(
            values, float(scale), int(zero_point), quant_min, quant_max
        )
        err = float(((q - values) ** 2).sum())
        if best is None or err <= best[0]:  # ties: the larger clip
            best = (err, float(low * f), float(high * f))
    return best[1], best[2]


@pytest.mark.parametrize(
    "symmetric, quant_min, quant_max", [(True, -8, 7), (False, 0, 15), (True, -2, 1)]
)
def test_mse_per_tensor_matches_brute_force(symmetric, quant_min, quant_max):
    x = _data(40)
    obs = MSEObserver(steps=30, quant_min=quant_min, quant_max=quant_max, symmetric=symmetric)
    obs(x)
    low, high = _brute_mse(x, quant_min, quant_max, symmetric, 30)
    assert obs.min_val.item() == pytest.approx(low, rel=1e-6)
    assert obs.max_val.item() == pytest.approx(high, rel=1e-6)
    if quant_max > 1:
        assert high < 9.0  # the outlier is clipped


def test_mse_per_channel_and_batches_match_brute_force():
    batches = [_data(5, 12, seed=s) for s in range(2)]
    obs = MSEObserver(steps=20, quant_min=-8, quant_max=7, ch_axis=0)
    for x in batches:
        obs(x)
    for c in range(5):
        ranges = [_brute_mse(x[c], -8, 7, True, 20) for x in batches]
        assert obs.min_val[c].item() == pytest.approx(np.mean([r[0] for r in ranges]), rel=1e-5)
        assert obs.max_val[c].item() == pytest.approx(np.mean([r[1] for r in ranges]), rel=1e-5)


def test_mse_not_worse_than_minmax():
    x = _data(200)
    low, high = mse_range(x.reshape(1, -1), -8, 7, True)

    def err(lo, hi):
        scale, zp = calculate_qparams(lo, hi, -8, 7, True)
        q = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), -8, 7)
        return float(((q - x) ** 2).sum())

    assert err(low, high) < err(x.min(), x.max())


# -- KL / histogram -----------------------------------------------------------------------


def _brute_kl(hist, width, levels):
    """Migacz 2017's loop, written out bin by bin (the grouping of kl_threshold)."""
    hist = [float(h) for h in hist]
    bins = len(hist)
    best = (math.inf, bins)
    for i in range(levels, bins + 1):
        p = hist[:i]
        p[i - 1] += sum(hist[i:])
        groups = [int(math.floor(b * levels / i)) for b in range(i)]
        q = [0.0] * i
        for g in range(levels):
            members = [b for b in range(i) if groups[b] == g]
            nonzero = [b for b in members if hist[b] > 0]
            total = sum(hist[b] for b in members)
            for b in nonzero:
                q[b] = total / len(nonzero)
        sp, sq = sum(p), sum(q)
        kl = 0.0
        for pb, qb in zip(p, q):
            pb /= sp
            qb = qb / sq if sq > 0 else 0.0
            if pb > 0:
                kl += pb * math.log(pb / (qb if qb > 0 else 1e-10))
        if kl < best[0] - 1e-12:
            best = (kl, i)
    return best[1] * width


@pytest.mark.parametrize("seed", range(4))
def test_kl_threshold_matches_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, 20, (24,), generator=gen).float() * (torch.arange(24.0) < 12)
    hist[-1] = 1.0  # a far outlier
    assert kl_threshold(hist, 0.5, levels=4, chunk=5) == pytest.approx(_brute_kl(hist, 0.5, 4))


def test_histogram_observer_matches_reference():
    x = _data(300).abs() * torch.sign(_data(300, seed=1))
    obs = HistogramObserver(bins=32, quant_min=-4, quant_max=3)
    obs(x)
    width = x.abs().max().item() / 31.5
    index = torch.clamp((x.abs() / width).floor().long(), max=31)
    hist = torch.bincount(index, minlength=32).float()
    assert torch.equal(obs.histogram[0], hist)
    t = _brute_kl(hist, width, levels=4)  # signed data, codes 0..3 above zero: 4 levels
    assert obs.max_val.item() == pytest.approx(min(t, x.max().item()), rel=1e-6)
    assert obs.min_val.item() == pytest.approx(max(-t, x.min().item()), rel=1e-6)


def test_histogram_merges_batches_exactly():
    a = torch.rand(200, generator=torch.Generator().manual_seed(0))  # in [0, 1)
    b = torch.rand(200, generator=torch.Generator().manual_seed(1)) * 3.5
    obs = HistogramObserver(bins=16, quant_min=0, quant_max=3, symmetric=False)
    obs(a)
    obs(b)
    width = obs.bin_width.item()
    assert width == pytest.approx(a.max().item() / 15.5 * 4)  # doubled twice to cover 3.5
    both = torch.cat([a, b])
    index = torch.clamp((both / width).floor().long(), max=15)
    assert torch.equal(obs.histogram[0], torch.bincount(index, minlength=16).float())
    assert obs.min_val.item() == 0.0  # non-negative data: all 4 codes above zero


def test_histogram_per_channel_and_state_dict():
    x = _data(3, 50)
    obs = HistogramObserver(bins=64, ch_axis=0)
    obs(x)
    for c in range(3):
        alone = HistogramObserver(bins=64)
        alone(x[c])
        assert obs.max_val[c] == alone.max_val and obs.min_val[c] == alone.min_val
    loaded = HistogramObserver(bins=64, ch_axis=0)
    loaded.load_state_dict(obs.state_dict())
    assert loaded.initialized and torch.equal(loaded.histogram, obs.histogram)
    assert torch.equal(loaded.calculate_qparams()[0], obs.calculate_qparams()[0])


def test_clipping_observer_state_dict_per_channel():
    obs = MSEObserver(steps=10, ch_axis=0)
    obs(_data(4, 9))
    loaded = MSEObserver(steps=10, ch_axis=0)
    loaded.load_state_dict(obs.state_dict())
    assert torch.equal(loaded.max_val, obs.max_val) and int(loaded.num_batches) == 1


# -- as QConfig observers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "observer",
    [
        PercentileObserver.with_args(percentile=99.0),
        MSEObserver.with_args(steps=20),
        HistogramObserver.with_args(bins=128),
    ],
)
def test_usable_in_a_qconfig(observer):
    qconfig = QConfig(
        activation=UniformQuantizer.with_args(
            bits=8, signed=False, symmetric=False, observer=observer
        ),
        weight=UniformQuantizer.with_args(bits=4, ch_axis=0, observer=observer),
    )
    torch.manual_seed(0)
    model = aquatic.quantize(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)), qconfig)
    batches = [torch.randn(8, 6) for _ in range(2)]
    aquatic.calibrate(model, batches, progress=False)
    weight_obs = model[0].quantizers["weight"].observer
    assert weight_obs.max_val.shape == (4,)
    out = model(batches[0])
    assert out.shape == (8, 2) and torch.isfinite(out).all()
    assert model[0].to_int()["weight"]["codes"].abs().max() <= 8
