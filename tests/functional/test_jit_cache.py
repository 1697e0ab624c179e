"""The compiled loops' disk cache is dropped when any code that they compile changes."""

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from aquatic.functional import jit_cache

FUNCTIONAL = Path(jit_cache.__file__).parent


@pytest.fixture
def sources(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for name in jit_cache.SOURCES:
        shutil.copy(FUNCTIONAL / name, folder / name)
    return folder


def _cache_files(cache):
    names = [
        "jit_bridges._backward_32-136.py311.nbi",
        "jit_bridges._backward_32-136.py311.1.nbc",
        "neurons_jit_kernels.forward-125.py311.nbi",
        "neurons_jit_backward_kernels.cpython-311.pyc",  # Python's own: kept
        "user_module.loop-3.py311.nbi",  # another module's loop: kept
    ]
    cache.mkdir(exist_ok=True)
    for name in names:
        (cache / name).write_text("x")
    return names


def test_a_changed_source_drops_only_the_cached_loops(sources, tmp_path):
    cache = tmp_path / "cache"
    _cache_files(cache)
    assert jit_cache.refresh(cache, sources)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [
            jit_cache.STAMP,
            "neurons_jit_backward_kernels.cpython-311.pyc",
            "user_module.loop-3.py311.nbi",
        ]
    )
    # the same sources: the loops compiled since stay
    names = _cache_files(cache)
    assert not jit_cache.refresh(cache, sources)
    assert all((cache / name).exists() for name in names)
    # a helper that the loops inline changes: they go
    slopes = sources / "neurons_jit_slopes.py"
    slopes.write_text(slopes.read_text() + "\n# changed\n")
    assert jit_cache.refresh(cache, sources)
    assert not (cache / "jit_bridges._backward_32-136.py311.nbi").exists()
    assert (cache / "user_module.loop-3.py311.nbi").exists()


@pytest.mark.parametrize("name", jit_cache.SOURCES)
def test_the_fingerprint_covers_every_source(sources, name):
    before = jit_cache.fingerprint(sources)
    path = sources / name
    path.write_bytes(path.read_bytes().replace(b"\n", b"\n ", 1))
    assert jit_cache.fingerprint(sources) != before


def test_a_cache_that_cannot_be_cleaned_warns(sources, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="delete its"):
        assert not jit_cache.refresh(blocked, sources)


def test_the_lists_name_every_compiled_module():
    # Every module with Numba code is a source, and so is every module whose plain
    # functions another compiles (inline(module.function)); every module with loops
    # cached on disk is in CACHED.
    decorated = re.compile(r"^\s*@(inline|jit|intrinsic|overload|_inline)\b", re.M)
    inlined = re.compile(r"inline\((\w+)\.")
    cached = re.compile(r"^\s*@jit\b|cfunc\(.*cache=True", re.M)
    seen = set()
    for path in FUNCTIONAL.glob("*.py"):
        text = path.read_text()
        if decorated.search(text):
            assert path.name in jit_cache.SOURCES, path.name
            seen.add(path.name)
        for module in inlined.findall(text):
            assert f"{module}.py" in jit_cache.SOURCES, module
            seen.add(f"{module}.py")
        if cached.search(text):
            assert path.stem in jit_cache.CACHED, path.name
    assert set(jit_cache.CACHED) <= {name[:-3] for name in seen}
    # and the modules whose constants the loops compile in (the slopes' from
    # neurons_jit_backward, the exponential's floors, the observers' merge rules, the
    # compile options, the mask kinds)
    constants = {"neurons_jit_backward.py", "exp_floor.py", "fake_quant_rules.py"}
    constants |= {"neurons_jit_options.py", "fake_quant_outputs.py"}
    assert seen | constants == set(jit_cache.SOURCES)


def test_the_package_cache_carries_the_current_fingerprint():
    pytest.importorskip("numba")
    from aquatic.functional import neurons_jit_kernels

    stamp = Path(neurons_jit_kernels.forward._cache.cache_path) / jit_cache.STAMP
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stamp.read_text().strip() == jit_cache.fingerprint()


def test_importing_the_loops_with_numba_compiling_nothing():
    # NUMBA_DISABLE_JIT=1 leaves plain Python functions: no cache to refresh, no error
    pytest.importorskip("numba")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    code = "import aquatic.functional.neurons_jit_kernels as k; print(type(k.forward).__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "function"
