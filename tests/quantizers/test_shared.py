import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from aquatic.functional.qparams import round_to_power_of_two
from aquatic.quantizers import (
    ScaleGroup,
    SharedScaleQuantizer,
    UniformQuantizer,
    link_shared_scales,
)

finite = st.floats(-50, 50, allow_nan=False, width=32)
values = st.lists(finite, min_size=1, max_size=30).map(torch.tensor)


def shared_scale_reference(tensors_and_qmax, power_of_two=False):
    """s = max_i max|x_i| / qmax_i, at least float32 eps, optionally 2**ceil(log2 s)."""
    scale = max(x.abs().max().item() / qmax for x, qmax in tensors_and_qmax)
    scale = torch.tensor(max(scale, torch.finfo(torch.float32).eps), dtype=torch.float32)
    return torch.exp2(torch.ceil(torch.log2(scale))) if power_of_two else scale


def fake_quant_reference(x, scale, qmin, qmax, upstream):
    v = torch.round(x * (1.0 / scale))
    out = torch.clamp(v, qmin, qmax) * scale
    grad = torch.where((v >= qmin) & (v <= qmax), upstream, torch.zeros_like(x))
    return out, grad


def linked(*quantizers):
    link_shared_scales(quantizers)
    return quantizers


@pytest.mark.parametrize("power_of_two", [False, True])
@given(w=values, t=values)
def test_forward_gradient_and_to_int_match_reference(power_of_two, w, t):
    weight, threshold = linked(
        SharedScaleQuantizer(bits=8, group="g", power_of_two=power_of_two),
        SharedScaleQuantizer(bits=16, group="g", power_of_two=power_of_two),
    )
    w = w.clone().requires_grad_()
    weight(w)  # observe w first, so both ranges are in when we quantize below
    threshold(t)
    scale = shared_scale_reference([(w.detach(), 127), (t, 32767)], power_of_two)
    assert torch.equal(weight.qparams()["scale"], scale)
    assert torch.equal(threshold.qparams()["scale"], scale)

    y = weight(w)
    upstream = torch.linspace(-1.0, 1.0, w.numel())
    y.backward(upstream)
    out, grad = fake_quant_reference(w.detach(), scale, -128, 127, upstream)
    assert torch.equal(y.detach(), out)
    assert torch.equal(w.grad, grad)

    codes = weight.to_int(w)
    assert codes.dtype == torch.int8
    assert torch.equal(codes.float() * scale, y.detach())
    t_codes = threshold.to_int(t)
    assert t_codes.dtype == torch.int16
    assert torch.equal(t_codes.float() * scale, threshold(t))


@given(values)
def test_power_of_two_scale_rounds_up(x):
    plain = SharedScaleQuantizer(group=ScaleGroup())
    pow2 = SharedScaleQuantizer(group=ScaleGroup(power_of_two=True))
    plain(x)
    pow2(x)
    s, p = plain.qparams()["scale"].item(), pow2.qparams()["scale"].item()
    assert s <= p < 2 * s
    assert torch.log2(torch.tensor(p)).item().is_integer()


@given(values)
def test_on_grid_in_range_and_idempotent(x):
    q = SharedScaleQuantizer(bits=4, group="g", power_of_two=True)
    y = q(x)
    scale = q.qparams()["scale"]
    codes = torch.round(y / scale)
    assert torch.equal(codes * scale, y)
    assert codes.min() >= -8 and codes.max() <= 7
    q.eval()  # keep the observed range: an eval forward of y must change nothing
    assert torch.equal(q(y), y)


def test_qparams_follow_the_group_not_the_member():
    weight, bias = linked(SharedScaleQuantizer(group="layer"), SharedScaleQuantizer(group="layer"))
    weight(torch.tensor([1.27]))
    assert weight.qparams()["scale"].item() == pytest.approx(0.01)
    bias(torch.tensor([-2.54]))  # widens the shared range
    for member in (weight, bias):
        params = member.qparams()
        assert params["scale"].item() == pytest.approx(0.02)
        assert params["zero_point"].item() == 0 and params["zero_point"].dtype == torch.int32
        assert (params["quant_min"], params["quant_max"], params["ch_axis"]) == (-128, 127, None)
    assert weight.to_int(torch.tensor([1.27])).item() == 64  # 63.5 rounds half to even


def test_power_of_two_members_of_a_named_group_must_agree():
    a = SharedScaleQuantizer(group="layer", power_of_two=True)
    b = SharedScaleQuantizer(group="layer")
    c = SharedScaleQuantizer(group="other")
    d = SharedScaleQuantizer(group="other")
    with pytest.raises(ValueError, match="'layer'.*power_of_two"):
        link_shared_scales([c, d, a, b])
    # Nothing was linked, not even the group that agreed.
    assert a.group is not b.group and c.group is not d.group
    assert len(c.group.members) == 1


def test_power_of_two_with_a_group_object():
    with pytest.raises(ValueError, match=r"ScaleGroup\(power_of_two=True\)"):
        SharedScaleQuantizer(group=ScaleGroup(), power_of_two=True)
    group = ScaleGroup(power_of_two=True)
    member = SharedScaleQuantizer(group=group)  # the group's setting applies
    assert member.power_of_two
    member(torch.tensor([0.3]))
    assert member.qparams()["scale"].item() == 2**-8  # 0.3 / 127 rounded up


def test_link_keeps_group_objects_and_skips_other_quantizers():
    group = ScaleGroup()
    own = SharedScaleQuantizer(group=group)
    named = SharedScaleQuantizer(group="layer")
    other = UniformQuantizer()
    link_shared_scales([own, named, other])
    assert own.group is group and named.group is not group
    assert group.members == [own]


def test_groups_across_layers():
    group = ScaleGroup()
    layers = [SharedScaleQuantizer(group=group) for _ in range(3)]
    for i, q in enumerate(layers):
        q(torch.tensor([float(i + 1)]))
    for q in layers:
        assert q.qparams()["scale"].item() == pytest.approx(3 / 127)


def test_scale_before_any_data_raises():
    q = SharedScaleQuantizer()
    with pytest.raises(RuntimeError, match="forward pass"):
        q.qparams()


def test_state_dict_round_trip():
    def build():
        weight, bias = linked(
            SharedScaleQuantizer(group="layer", power_of_two=True),
            SharedScaleQuantizer(bits=16, group="layer", power_of_two=True),
        )
        return nn.ModuleDict({"weight": weight, "bias": bias})

    trained = build()
    w, b = torch.randn(10), torch.randn(3) * 50
    trained["weight"](w)
    trained["bias"](b)
    fresh = build()
    fresh.load_state_dict(trained.state_dict())
    for name in ("weight", "bias"):
        assert torch.equal(fresh[name].qparams()["scale"], trained[name].qparams()["scale"])
    fresh.eval()
    trained.eval()
    assert torch.equal(fresh["weight"](w), trained["weight"](w))


def test_repr():
    q = SharedScaleQuantizer(bits=4, group="layer", power_of_two=True, rounding="floor")
    assert q.extra_repr() == "bits=4, group='layer', rounding='floor', power_of_two=True"
    assert repr(q).startswith("SharedScaleQuantizer(\n  bits=4, group='layer'")
    grouped = SharedScaleQuantizer(group=ScaleGroup())
    assert grouped.extra_repr() == "bits=8, group=ScaleGroup(members=1, power_of_two=False)"


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"group": 3}, TypeError, "ScaleGroup or a name"),
        ({"rounding": "up"}, ValueError, "'up'"),
        ({"bits": 1}, ValueError, "signed=False"),
        ({"bits": 17}, ValueError, "bits=17"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SharedScaleQuantizer(**kwargs)


def _fresh_scale(group):
    """The group's scale computed from scratch (no member's or group's kept value)."""
    scales = [m.observer.calculate_qparams()[0] for m in group.members if m.observer.initialized]
    scale = torch.stack(scales).amax()
    return round_to_power_of_two(scale) if group.power_of_two else scale


def test_the_kept_scale_follows_every_change_of_a_range():
    # The group keeps its scale while no member's range changes: every way a range
    # changes gives the scale computed from scratch.
    group = ScaleGroup()
    w, b, t = (SharedScaleQuantizer(bits=bits, group=group) for bits in (8, 8, 16))
    w(torch.tensor([-2.54, 1.0])), b(torch.tensor([0.1])), t(torch.tensor([3.0]))
    first = group.scale()
    assert torch.equal(first, _fresh_scale(group))
    w(torch.tensor([0.5]))  # inside the range: no change
    assert torch.equal(group.scale(), first)
    w(torch.tensor([-25.4]))  # the range grows (a forward pass in training)
    assert torch.equal(group.scale(), _fresh_scale(group)) and group.scale() > first
    t.observer.max_val.fill_(1e4)  # written in place
    assert torch.equal(group.scale(), _fresh_scale(group))
    w.load_state_dict(
        {"observer.min_val": torch.tensor(-0.01), "observer.max_val": torch.tensor(0.01)}
    )
    t.observer.min_val = torch.tensor(-1.0)  # replaced
    t.observer.max_val = torch.tensor(1.0)
    assert torch.equal(group.scale(), _fresh_scale(group))
    late = SharedScaleQuantizer(bits=4, group=group)  # a member joins
    late(torch.tensor([7.0]))
    assert torch.equal(group.scale(), _fresh_scale(group))
    del late  # and leaves
    assert torch.equal(group.scale(), _fresh_scale(group))
    group.power_of_two = True
    assert torch.equal(group.scale(), _fresh_scale(group))


def test_each_call_returns_a_tensor_of_its_own():
    group = ScaleGroup()
    w = SharedScaleQuantizer(bits=8, group=group)
    w(torch.tensor([-1.27, 1.0]))
    scale = group.scale()
    scale.mul_(100)  # a caller's copy
    assert torch.equal(group.scale(), _fresh_scale(group))
    assert torch.equal(w.qparams()["scale"], _fresh_scale(group))


def test_a_group_built_under_inference_mode_keeps_nothing():
    # Tensors made under inference_mode keep no version: the scale is always computed.
    with torch.inference_mode():
        group = ScaleGroup()
        w, t = SharedScaleQuantizer(bits=8, group=group), SharedScaleQuantizer(bits=16, group=group)
        w(torch.tensor([-2.54, 1.0])), t(torch.tensor([3.0]))
        assert torch.equal(group.scale(), torch.tensor(0.02))
        t.observer.max_val.fill_(327.67)
        assert torch.equal(group.scale(), _fresh_scale(group))


def test_copies_and_pickles_start_without_the_kept_scale():
    import copy
    import pickle

    group = ScaleGroup()
    w = SharedScaleQuantizer(bits=8, group=group)
    w(torch.tensor([-1.27, 1.0]))
    group.scale()
    assert "_own_cached" in w.__dict__
    twin = copy.deepcopy(w)
    loaded = pickle.loads(pickle.dumps(w))
    for other in (twin, loaded):
        assert "_own_cached" not in other.__dict__
        assert torch.equal(other.group.scale(), group.scale())
        other(torch.tensor([-12.7]))  # its own range now, and its own scale
        assert torch.equal(other.group.scale(), torch.tensor(0.1))
    assert torch.equal(group.scale(), torch.tensor(0.01))
