"""convert knows a sum over a dimension by its type and never runs the user's modules."""

import pytest
import torch
from torch import nn

import aquatic
import aquatic.nn as qnn
from aquatic.integer import IntegerSum
from aquatic.quantizers import BitShiftDecay, UniformQuantizer

QCONFIG = aquatic.QConfig(
    weight=UniformQuantizer.with_args(bits=8, scale=2**-4),
    alpha=BitShiftDecay.with_args(bits=4),
    threshold=UniformQuantizer.with_args(bits=8, scale=2**-4),
)


class CountingSum(nn.Module):
    """Sums over time, then clamps: a probe on small inputs would take it for a sum."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, input):
        self.calls += 1
        return input.sum(dim=1).clamp(max=1000.0)


def _model(readout):
    torch.manual_seed(0)
    model = nn.Sequential(
        qnn.Linear(6, 4, bias=False, qconfig=QCONFIG),
        qnn.LIF(tau_mem=4.0, threshold=0.5, qconfig=QCONFIG),
        readout,
    )
    with torch.no_grad():
        model(torch.rand(2, 5, 6).round())
    return model


def test_own_summing_module_is_refused_without_running_it():
    readout = CountingSum()
    model = _model(readout)
    calls = readout.calls
    with pytest.raises(
        TypeError, match=r"layer '2' \(CountingSum\) has no integer counterpart.*aquatic\.nn\.Sum"
    ):
        aquatic.convert(model)
    assert readout.calls == calls  # convert ran none of the user's code


@pytest.mark.parametrize("dim", [1, -2])
def test_aquatic_sum_becomes_an_integer_sum(dim):
    model = _model(qnn.Sum(dim=dim))
    integer_model = aquatic.convert(model)
    assert isinstance(integer_model.layers[-1], IntegerSum)
    x = torch.rand(3, 7, 6).round()
    with torch.no_grad():
        out = integer_model.dequantize_output(integer_model(integer_model.quantize_input(x)))
        assert torch.equal(out, model(x))


def test_sum_dim_must_be_an_int():
    with pytest.raises(TypeError, match="dim must be an int"):
        qnn.Sum(dim=1.0)
