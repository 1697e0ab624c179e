"""A team call's descriptor is kept per entry points and shape, and refuses to run an
entry point it has no address for."""

import torch

from aquatic.functional import jit_calls


def entries_at(address):
    return lambda name: address


def test_calls_of_other_entry_points_or_shapes_are_not_shared():
    x, y = torch.zeros(8), torch.zeros(8)
    first, second = entries_at(0), entries_at(0)
    call = jit_calls.call_for(first, 14, x, y, 1, 8, 4, 0)
    assert jit_calls.call_for(first, 14, y, x, 1, 8, 4, 0) is call  # kept
    assert jit_calls.call_for(second, 14, x, y, 1, 8, 4, 0) is not call  # other entries
    assert jit_calls.call_for(first, 15, x, y, 1, 8, 4, 0) is not call  # other layout
    assert jit_calls.call_for(first, 14, x, y, 1, 8, 2, 0) is not call  # other shares
    assert call.words[2] == y.data_ptr() and call.words[3] == x.data_ptr()


def test_a_descriptor_holds_its_layout():
    call = jit_calls.Call(entries_at(0), 14, rows=3, cols=5, parts=2, extra=4)
    assert call.status.shape == (2,) and call.counts.shape == (3,)  # counts: >= 3 words
    assert call.constants.shape == (jit_calls.CONSTANTS,)
    base = call.block.ctypes.data
    assert call.words[9:14].tolist() == [
        3, 5, base + 8 * 14, base + 8 * (14 + 3), jit_calls.SCHED_YIELD,
    ]  # fmt: skip
    low = call.scratch.data_ptr()
    assert call.words[7:9].tolist() == [low, low + 4 * 4]


def test_an_entry_point_without_an_address_does_not_run():
    call = jit_calls.Call(entries_at(0), 14, rows=1, cols=4, parts=2, extra=0)
    assert call.run("scalar", 2) is False
    assert call.words[0] == 0  # no share ran
