"""Drop-in layers: ``aquatic.nn.Linear`` for ``torch.nn.Linear`` and so on, plus ``qconfig=``."""

from aquatic.nn.activation import ActivationQuantizer
from aquatic.nn.base import QuantizedModule
from aquatic.nn.conv import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)
from aquatic.nn.linear import Linear
from aquatic.nn.exp_leak import ExpLeak
from aquatic.nn.iaf import IAF
from aquatic.nn.lif import LIF, LIFCell, LIFRecurrent
from aquatic.nn.neuron_base import NeuronModule
from aquatic.functional.neurons import LIFState
from aquatic.functional.surrogate import (
    ArcTan,
    FastSigmoid,
    SingleExponential,
    Surrogate,
    Triangle,
)
from aquatic.nn.recurrent import GRU, LSTM, RNN
from aquatic.nn.recurrent_base import RecurrentTwin
from aquatic.nn.recurrent_cells import GRUCell, LSTMCell, RNNCell

__all__ = [
    "ActivationQuantizer",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
    "QuantizedModule",
    "ArcTan",
    "ExpLeak",
    "FastSigmoid",
    "IAF",
    "LIF",
    "LIFCell",
    "LIFRecurrent",
    "LIFState",
    "NeuronModule",
    "SingleExponential",
    "Surrogate",
    "Triangle",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "RNN",
    "RNNCell",
    "RecurrentTwin",
]
