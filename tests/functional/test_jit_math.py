"""The compiled loops' exponential against numpy's in long double precision."""

import importlib.util

import numpy as np
import pytest

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
    ours = _apply(values).astype(np.longdouble)
    exact = np.exp(values.astype(np.longdouble))
    normal = exact >= np.finfo(dtype).tiny
    assert normal.mean() > 0.5
    error = np.abs(ours[normal] - exact[normal]) / exact[normal]
    assert error.max() < np.finfo(dtype).eps  # under one unit in the last place
    # below the smallest normal result: 0 (the C library's subnormal numbers)
    assert np.all(ours[~normal] == 0) and (~normal).sum() > 1000


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
