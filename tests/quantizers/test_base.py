"""Quantizer.forward is the one template: type check, observe, fake-quantize."""

import importlib
import pkgutil

import pytest
import torch

import aquatic
from aquatic.quantizers import Quantizer


class Recorder(Quantizer):
    """Records what the template calls; ``observe`` returns ``self.returns``."""

    def __init__(self, returns=None, observed=False):
        super().__init__()
        self.returns, self._observed, self.calls = returns, observed, []

    @property
    def observed(self):
        return self._observed

    def observe(self, input):
        self.calls.append(("observe", input.requires_grad))
        return self.returns

    def fake_quantize(self, input, *extrema):
        self.calls.append(("fake_quantize", extrema))
        return input * 2


class OneArgument(Quantizer):
    """A subclass written against the one-argument fake_quantize."""

    def fake_quantize(self, input):
        return input + 1


def test_observe_gets_a_detached_input_then_fake_quantize_runs():
    q = Recorder()
    x = torch.ones(3, requires_grad=True)
    assert torch.equal(q(x), x * 2)
    assert q.calls == [("observe", False), ("fake_quantize", ())]


def test_extrema_returned_by_observe_reach_fake_quantize():
    q = Recorder(returns=(-1.0, 1.0))
    q(torch.ones(3))
    assert q.calls[-1] == ("fake_quantize", ((-1.0, 1.0),))


def test_a_one_argument_fake_quantize_still_works():
    assert torch.equal(OneArgument()(torch.zeros(2)), torch.ones(2))


@pytest.mark.parametrize("observed,expected", [(False, 1), (True, 0)])
def test_eval_mode_observes_only_until_observed(observed, expected):
    q = Recorder(observed=observed).eval()
    q(torch.ones(2))
    assert [c[0] for c in q.calls].count("observe") == expected
    q.train()(torch.ones(2))
    assert [c[0] for c in q.calls].count("observe") == expected + 1


def test_switches():
    q = Recorder()
    q.observer_enabled = False
    q(torch.ones(2))
    assert [c[0] for c in q.calls] == ["fake_quantize"]
    q.fake_quant_enabled = False
    x = torch.ones(2)
    assert q(x) is x


def test_non_float_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"Recorder quantizes floating-point.*\.float\(\)"):
        Recorder()(torch.arange(3))


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_no_aquatic_quantizer_overrides_forward():
    for info in pkgutil.walk_packages(aquatic.__path__, "aquatic."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # a module for an optional dependency that is missing
            pass
    mine = [c for c in _subclasses(Quantizer) if c.__module__.startswith("aquatic.")]
    assert len(mine) >= 10  # the walk found the quantizers
    assert [c.__qualname__ for c in mine if "forward" in vars(c)] == []
