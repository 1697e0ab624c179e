"""Drop-in layers: ``aquatic.nn.Linear`` for ``torch.nn.Linear`` and so on, plus ``qconfig=``.

``aquatic.nn`` mirrors all of :mod:`torch.nn`: every public name of ``torch.nn`` is
reachable from it, so ``import aquatic.nn as nn`` works in any script. Where aquatic
has a quantization-aware twin (``Linear``, ``Conv2d``, ...) the twin shadows the torch
name and takes ``qconfig=``; every other name (``Module``, ``Sequential``, ``ReLU``,
``CrossEntropyLoss``, ``Parameter``, ``functional``, ``init``, ``utils``, ...) is
torch's own object, looked up in ``torch.nn`` when it is asked for, so the mirror grows
with torch. ``import aquatic.nn.functional as F`` works as with ``torch.nn``.

Example:
    >>> import torch
    >>> import aquatic.nn as nn
    >>> nn.ReLU is torch.nn.ReLU, nn.functional is torch.nn.functional
    (True, True)
    >>> issubclass(nn.Linear, torch.nn.Linear), nn.Linear is torch.nn.Linear
    (True, False)
"""

import sys as _sys
import types as _types
from typing import Any as _Any, List as _List

import torch.nn as _torch_nn

from aquatic.nn.activation import ActivationQuantizer
from aquatic.nn.combine import Add, Cat, Mul
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
from aquatic.nn.layer_norm import LayerNorm
from aquatic.nn.embedding import Embedding, EmbeddingBag
from aquatic.nn.multihead import MultiheadAttention
from aquatic.nn.transformer import TransformerDecoderLayer, TransformerEncoderLayer
from aquatic.nn.conv_bn import ConvBn1d, ConvBn2d, ConvBn3d, LinearBn1d
from aquatic.nn.fused_bn import FusedBatchNorm, freeze_bn, unfreeze_bn
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
from aquatic.nn.normalization import BatchNorm1d, BatchNorm2d
from aquatic.nn.pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
    SumPool1d,
    SumPool2d,
)
from aquatic.nn.recurrent import GRU, LSTM, RNN
from aquatic.nn.sum import Sum
from aquatic.nn.select import LastStep, SelectOutput
from aquatic.nn.recurrent_base import RecurrentTwin
from aquatic.nn.recurrent_cells import GRUCell, LSTMCell, RNNCell

__all__ = [
    "ActivationQuantizer",
    "Add",
    "Cat",
    "Mul",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
    "LayerNorm",
    "Embedding",
    "EmbeddingBag",
    "MultiheadAttention",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
    "ConvBn1d",
    "ConvBn2d",
    "ConvBn3d",
    "FusedBatchNorm",
    "LinearBn1d",
    "freeze_bn",
    "unfreeze_bn",
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
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "MaxPool1d",
    "MaxPool2d",
    "SumPool1d",
    "SumPool2d",
    "Sum",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "RNN",
    "RNNCell",
    "RecurrentTwin",
    "LastStep",
    "SelectOutput",
]


def _torch_names() -> _List[str]:
    """The public names of the installed ``torch.nn``."""
    return sorted(name for name in dir(_torch_nn) if not name.startswith("_"))


def __getattr__(name: str) -> _Any:
    # Called only for names this module does not define: the torch.nn mirror.
    if not name.startswith("_") and hasattr(_torch_nn, name):
        return getattr(_torch_nn, name)
    raise AttributeError(f"module 'aquatic.nn' has no attribute {name!r}, nor has torch.nn")


def __dir__() -> _List[str]:
    return sorted(set(globals()) | set(_torch_names()))


# ``import aquatic.nn.functional`` (and init, utils, utils.rnn, ...) imports torch's own
# module, as ``os.path`` is the platform's module: one module object under two names,
# never a second copy of torch's classes.
for _name, _module in list(_sys.modules.items()):
    if _name.startswith("torch.nn.") and isinstance(_module, _types.ModuleType):
        _alias = "aquatic.nn." + _name[len("torch.nn.") :]
        if _alias.split(".")[2] in vars(_torch_nn) and _alias not in _sys.modules:
            _sys.modules[_alias] = _module
del _name, _module, _alias

__all__ += [name for name in _torch_names() if name not in __all__]
