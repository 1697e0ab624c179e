import os

# torch.compile in tests compiles in this process: no pool of compile workers to start
# (or to wait for) on a loaded 2-core machine.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest
import torch
from hypothesis import settings

# Deterministic property tests: the same examples on every run and every machine.
settings.register_profile(
    "aquatic", derandomize=True, deadline=None, max_examples=60, database=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "aquatic"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def set_threads():
    """``torch.set_num_threads`` for one test: the count found is restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def record_calls(monkeypatch):
    """``record(owner, name)``: for one test, ``owner.name`` (a module's function) calls
    through a wrapper that appends each result to the list that ``record`` returns."""

    def record(owner, name):
        results = []
        original = getattr(owner, name)

        def recorded(*args, **kwargs):
            results.append(original(*args, **kwargs))
            return results[-1]

        monkeypatch.setattr(owner, name, recorded)
        return results

    return record
