import warnings

import pytest
import torch
from torch import nn

import aquatic
from aquatic.quantizers import UniformQuantizer

int8, int4 = aquatic.qconfig.int8, aquatic.qconfig.int4_weight


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.Linear(8, 2))
        self.norm = nn.LayerNorm(2)

    def forward(self, x):
        return self.norm(self.head(self.features(x)))


def kinds(model):
    return {name: type(m).__module__.split(".")[0] for name, m in model.named_modules() if name}


def test_single_qconfig_converts_every_supported_layer_and_keeps_weights():
    torch.manual_seed(0)
    model = Net()
    model.head[2].weight.requires_grad_(False)
    qmodel = aquatic.quantize(model, int8)
    assert isinstance(qmodel.features[0], aquatic.nn.Conv2d)
    assert isinstance(qmodel.head[1], aquatic.nn.Linear)
    assert type(qmodel.norm) is nn.LayerNorm and type(qmodel.features[1]) is nn.ReLU
    assert type(model.features[0]) is nn.Conv2d  # the original is untouched
    assert torch.equal(qmodel.head[1].weight, model.head[1].weight)
    assert qmodel.head[1].weight is not model.head[1].weight
    assert not qmodel.head[2].weight.requires_grad
    assert "quantized=(weight, activation)" in repr(qmodel)
    x = torch.randn(2, 1, 8, 8)
    assert qmodel(x).shape == (2, 2)


def test_dtype_and_mode_kept_and_inplace():
    model = Net().double().eval()
    same = aquatic.quantize(model, int8, inplace=True)
    # A model of one's own comes back as its graph (with an input quantizer), sharing
    # the layers swapped in place.
    assert isinstance(model.head[1], aquatic.nn.Linear) and same.head[1] is model.head[1]
    assert model.head[1].weight.dtype == torch.float64 and not model.head[1].training
    assert not same.training and not same.input_quantizer.training
    assert same(torch.randn(1, 1, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_mapping_precedence():
    qconfig = {
        nn.Module: int8,  # default for everything
        nn.Linear: int4,  # nearer in the class hierarchy
        r"head\.2": None,  # regular expression
        "features": int4,  # a name covers what is inside
        "features.2": None,  # own name beats the enclosing one
    }
    qmodel = aquatic.quantize(Net(), qconfig)
    assert set(qmodel.features[0].quantizers) == {"weight"}  # int4 through "features"
    assert type(qmodel.features[2]) is nn.Conv2d
    assert set(qmodel.head[1].quantizers) == {"weight"}  # int4 through nn.Linear
    assert type(qmodel.head[2]) is nn.Linear


def test_regex_order_and_root_name():
    qmodel = aquatic.quantize(Net(), {r"head\..*": int8, r".*\.1": None})
    assert isinstance(qmodel.head[1], aquatic.nn.Linear)  # first matching pattern wins
    assert type(qmodel.features[0]) is nn.Conv2d
    layer = aquatic.quantize(nn.Linear(2, 3), int8)
    assert isinstance(layer, aquatic.nn.Linear)


def test_unmatched_keys_warn_with_their_names():
    with pytest.warns(UserWarning, match=r"nn.*'decoder', ConvTranspose2d|'decoder'"):
        aquatic.quantize(Net(), {"decoder": int8, nn.ConvTranspose2d: int8, nn.Linear: int8})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aquatic.quantize(Net(), {nn.Linear: int8, "norm": None})


def test_unmatched_warning_lists_all_keys():
    with pytest.warns(UserWarning) as record:
        aquatic.quantize(Net(), {"decoder": int8, nn.ConvTranspose2d: int8})
    message = str(record[0].message)
    assert "'decoder'" in message and "ConvTranspose2d" in message


@pytest.mark.parametrize(
    "qconfig,error,match",
    [
        (None, TypeError, "QConfig or a mapping"),
        ("int8", TypeError, "QConfig or a mapping"),
        ({nn.Linear: "int8"}, TypeError, "must be an aquatic.QConfig or None"),
        ({nn.Bilinear: int8}, TypeError, "Bilinear has no aquatic twin.*quantize_parameter"),
        ({3: int8}, TypeError, "types or strings"),
        ({"head[": int8}, ValueError, "neither the name of a module"),
    ],
)
def test_bad_qconfig_leaves_model_unchanged(qconfig, error, match):
    model = Net()
    with pytest.raises(error, match=match):
        aquatic.quantize(model, qconfig, inplace=True)
    assert "aquatic" not in kinds(model).values()


def test_shared_module_is_converted_everywhere():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    qmodel = aquatic.quantize(model, int8)
    assert qmodel[0] is qmodel[2] and isinstance(qmodel[0], aquatic.nn.Linear)


def test_already_quantized_layers_keep_their_quantizers_only_when_asked():
    layer = aquatic.nn.Linear(2, 2, qconfig=int4)
    model = nn.Sequential(layer, nn.Linear(2, 2))
    qmodel = aquatic.quantize(model, {nn.Module: int8, "0": None}, inplace=True)
    assert qmodel[0] is layer and set(layer.quantizers) == {"weight"}
    assert isinstance(qmodel[1], aquatic.nn.Linear)
    with pytest.warns(UserWarning, match="re-quantized with the new QConfig.*: 0 "):
        qmodel = aquatic.quantize(model, int8, inplace=True)
    assert set(qmodel[0].quantizers) == {"weight", "activation"}
    assert qmodel[0].weight is layer.weight


def test_dequantize_bakes_values():
    torch.manual_seed(0)
    qmodel = aquatic.quantize(Net(), int8)
    qmodel = nn.Sequential(aquatic.nn.ActivationQuantizer(qconfig=int8), qmodel)
    x = torch.randn(2, 1, 8, 8)
    qmodel(x)
    expected = qmodel[1].head[1].quantize_params()["weight"]
    plain = aquatic.dequantize(qmodel)
    assert "aquatic" not in kinds(plain).values()
    assert type(plain[0]) is nn.Identity
    assert torch.equal(plain[1].head[1].weight, expected)
    assert isinstance(qmodel[1].head[1], aquatic.nn.Linear)  # not in place


def test_quantize_parameter_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5, batch_first=True)
    x = torch.randn(2, 3, 4)
    before, _ = lstm(x)
    aquatic.quantize_parameter(lstm, "weight_hh_l0", UniformQuantizer.with_args(bits=3))
    after, _ = lstm(x)
    assert torch.unique(lstm.weight_hh_l0).numel() <= 8
    assert not torch.equal(before, after)
    after.sum().backward()  # straight-through gradient reaches the float weight
    assert lstm.parametrizations.weight_hh_l0.original.grad.abs().sum() > 0
    with aquatic.freeze_observers(lstm):
        assert not lstm.parametrizations.weight_hh_l0[0].observer_enabled
    plain = aquatic.dequantize(lstm)
    assert type(plain) is nn.LSTM
    assert torch.equal(plain.weight_hh_l0, lstm.weight_hh_l0)
    assert torch.equal(plain(x)[0], lstm(x)[0])  # the original keeps its quantizer
    assert torch.nn.utils.parametrize.is_parametrized(lstm, "weight_hh_l0")


def test_quantize_parameter_embedding_instance_and_errors():
    emb = nn.Embedding(10, 3)
    quantizer = UniformQuantizer(bits=2, scale=0.5)
    assert aquatic.quantize_parameter(emb, "weight", quantizer) is emb
    assert set(torch.unique(emb.weight).tolist()) <= {-1.0, -0.5, 0.0, 0.5}
    with pytest.raises(ValueError, match="already parametrized"):
        aquatic.quantize_parameter(emb, "weight", quantizer)
    with pytest.raises(ValueError, match="no parameter 'bias'.*weight"):
        aquatic.quantize_parameter(nn.Embedding(3, 2), "bias", UniformQuantizer)
    with pytest.raises(TypeError, match="factory"):
        aquatic.quantize_parameter(nn.Embedding(3, 2), "weight", 8)
    with pytest.raises(TypeError, match="nn.Module"):
        aquatic.quantize_parameter("emb", "weight", UniformQuantizer)


def test_quantize_parameter_on_an_aquatic_layer_bias():
    layer = aquatic.nn.Linear(3, 2, qconfig=aquatic.QConfig(weight=UniformQuantizer))
    aquatic.quantize_parameter(layer, "bias", UniformQuantizer(bits=2, scale=10.0))
    x = torch.randn(4, 3)
    weight = layer.quantizers["weight"](layer.weight)
    assert torch.equal(layer.bias, torch.zeros(2))  # small biases round to 0 on a 10 grid
    assert torch.equal(layer(x), x @ weight.t())


def test_quantize_a_model_holding_a_parametrized_lstm():
    model = nn.ModuleDict({"lstm": nn.LSTM(3, 4), "head": nn.Linear(4, 2)})
    aquatic.quantize_parameter(model["lstm"], "weight_ih_l0", UniformQuantizer)
    model["lstm"](torch.randn(5, 1, 3))  # caches non-leaf flat weights
    qmodel = aquatic.quantize(model, int8)
    assert isinstance(qmodel["head"], aquatic.nn.Linear) and type(model["head"]) is nn.Linear
    assert torch.equal(qmodel["lstm"].weight_ih_l0, model["lstm"].weight_ih_l0)
