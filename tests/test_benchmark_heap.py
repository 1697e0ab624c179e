"""benchmarks/heap.py: the heap settings it compares, and the line benchmarks print."""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NAMES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@pytest.fixture
def heap(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("heap")


def test_settings_set_both_thresholds(heap):
    # One of them alone turns off glibc's adjustment of the other, which then trims or
    # unmaps at its small default: both or the comparison means nothing.
    assert set(heap.SETTINGS) == set(NAMES)
    assert all(int(value) >= 1 << 30 for value in heap.SETTINGS.values())


def test_describe_says_defaults_or_names_the_settings(heap, monkeypatch):
    for name in NAMES + (heap.HUGE_PAGES,):
        monkeypatch.delenv(name, raising=False)
    assert heap.describe().startswith("heap: the C library's defaults, settled once")
    assert "huge pages" not in heap.describe()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    assert heap.describe() == "heap: MALLOC_TRIM_THRESHOLD_=12345"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert heap.describe() == (
        "heap: MALLOC_TRIM_THRESHOLD_=12345; THP_MEM_ALLOC_ENABLE=1 (PyTorch's huge pages)"
    )


def test_environment_adds_or_removes_the_settings(heap, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")
    monkeypatch.setenv("UNRELATED_VARIABLE", "kept")
    default, tuned = heap.environment(False), heap.environment(True)
    assert not set(NAMES) & set(default)
    assert {name: tuned[name] for name in NAMES} == heap.SETTINGS
    assert default["UNRELATED_VARIABLE"] == tuned["UNRELATED_VARIABLE"] == "kept"
