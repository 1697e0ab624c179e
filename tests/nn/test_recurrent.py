"""aquatic.nn RNN, LSTM, GRU and their cells: torch's own code without quantizers, an
explicit quantized step loop with them."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import aquatic
from aquatic import QConfig
from aquatic.quantizers import AccumulatorBiasQuantizer, UniformQuantizer

LAYERS = [
    (aquatic.nn.RNN, {}),
    (aquatic.nn.RNN, {"nonlinearity": "relu"}),
    (aquatic.nn.LSTM, {}),
    (aquatic.nn.LSTM, {"proj_size": 3}),
    (aquatic.nn.GRU, {}),
]
CELLS = [
    (aquatic.nn.RNNCell, {}),
    (aquatic.nn.RNNCell, {"nonlinearity": "relu"}),
    (aquatic.nn.LSTMCell, {}),
    (aquatic.nn.GRUCell, {}),
]
LAYER_IDS = ["rnn", "rnn-relu", "lstm", "lstm-proj", "gru"]
CELL_IDS = ["rnn", "rnn-relu", "lstm", "gru"]

# Fixed grids, so that the reference below needs no observer.
W_SCALE, B_SCALE, A_SCALE, S_SCALE = 2.0**-6, 2.0**-10, 2.0**-5, 2.0**-8
FIXED = QConfig(
    weight=UniformQuantizer.with_args(bits=8, scale=W_SCALE),
    bias=UniformQuantizer.with_args(bits=16, scale=B_SCALE),
    activation=UniformQuantizer.with_args(bits=8, scale=A_SCALE),
    state=UniformQuantizer.with_args(bits=12, scale=S_SCALE),
)
ZP0 = torch.tensor(0, dtype=torch.int32)


def fq(x, scale, bits):
    """Reference fake quantization: torch's own op, signed, zero point 0."""
    return torch.fake_quantize_per_tensor_affine(
        x, torch.tensor(scale), ZP0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    )


def flat(result):
    """Every tensor of a (nested) output, in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    if hasattr(result, "data") and hasattr(result, "batch_sizes"):
        return [result.data]
    return [t for part in result for t in flat(part)]


def twin_pair(cls, kwargs, qconfig, **more):
    torch.manual_seed(0)
    ref = cls._float_module(5, 6, **kwargs, **more)
    layer = cls(5, 6, **kwargs, **more, qconfig=qconfig)
    layer.load_state_dict(ref.state_dict())
    return ref, layer


# -- no quantizers: torch's own forward, bit for bit ----------------------------------


@pytest.mark.parametrize("qconfig", [None, QConfig()])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"batch_first": True},
        {"bidirectional": True, "num_layers": 2},
        {"bias": False, "num_layers": 2, "batch_first": True},
    ],
)
@pytest.mark.parametrize("cls, kwargs", LAYERS, ids=LAYER_IDS)
def test_layer_without_quantizers_is_torch(cls, kwargs, options, qconfig):
    ref, layer = twin_pair(cls, kwargs, qconfig, **options)
    assert isinstance(layer, cls._float_module) and len(layer.quantizers) == 0
    assert list(layer.state_dict()) == list(ref.state_dict())
    x1 = torch.randn(4, 3, 5, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    out1, out2 = flat(ref(x1)), flat(layer(x2))
    assert all(torch.equal(a, b) for a, b in zip(out1, out2))
    sum(o.sum() * (k + 1) for k, o in enumerate(out1)).backward()
    sum(o.sum() * (k + 1) for k, o in enumerate(out2)).backward()
    assert torch.equal(x1.grad, x2.grad)
    for (name, p1), p2 in zip(ref.named_parameters(), layer.parameters()):
        assert torch.equal(p1.grad, p2.grad), name


@pytest.mark.parametrize("cls, kwargs", LAYERS, ids=LAYER_IDS)
def test_packed_sequence_without_quantizers_is_torch(cls, kwargs):
    ref, layer = twin_pair(cls, kwargs, None, bidirectional=True)
    x = torch.randn(6, 3, 5)
    packed = pack_padded_sequence(x, torch.tensor([4, 6, 2]), enforce_sorted=False)
    assert all(torch.equal(a, b) for a, b in zip(flat(ref(packed)), flat(layer(packed))))


@pytest.mark.parametrize("qconfig", [None, QConfig()])
@pytest.mark.parametrize("cls, kwargs", CELLS, ids=CELL_IDS)
def test_cell_without_quantizers_is_torch(cls, kwargs, qconfig):
    ref, layer = twin_pair(cls, kwargs, qconfig)
    x = torch.randn(3, 5)
    assert all(torch.equal(a, b) for a, b in zip(flat(ref(x)), flat(layer(x))))
    assert all(torch.equal(a, b) for a, b in zip(flat(ref(x[0])), flat(layer(x[0]))))


# -- the quantized step loop against a reference written here ------------------------


def ref_layer(layer, x, hx=None):
    """torch's documented equations, per step, every signal through fq (not batch_first,
    one direction, one layer)."""
    w_ih, w_hh = fq(layer.weight_ih_l0, W_SCALE, 8), fq(layer.weight_hh_l0, W_SCALE, 8)
    b_ih, b_hh = fq(layer.bias_ih_l0, B_SCALE, 16), fq(layer.bias_hh_l0, B_SCALE, 16)
    size = layer.hidden_size
    out_size = layer.proj_size or size
    h = torch.zeros(x.shape[1], out_size) if hx is None else fq(hx[0], A_SCALE, 8)
    c = torch.zeros(x.shape[1], size)
    outputs = []
    for x_t in x:
        a = F.linear(x_t, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
        if layer.mode == "LSTM":
            pre = fq(a, A_SCALE, 8)
            i, f, g, o = pre.chunk(4, 1)
            gates = torch.cat([i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()], 1)
            i, f, g, o = fq(gates, A_SCALE, 8).chunk(4, 1)
            c = fq(f * c + i * g, S_SCALE, 12)
            h = o * c.tanh()
            if layer.proj_size:
                h = F.linear(h, fq(layer.weight_hr_l0, W_SCALE, 8))
            h = fq(h, A_SCALE, 8)
        elif layer.mode == "GRU":
            gi, gh = F.linear(x_t, w_ih, b_ih), F.linear(h, w_hh, b_hh)
            pre = fq(gi[:, : 2 * size] + gh[:, : 2 * size], A_SCALE, 8)
            r, z = fq(pre.sigmoid(), A_SCALE, 8).chunk(2, 1)
            n = fq(fq(gi[:, 2 * size :] + r * gh[:, 2 * size :], A_SCALE, 8).tanh(), A_SCALE, 8)
            h = fq((1 - z) * n + z * h, A_SCALE, 8)
        else:
            pre = fq(a, A_SCALE, 8)
            h = fq(pre.tanh() if layer.nonlinearity == "tanh" else pre.relu(), A_SCALE, 8)
        outputs.append(h)
    return torch.stack(outputs)


@pytest.mark.parametrize("cls, kwargs", LAYERS, ids=LAYER_IDS)
def test_quantized_forward_matches_reference(cls, kwargs, monkeypatch):
    _, layer = twin_pair(cls, kwargs, FIXED)
    names = {n for n, _ in layer.named_parameters()}
    assert names <= set(layer.quantizers)  # one quantizer per parameter
    x = torch.randn(7, 3, 5)
    expected = ref_layer(layer, x)
    # torch's fused kernels read the float weights: they must not run at all.
    monkeypatch.setattr(torch.nn.modules.rnn, "_VF", None)
    output, hidden = layer(x)
    assert torch.equal(output, expected)
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    assert torch.equal(h_n[0], expected[-1])
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(x)[0], expected)  # inference computes the same
    assert torch.unique(output / A_SCALE - torch.round(output / A_SCALE)).tolist() == [0.0]


@pytest.mark.parametrize("cls, kwargs", CELLS, ids=CELL_IDS)
def test_quantized_cell_matches_quantized_layer(cls, kwargs):
    torch.manual_seed(0)
    cell = cls(5, 6, **kwargs, qconfig=FIXED)
    layer_cls = {"RNNCell": aquatic.nn.RNN, "LSTMCell": aquatic.nn.LSTM}.get(
        cls.__name__, aquatic.nn.GRU
    )
    layer = layer_cls(5, 6, **kwargs, qconfig=FIXED)
    layer.load_state_dict({k + "_l0": v for k, v in cell.named_parameters()})
    x = torch.randn(4, 3, 5)
    state = None
    for x_t in x:
        state = cell(x_t, state)
    expected = layer(x)[0][-1]
    assert torch.equal(state[0] if isinstance(state, tuple) else state, expected)


def test_given_initial_states_are_read_on_their_grids():
    torch.manual_seed(0)
    cell = aquatic.nn.LSTMCell(5, 6, qconfig=FIXED)
    x, h, c = torch.randn(3, 5), torch.randn(3, 6), torch.randn(3, 6)
    on_grid = (fq(h, A_SCALE, 8), fq(c, S_SCALE, 12))
    assert all(torch.equal(a, b) for a, b in zip(cell(x, (h, c)), cell(x, on_grid)))
    single = cell(x[0], (h[0], c[0]))
    assert single[0].shape == (6,)
    # one row or three: the same step, up to a float rounding that may move one step
    assert torch.allclose(single[1], cell(x, (h, c))[1][0], rtol=0, atol=S_SCALE)
    layer = aquatic.nn.GRU(5, 6, qconfig=FIXED)
    seq, h0 = torch.randn(4, 3, 5), torch.randn(1, 3, 6)
    assert torch.equal(layer(seq, h0)[0], layer(seq, fq(h0, A_SCALE, 8))[0])
    assert torch.equal(
        layer(seq, h0)[0][0],
        aquatic.nn.GRUCell.from_float(layer_as_cell(layer), FIXED)(seq[0], h0[0]),
    )


def layer_as_cell(layer):
    cell = nn.GRUCell(layer.input_size, layer.hidden_size)
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in layer.named_parameters()})
    return cell


def test_quantized_bidirectional_two_layers_and_packed_sequences():
    torch.manual_seed(0)
    layer = aquatic.nn.LSTM(5, 6, num_layers=2, bidirectional=True, qconfig=FIXED)
    assert {"gates_l1_reverse", "cell_l0_reverse", "weight_ih_l1_reverse"} <= set(layer.quantizers)
    x = torch.randn(6, 3, 5)
    lengths = torch.tensor([4, 6, 2])
    output, (h, c) = layer(x)
    assert output.shape == (6, 3, 12) and h.shape == c.shape == (4, 3, 6)
    # A packed batch gives each sequence what it gives alone, cut to its length.
    packed_out, (hp, cp) = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
    padded, _ = pad_packed_sequence(packed_out)
    for b, length in enumerate(lengths.tolist()):
        alone, (ha, ca) = layer(x[:length, b : b + 1])
        assert torch.allclose(padded[:length, b], alone[:, 0], atol=1e-6)
        assert torch.allclose(hp[:, b], ha[:, 0], atol=1e-6)
        assert torch.allclose(cp[:, b], ca[:, 0], atol=1e-6)


def test_both_directions_share_the_hidden_quantizer_and_a_projection_is_quantized():
    torch.manual_seed(0)
    layer = aquatic.nn.LSTM(
        5, 6, num_layers=2, bidirectional=True, proj_size=3, qconfig=aquatic.qconfig.int8
    )
    quantizers = layer.quantizers
    for k in (0, 1):
        assert quantizers[f"hidden_l{k}"] is quantizers[f"hidden_l{k}_reverse"]
        assert quantizers[f"gates_l{k}"] is not quantizers[f"gates_l{k}_reverse"]
    assert {"weight_hr_l0", "weight_hr_l1_reverse"} <= set(quantizers)
    x = torch.randn(7, 2, 5)
    layer(x)  # observes the ranges
    output, (h, _) = layer.eval()(x)
    assert output.shape == (7, 2, 6) and h.shape == (4, 2, 3)
    # the whole output, both directions, lies on the one hidden grid of its layer
    scale = quantizers["hidden_l1"].grid().scale
    assert torch.allclose(output / scale, torch.round(output / scale), atol=1e-4)
    weight = layer.quantize_params()["weight_hr_l1"]
    w_scale = quantizers["weight_hr_l1"].grid().scale
    assert torch.allclose(weight / w_scale, torch.round(weight / w_scale), atol=1e-4)
    again = aquatic.nn.LSTM(
        5, 6, num_layers=2, bidirectional=True, proj_size=3, qconfig=aquatic.qconfig.int8
    )
    again.load_state_dict(layer.state_dict())
    assert again.quantizers["hidden_l0"] is again.quantizers["hidden_l0_reverse"]
    assert torch.equal(
        again.quantizers["hidden_l0"].grid().scale, quantizers["hidden_l0"].grid().scale
    )


def test_batch_first_and_unbatched_give_the_same_steps():
    torch.manual_seed(0)
    layer = aquatic.nn.GRU(5, 6, qconfig=FIXED)
    first = copy.deepcopy(layer)
    first.batch_first = True
    x = torch.randn(4, 3, 5)
    out, h = layer(x)
    out_first, h_first = first(x.transpose(0, 1))
    assert torch.equal(out_first, out.transpose(0, 1)) and torch.equal(h_first, h)
    single, h_single = layer(x[:, 1])
    assert single.shape == (4, 6) and h_single.shape == (1, 6)
    assert torch.allclose(single, out[:, 1], atol=1e-6)


@pytest.mark.parametrize("cls, kwargs", LAYERS, ids=LAYER_IDS)
def test_gradients_flow_straight_through(cls, kwargs):
    torch.manual_seed(0)
    layer = cls(5, 6, num_layers=2, **kwargs, qconfig=aquatic.qconfig.int8)
    x = torch.randn(5, 3, 5, requires_grad=True)
    output, _ = layer(x)
    output.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# -- conversion, state_dict, quantize / dequantize ------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs", LAYERS + CELLS, ids=LAYER_IDS + ["cell-" + i for i in CELL_IDS]
)
def test_from_float_and_to_float_round_trip(cls, kwargs):
    ref = cls._float_module(5, 6, **kwargs).double().eval()
    layer = cls.from_float(ref, aquatic.qconfig.int4_weight)
    assert type(layer) is cls and not layer.training
    for name, param in ref.named_parameters():
        assert getattr(layer, name) is param
    shared = layer.to_float(baked=False)
    assert type(shared) is cls._float_module
    assert all(getattr(shared, n) is p for n, p in ref.named_parameters())
    baked = layer.to_float()
    values = layer.quantize_params()
    assert set(values) == {n for n, _ in ref.named_parameters() if n.startswith("weight")}
    for name, param in baked.named_parameters():
        expected = values.get(name, getattr(layer, name))
        assert param.dtype == torch.float64 and torch.equal(param, expected), name
    assert any(not torch.equal(values[n], getattr(ref, n)) for n in values)
    with pytest.raises(TypeError, match=f"torch.nn.{cls._float_module.__name__}"):
        cls.from_float(nn.Linear(2, 2))


def test_float_checkpoint_loads_and_quantized_state_dict_round_trips():
    ref = nn.GRU(5, 6, num_layers=2)
    layer = aquatic.nn.GRU(5, 6, num_layers=2, qconfig=aquatic.qconfig.int8)
    result = layer.load_state_dict(ref.state_dict())  # strict
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(layer.weight_hh_l1, ref.weight_hh_l1)
    x = torch.randn(4, 2, 5)
    layer(x)
    fresh = aquatic.nn.GRU(5, 6, num_layers=2, qconfig=aquatic.qconfig.int8)
    fresh.load_state_dict(layer.state_dict())
    layer.eval(), fresh.eval()
    assert torch.equal(fresh(x)[0], layer(x)[0])


def test_quantize_swaps_recurrent_layers_and_dequantize_bakes_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(4, 8, batch_first=True))
    cells = nn.ModuleList([nn.GRUCell(4, 4), nn.RNNCell(4, 4), nn.LSTMCell(4, 4), nn.RNN(4, 4)])
    qcells = aquatic.quantize(cells, aquatic.qconfig.int4_weight, quantize_output=True)
    assert [type(m) for m in qcells] == [
        aquatic.nn.GRUCell,
        aquatic.nn.RNNCell,
        aquatic.nn.LSTMCell,
        aquatic.nn.RNN,
    ]
    qmodel = aquatic.quantize(model, aquatic.qconfig.int8, quantize_output=True)
    assert type(qmodel[0]) is aquatic.nn.LSTM and qmodel[0].weight_ih_l0 is not None
    assert torch.equal(qmodel[0].weight_ih_l0, model[0].weight_ih_l0)
    qmodel(torch.randn(2, 3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = aquatic.quantize(qmodel, aquatic.qconfig.int8, quantize_output=True)
    assert same[0].quantizers["hidden_l0"] is not None
    with pytest.warns(UserWarning, match="re-quantized"):
        again = aquatic.quantize(qmodel, aquatic.qconfig.int4_weight, quantize_output=True)
    assert set(again[0].quantizers) == {"weight_ih_l0", "weight_hh_l0"}
    plain = aquatic.dequantize(qmodel)
    assert type(plain[0]) is nn.LSTM
    values = qmodel[0].quantize_params()
    assert torch.equal(plain[0].weight_hh_l0, values["weight_hh_l0"])
    assert plain(torch.randn(2, 3, 4))[0].shape == (2, 3, 8)


# -- bad input ------------------------------------------------------------------------


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(TypeError):
        aquatic.nn.GRU(3, 4, 1, True, False, 0.0, False, None, None, aquatic.qconfig.int8)
    with pytest.raises(TypeError, match="aquatic.QConfig"):
        aquatic.nn.LSTM(3, 4, qconfig={"weight": UniformQuantizer})
    accumulator = QConfig(
        weight=UniformQuantizer.with_args(bits=8), bias=AccumulatorBiasQuantizer.with_args()
    )
    with pytest.raises(ValueError, match="bias quantizer with a scale of its own"):
        aquatic.nn.GRU(3, 4, qconfig=accumulator)
    layer = aquatic.nn.GRU(3, 4, qconfig=aquatic.qconfig.int8)
    with pytest.raises(ValueError, match="3-D .* or 2-D .* got 4-D"):
        layer(torch.randn(2, 2, 2, 3))
    with pytest.raises(TypeError, match="Tensor or a PackedSequence"):
        layer([torch.randn(2, 3)])
    with pytest.raises(RuntimeError, match="input_size"):
        layer(torch.randn(2, 2, 5))
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        layer(torch.randn(2, 2, 3), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="initial state must be 2-D too, got 3-D"):
        layer(torch.randn(2, 3), torch.zeros(1, 1, 4))
    cell = aquatic.nn.LSTMCell(3, 4, qconfig=aquatic.qconfig.int8)
    with pytest.raises(ValueError, match="input has 5 features, but input_size is 3"):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"state\[1\] has shape \(2, 5\)"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="1-D input"):
        cell(torch.randn(1, 2, 3))


# -- training -------------------------------------------------------------------------


class KeywordSpotter(nn.Module):
    """A GRU over feature frames, then a linear classifier on the last hidden state."""

    def __init__(self, features, hidden, classes, qconfig):
        super().__init__()
        self.gru = aquatic.nn.GRU(features, hidden, batch_first=True, qconfig=qconfig)
        self.head = aquatic.nn.Linear(hidden, classes, qconfig=qconfig)

    def forward(self, x):
        _, h = self.gru(x)
        return self.head(h[-1])


def keywords(generator, count, classes=3, steps=12, features=8):
    """Synthetic 'keywords': each class is a fixed sequence of frames, plus noise."""
    templates = torch.randn(classes, steps, features, generator=torch.Generator().manual_seed(7))
    labels = torch.randint(0, classes, (count,), generator=generator)
    noise = 0.8 * torch.randn(count, steps, features, generator=generator)
    return templates[labels] + noise, labels


def test_keyword_spotting_gru_trains_with_quantized_gates():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = KeywordSpotter(8, 16, 3, aquatic.qconfig.int8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = keywords(generator, 96)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    x_test, y_test = keywords(generator, 64)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.8


@pytest.mark.cuda
@pytest.mark.parametrize("cls, kwargs", LAYERS, ids=LAYER_IDS)
def test_quantized_layer_on_cuda_runs_the_step_loop(cls, kwargs, monkeypatch):
    _, layer = twin_pair(cls, kwargs, FIXED, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 5)
    expected, _ = layer(x)
    gpu = copy.deepcopy(layer).cuda()
    monkeypatch.setattr(torch.nn.modules.rnn, "_VF", None)  # no cuDNN with float weights
    output, _ = gpu(x.cuda())
    assert output.device.type == "cuda"
    steps = output.cpu() / A_SCALE
    assert torch.equal(steps, torch.round(steps))  # on the grid
    # cuBLAS sums in another order: a value next to a rounding boundary may move a step.
    assert (output.cpu() == expected).float().mean() >= 0.9
