"""Observers re-check a loaded range: NaN, an infinite end, min_val > max_val and
mismatched shapes are refused (naming the key) before anything is copied; unobserved
and finite ranges load."""

import copy
import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aquatic.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PercentileObserver,
)
from aquatic.quantizers import UniformQuantizer

OBSERVERS = [MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, HistogramObserver]


@functools.lru_cache(maxsize=None)
def observed(cls):
    """One observer of each class that has seen data (the histogram's is slow to build)."""
    observer = cls()
    observer(torch.tensor([-1.0, 2.0]))
    return observer


def is_valid(low, high):
    """The rule, written out: unobserved, or a finite range in order."""
    if low == math.inf and high == -math.inf:
        return True
    return math.isfinite(low) and math.isfinite(high) and low <= high


ENDS = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf]))


@pytest.mark.parametrize("cls", OBSERVERS, ids=lambda c: c.__name__)
@settings(max_examples=25)
@given(low=ENDS, high=ENDS)
def test_loaded_range_is_checked(cls, low, high):
    low, high = float(torch.tensor(low)), float(torch.tensor(high))  # as stored (float32)
    observer = copy.deepcopy(observed(cls))
    before = (observer.min_val.clone(), observer.max_val.clone())
    state = observer.state_dict()
    state["min_val"], state["max_val"] = torch.tensor(low), torch.tensor(high)
    if is_valid(low, high):
        observer.load_state_dict(state)
        assert torch.equal(observer.min_val, torch.tensor(low))
        assert observer.initialized == math.isfinite(low)
    else:
        with pytest.raises(ValueError, match=r"cannot load state_dict\['min_val'\]"):
            observer.load_state_dict(state)
        # refused before anything was copied
        assert torch.equal(observer.min_val, before[0]) and torch.equal(observer.max_val, before[1])


@pytest.mark.parametrize(
    "low, high, reason",
    [(math.nan, 1.0, "NaN"), (3.0, 1.0, "min_val > max_val"), (-math.inf, 1.0, "an infinite end")],
)
def test_per_channel_range_in_a_quantizer_names_key_and_channel(low, high, reason):
    quantizer = UniformQuantizer(bits=8, ch_axis=0)
    quantizer(torch.randn(3, 5))
    state = quantizer.state_dict()
    state["observer.min_val"] = state["observer.min_val"].clone()
    state["observer.max_val"] = state["observer.max_val"].clone()
    state["observer.min_val"][2], state["observer.max_val"][2] = low, high
    fresh = UniformQuantizer(bits=8, ch_axis=0)
    with pytest.raises(
        ValueError, match=rf"'observer.min_val'.* at \[2\]: the range holds {reason}"
    ):
        fresh.load_state_dict(state)


def test_mismatched_shapes_are_refused():
    observer = MinMaxObserver(ch_axis=0)
    state = {"min_val": torch.zeros(3), "max_val": torch.ones(4)}
    with pytest.raises(ValueError, match="of shape \\(3,\\).*of shape \\(4,\\)"):
        observer.load_state_dict(state)
