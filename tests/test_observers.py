import io

import pytest
import torch

from aquatic.observers import MinMaxObserver, MovingAverageMinMaxObserver


def test_minmax_running_extrema():
    obs = MinMaxObserver()
    obs(torch.tensor([-1.0, 2.0]))
    obs(torch.tensor([0.5, 3.0]))
    obs(torch.tensor([-0.1]))
    assert obs.min_val.item() == -1.0 and obs.max_val.item() == 3.0


def test_forward_returns_input_unchanged():
    x = torch.randn(5)
    assert MinMaxObserver()(x) is x


def test_moving_average():
    obs = MovingAverageMinMaxObserver(averaging_constant=0.25)
    obs(torch.tensor([-4.0, 4.0]))
    obs(torch.tensor([0.0, 8.0]))
    # first batch sets the range; then m += c (new - m)
    assert obs.min_val.item() == -4.0 + 0.25 * (0.0 + 4.0)
    assert obs.max_val.item() == 4.0 + 0.25 * (8.0 - 4.0)


@pytest.mark.parametrize("cls", [MinMaxObserver, MovingAverageMinMaxObserver])
def test_per_channel(cls):
    obs = cls(ch_axis=1)
    x = torch.randn(4, 3, 5)
    obs(x)
    assert torch.equal(obs.min_val, x.amin(dim=(0, 2)))
    assert torch.equal(obs.max_val, x.amax(dim=(0, 2)))
    scale, zp = obs.calculate_qparams()
    assert scale.shape == (3,) and zp.shape == (3,)


@pytest.mark.parametrize("ch_axis", [None, 0])
def test_state_dict_round_trip(ch_axis):
    obs = MovingAverageMinMaxObserver(ch_axis=ch_axis)
    obs(torch.randn(3, 4))
    buffer = io.BytesIO()
    torch.save(obs.state_dict(), buffer)
    buffer.seek(0)
    fresh = MovingAverageMinMaxObserver(ch_axis=ch_axis)
    assert not fresh.initialized
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.initialized
    assert torch.equal(fresh.min_val, obs.min_val)
    for a, b in zip(fresh.calculate_qparams(), obs.calculate_qparams()):
        assert torch.equal(a, b)


def test_symmetric_and_asymmetric_qparams():
    x = torch.tensor([-1.0, 3.0])
    sym = MinMaxObserver(quant_min=-128, quant_max=127, symmetric=True)
    sym(x)
    scale, zp = sym.calculate_qparams()
    assert torch.isclose(scale, torch.tensor(3.0 / 127)) and zp.item() == 0
    asym = MinMaxObserver(quant_min=0, quant_max=255, symmetric=False)
    asym(x)
    scale, zp = asym.calculate_qparams()
    assert torch.isclose(scale, torch.tensor(4.0 / 255)) and zp.item() == 64


@pytest.mark.parametrize("value", [0.0, 2.5])
def test_constant_input_gives_nonzero_scale(value):
    obs = MinMaxObserver()
    obs(torch.full((10,), value))
    scale, _ = obs.calculate_qparams()
    assert scale.item() > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_rejected_and_range_kept(bad):
    obs = MinMaxObserver()
    obs(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        obs(torch.tensor([0.0, bad]))
    assert obs.max_val.item() == 1.0 and obs.min_val.item() == -1.0


def test_qparams_before_observing_raises():
    with pytest.raises(RuntimeError, match="observed no data"):
        MinMaxObserver().calculate_qparams()


def test_bad_arguments():
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=0.0)
    with pytest.raises(ValueError, match="quant_min"):
        MinMaxObserver(quant_min=3, quant_max=3)
    with pytest.raises(TypeError, match="ch_axis"):
        MinMaxObserver(ch_axis="0")


def test_with_args_factory():
    factory = MovingAverageMinMaxObserver.with_args(averaging_constant=0.5)
    obs = factory(quant_min=0, quant_max=15)
    assert obs.averaging_constant == 0.5 and obs.quant_max == 15
    with pytest.raises(TypeError, match="averaging_const"):
        MovingAverageMinMaxObserver.with_args(averaging_const=0.5)


@pytest.mark.parametrize(
    "factory",
    [
        MinMaxObserver,
        MovingAverageMinMaxObserver.with_args(averaging_constant=0.3),
        MovingAverageMinMaxObserver.with_args(averaging_constant=0.8, symmetric=False),
    ],
)
def test_scalar_update_and_qparams_equal_the_tensor_ones(factory):
    scalar, tensor = factory(), factory()
    generator = torch.Generator().manual_seed(0)
    for step in range(6):
        x = torch.randn(50, generator=generator) * (1 + step)
        assert scalar.supports_scalars(x)
        batch = scalar.update_scalar(x)
        assert batch == tuple(t.item() for t in tensor.update(x))
        assert torch.equal(scalar.min_val, tensor.min_val)
        assert torch.equal(scalar.max_val, tensor.max_val)
        scale, zero_point = tensor.calculate_qparams()
        assert scalar.calculate_qparams_scalar() == (scale.item(), zero_point.item())


class CombineOnly(MinMaxObserver):
    def _combine(self, cur_min, cur_max):
        return super()._combine(cur_min, cur_max)


@pytest.mark.parametrize(
    "observer",
    [
        MinMaxObserver(ch_axis=0),
        MinMaxObserver(power_of_two=True),
        CombineOnly(),  # a new merge rule without a Python-float twin
    ],
)
def test_scalar_methods_apply_only_to_one_plain_range(observer):
    assert not observer.supports_scalars(torch.randn(3, 3))
    assert MinMaxObserver().supports_scalars(torch.randn(3, 3))


def test_scalar_qparams_before_observing_raise():
    with pytest.raises(RuntimeError, match="observed no data"):
        MinMaxObserver().calculate_qparams_scalar()


class WidenThenShrink(MinMaxObserver):
    """A merge rule of its own: must not be merged by MinMaxObserver's in-place rule."""

    def _combine(self, cur_min, cur_max):
        return cur_min, cur_max  # keeps only the last batch


@pytest.mark.parametrize("ch_axis", [None, 0, 1])
def test_min_max_merges_in_place_with_the_bits_of_merge_and_copy(ch_axis):
    # CombineOnly merges with the same rule but through _combine and copy_.
    fast, reference = MinMaxObserver(ch_axis=ch_axis), CombineOnly(ch_axis=ch_axis)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, generator=generator)
    fast.update(x), reference.update(x)
    buffers = fast.min_val, fast.max_val
    for step in range(5):
        x = torch.randn(5, 7, generator=generator) * (0.5 + 0.4 * step)
        x[0, 0] = -0.0
        batch, expected = fast.update(x), reference.update(x)
        assert all(torch.equal(a, b) for a, b in zip(batch, expected))
        for name in ("min_val", "max_val"):
            got, want = getattr(fast, name), getattr(reference, name)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    # the buffers are written, not replaced (DistributedDataParallel holds them)
    assert fast.min_val is buffers[0] and fast.max_val is buffers[1]


def test_a_merge_rule_of_its_own_is_kept():
    observer = WidenThenShrink(ch_axis=0)
    observer.update(torch.tensor([[-4.0, 4.0], [-3.0, 3.0]]))
    observer.update(torch.tensor([[-1.0, 1.0], [-2.0, 2.0]]))
    assert observer.min_val.tolist() == [-1.0, -2.0]
    assert observer.max_val.tolist() == [1.0, 2.0]


def test_half_buffers_merge_through_a_copy():
    observer = MinMaxObserver(ch_axis=0)
    observer.update(torch.tensor([[-1.0, 2.0], [0.5, 0.25]]))
    observer.half()
    observer.update(torch.tensor([[-3.0, 1.0], [0.0, 0.125]]))
    assert observer.min_val.dtype == torch.float16
    assert observer.min_val.tolist() == [-3.0, 0.0]
    assert observer.max_val.tolist() == [2.0, 0.5]
