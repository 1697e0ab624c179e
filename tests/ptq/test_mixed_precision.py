import itertools
import math

import pytest
import torch
from torch import nn

import aquatic
from aquatic.ptq import BitOps, WeightBytes, allocate


def _mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)
    )
    with torch.no_grad():
        # Layer 2 fragile: an outlier weight on a dead input sets each row's scale, so
        # below 8 bits its other weights round to 0.
        model[0].bias[0] = -100.0
        model[2].weight[:, 0] = 3.0
    return model


def _batches(n=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 16, generator=gen) for _ in range(n)]


def _bytes(model, bits):
    layers = dict(model.named_modules())
    return sum(math.ceil(layers[name].weight.numel() * b / 8) for name, b in bits.items())


def test_never_over_budget_and_cost_exact():
    model = _mlp()
    smallest = _bytes(model, {"0": 2, "2": 2, "4": 2})
    largest = _bytes(model, {"0": 8, "2": 8, "4": 8})
    table = None
    for budget in range(smallest, largest + 1, (largest - smallest) // 4):
        mapping = aquatic.mixed_precision(model, _batches(), budget=budget, progress=False)
        assert mapping.cost == _bytes(model, mapping.bits) <= budget
        table = mapping.table
    full = aquatic.mixed_precision(model, _batches(), budget=largest, progress=False)
    assert full.bits == {"0": 8, "2": 8, "4": 8} and full.cost == largest
    assert table is not None and len(table) == 9


def test_budget_exactly_the_cost_of_an_allocation():
    model = _mlp()
    budget = _bytes(model, {"0": 2, "2": 8, "4": 2})
    mapping = aquatic.mixed_precision(model, _batches(), budget=WeightBytes(budget), progress=False)
    assert mapping.bits == {"0": 2, "2": 8, "4": 2} and mapping.cost == budget  # the fragile layer
    table = mapping.table.as_dict()
    # the best under the budget, checked against every allocation
    best = min(
        (sum(table[n][b] for n, b in zip("024", bits)), bits)
        for bits in itertools.product((2, 4, 8), repeat=3)
        if _bytes(model, dict(zip("024", bits))) <= budget
    )
    assert best[1] == (2, 8, 2)


def test_mapping_goes_to_quantize():
    model = _mlp()
    mapping = aquatic.mixed_precision(model, _batches(), budget=700, progress=False)
    qmodel = aquatic.quantize(model, mapping)
    for name, bits in mapping.bits.items():
        layer = dict(qmodel.named_modules())[name]
        assert isinstance(layer, aquatic.nn.Linear)
        assert layer.quantizers["weight"].bits == bits
    aquatic.calibrate(qmodel, _batches(), progress=False)
    codes = qmodel[0].to_int()["weight"]["codes"]
    assert codes.abs().max() <= 2 ** (mapping.bits["0"] - 1) - 1


def test_bit_operations_budget():
    model = _mlp()
    macs = {"0": 16 * 32, "2": 32 * 32, "4": 32 * 8}
    limit = sum(m * 4 * 8 for m in macs.values())  # uniform 4-bit weights, 8-bit activations
    mapping = aquatic.mixed_precision(model, _batches(), budget=BitOps(limit), progress=False)
    assert mapping.cost == sum(macs[n] * b * 8 for n, b in mapping.bits.items()) <= limit


def test_deterministic():
    a = aquatic.mixed_precision(_mlp(), _batches(), budget=600, progress=False)
    b = aquatic.mixed_precision(_mlp(), _batches(), budget=600, progress=False)
    assert a.bits == b.bits and a.cost == b.cost


@pytest.mark.parametrize("exact", [True, False])
def test_allocate_against_brute_force(exact, monkeypatch):
    if not exact:
        monkeypatch.setattr(aquatic.ptq.allocation, "EXACT_LIMIT", 0)  # the greedy rule
    gen = torch.Generator().manual_seed(0)
    names = "abcd"
    change = {
        n: dict(zip((2, 4, 8), sorted(torch.rand(3, generator=gen).tolist(), reverse=True)))
        for n in names
    }
    sizes = {"a": 10, "b": 30, "c": 7, "d": 50}
    cost = {n: {b: sizes[n] * b for b in (2, 4, 8)} for n in names}
    for limit in range(sum(sizes.values()) * 2, sum(sizes.values()) * 8 + 1, 3):
        choice = allocate(change, cost, limit)
        spent = sum(cost[n][b] for n, b in choice.items())
        assert spent <= limit
        if exact:
            value = sum(change[n][b] for n, b in choice.items())
            best = min(
                sum(change[n][b] for n, b in zip(names, bits))
                for bits in itertools.product((2, 4, 8), repeat=4)
                if sum(cost[n][b] for n, b in zip(names, bits)) <= limit
            )
            assert value == pytest.approx(best)


def test_greedy_takes_the_best_rate(monkeypatch):
    monkeypatch.setattr(aquatic.ptq.allocation, "EXACT_LIMIT", 0)
    change = {"a": {2: 4.0, 4: 1.0, 8: 0.0}, "b": {2: 2.0, 4: 0.1, 8: 0.0}}
    cost = {"a": {2: 10, 4: 20, 8: 40}, "b": {2: 10, 4: 20, 8: 40}}
    assert allocate(change, cost, 30) == {"a": 4, "b": 2}  # 3.0 per 10 beats 1.9 per 10
    assert allocate(change, cost, 80) == {"a": 8, "b": 8}


def test_bad_input():
    model = _mlp()
    smallest = _bytes(model, {"0": 2, "2": 2, "4": 2})
    with pytest.raises(ValueError, match="below the smallest allocation"):
        aquatic.mixed_precision(model, _batches(), budget=smallest - 1, progress=False)
    with pytest.raises(ValueError, match="unknown candidate 17"):
        aquatic.mixed_precision(model, _batches(), budget=10**6, candidates=(4, 17), progress=False)
    with pytest.raises(TypeError, match="bit widths"):
        aquatic.mixed_precision(
            model, _batches(), budget=10**6, candidates=(4, "int8"), progress=False
        )
    with pytest.raises(ValueError, match="no batches"):
        aquatic.mixed_precision(model, [], budget=10**6, progress=False)
    with pytest.raises(ValueError, match="positive int"):
        aquatic.mixed_precision(model, _batches(), budget=0, progress=False)
    with pytest.raises(TypeError, match="budget must be"):
        aquatic.mixed_precision(model, _batches(), budget="256KB", progress=False)


def test_bias_correction_reaches_the_analysis():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    batches = [torch.randn(32, 16, generator=torch.Generator().manual_seed(1))]
    mapping = aquatic.mixed_precision(
        model, batches, budget=100, progress=False, bias_correction=True
    )
    table = aquatic.sensitivity(model, (2, 4, 8), batches, progress=False, bias_correction=True)
    assert mapping.table.as_dict() == table.as_dict()
    assert mapping.cost <= 100
