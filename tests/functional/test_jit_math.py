"""The compiled loops' exponential against numpy's in long double precision."""

import importlib.util

import numpy as np
import pytest

from aquatic.functional.exp_floor import FLOOR

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="needs numba (pip install aquatic[fast])"
)


def _apply(values: np.ndarray) -> np.ndarray:
    import numba

    from aquatic.functional.jit_math import exp_nonpositive

    @numba.njit
    def loop(x, out):
        for k in range(x.size):
            out[k] = exp_nonpositive(x[k])

    out = np.empty_like(values)
    loop(values, out)
    return out


@pytest.mark.parametrize(
    "dtype, low", [(np.float32, -110.0), (np.float64, -760.0)], ids=["float32", "float64"]
)
def test_within_one_unit_in_the_last_place(dtype, low):
    rng = np.random.default_rng(0)
    # dense near 0 (the surrogate's peak), then the whole range down past underflow
    values = np.concatenate(
        [-rng.exponential(1.0, 200_000), rng.uniform(low, 0.0, 200_000)]
    ).astype(dtype)
    values = np.concatenate([values, _around(FLOOR[dtype])])
    ours = _apply(values).astype(np.longdouble)
    exact = np.exp(values.astype(np.longdouble))
    kept = values > FLOOR[dtype]
    assert kept.mean() > 0.5
    assert np.all(exact[kept] >= 3 * np.finfo(dtype).tiny)  # normal, with a margin
    error = np.abs(ours[kept] - exact[kept]) / exact[kept]
    assert error.max() < np.finfo(dtype).eps  # under one unit in the last place
    # at and under the floor: 0, the PyTorch loops' rule
    assert np.all(ours[~kept] == 0) and (~kept).sum() > 1000


def _around(floor):
    """The floor and the 20 arguments of its dtype on either side of it."""
    values, up, down = [floor], floor, floor
    for _ in range(20):
        up, down = np.nextafter(up, floor.dtype.type(0)), np.nextafter(down, -np.inf)
        values += [up, down]
    return np.array(values, dtype=floor.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_torch_slopes_follow_the_same_rule(dtype):
    """``SingleExponential``'s PyTorch slopes: 0 exactly where the compiled ones are,
    and within an ulp of them elsewhere."""
    import torch

    from aquatic.functional.surrogate import SingleExponential

    rng = np.random.default_rng(1)
    x = np.concatenate([_around(FLOOR[dtype]), rng.uniform(-900.0, 0.0, 100_000)])
    x = x.astype(dtype)
    compiled = _apply(x)
    slopes = SingleExponential(width=1.0).derivative(torch.from_numpy(x.copy())).numpy()
    assert np.array_equal(compiled == 0, slopes == 0) and (slopes == 0).sum() > 1000
    kept = slopes != 0
    error = np.abs(slopes[kept] - compiled[kept]) / compiled[kept]
    assert error.max() <= 2 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    values = np.array([0.0, -0.0, -np.inf, np.nan, 1e-30, 0.5, np.inf, -1e-45], dtype)
    out = _apply(values)
    assert out[0] == 1 and out[1] == 1 and out[2] == 0
    assert np.isnan(out[3])
    assert np.all(np.isnan(out[4:7]))  # outside its domain: nan, never a wrong number
    assert out[7] == 1


def test_python_call_names_the_alternative():
    from aquatic.functional.jit_math import exp_nonpositive

    with pytest.raises(TypeError, match="torch.exp"):
        exp_nonpositive(-1.0)
