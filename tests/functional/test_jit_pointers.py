"""The compiled loops' raw-memory intrinsics: an atomic add at any word, and a call of a
C function by its address (a ``"scalar"`` team step yields its core through it)."""

import ctypes
import importlib.util
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="needs numba (pip install aquatic[fast])"
)


@pytest.fixture(scope="module")
def compiled():
    import numba

    from aquatic.functional.jit_pointers import add_at, call_int

    @numba.njit(nogil=True)
    def add_many(words, index, value, times):
        before = np.empty(times, np.int64)
        for k in range(times):
            before[k] = add_at(words, index, value)
        return before

    @numba.njit
    def call(function, times):
        total = 0
        for _ in range(times):
            total += call_int(function)
        return total

    return add_many, call


def test_add_at_returns_the_word_before_and_adds_atomically(compiled):
    add_many, _ = compiled
    words = np.zeros(4, np.int64)
    before = add_many(words, 2, 3, 5)
    assert before.tolist() == [0, 3, 6, 9, 12]
    assert words.tolist() == [0, 0, 15, 0]
    assert add_many(words, 2, 0, 1).tolist() == [15] and words[2] == 15  # a read
    # four threads at once, without the GIL: no increment is lost
    threads = [threading.Thread(target=add_many, args=(words, 1, 1, 100_000)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert words.tolist() == [0, 400_000, 15, 0]


def test_call_int_calls_the_function_at_an_address(compiled):
    _, call = compiled
    calls = []

    @ctypes.CFUNCTYPE(ctypes.c_int)
    def counted():
        calls.append(1)
        return len(calls)

    address = ctypes.cast(counted, ctypes.c_void_p).value
    assert call(address, 3) == 1 + 2 + 3
    assert len(calls) == 3
