"""benchmarks/ptq_curve.py (the accuracy-vs-size plot of the docs) runs and keeps budgets."""

import importlib
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_curve_script_draws_and_mixed_stays_within_its_budgets(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    curve = importlib.import_module("ptq_curve")
    out = tmp_path / "curve.png"
    args = ["--seeds", "1", "--epochs", "3", "--qat-epochs", "1", "--uniform", "2", "4"]
    curves = curve.main(args + ["--average-bits", "2.0", "3.0", "--out", str(out)])
    assert out.read_bytes()[:4] == b"\x89PNG"
    weights = 64 * 128 + 128 * 128 + 128 * 10  # the 64-128-128-10 perceptron
    assert [size for size, _, _ in curves["uniform"]] == [weights * 2 // 8, weights * 4 // 8]
    sizes = [size for size, _, _ in curves["mixed"]]
    assert sizes[0] <= weights * 2 // 8 and sizes[1] <= weights * 3 // 8
    for _, before, after in curves["uniform"] + curves["mixed"]:
        assert 10.0 < before <= 100.0 and 10.0 < after <= 100.0  # far above chance
