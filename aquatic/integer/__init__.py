"""Integer export and integer-arithmetic inference.

- ``layer.to_int()`` (every aquatic layer, :func:`layer_to_int`): integer codes of the
  quantized parameters with their scales and zero points (or ``dash``).
- :func:`convert` (also ``aquatic.convert``): an :class:`IntegerModel` that runs the
  trained model in integer arithmetic, with ``quantize_input`` / ``dequantize_output``
  at the edges, and that reports whether it is bit-exact (``exact``, ``notes``).
- :func:`save` / :func:`load`: plain tensors and a JSON header; no pickled code.
- :func:`build_rnn`, :func:`build_gru`, :func:`build_lstm`: the :class:`IntegerRNN` /
  :class:`IntegerGRU` / :class:`IntegerLSTM` of a quantization-aware ``aquatic.nn.RNN`` /
  ``GRU`` / ``LSTM`` (integer matmuls, sigmoid and
  tanh as lookup tables; an :class:`IntegerRecurrentStack` of them for stacked and
  bidirectional layers); :func:`convert` places them in ``nn.Sequential`` models with
  :class:`aquatic.nn.SelectOutput` and :class:`aquatic.nn.LastStep`.
- :func:`build_embedding`: the :class:`IntegerEmbedding` (a lookup of codes) or
  :class:`IntegerEmbeddingBag` (sum, mean, max in integer) of an aquatic embedding.
"""

from aquatic.integer.base import IntegerModule, IntegerOverflowError, QSpec
from aquatic.integer.convert import convert
from aquatic.integer.export import layer_to_int
from aquatic.integer.average import IntegerAverage
from aquatic.integer.clamp import IntegerClamp
from aquatic.integer.layers import IntegerConv, IntegerLinear, IntegerReLU, IntegerRequantize
from aquatic.integer.pooling import IntegerMaxPool, IntegerReshape, IntegerSum, IntegerSumPool
from aquatic.integer.model import IntegerModel
from aquatic.integer.graph import IntegerGraph
from aquatic.integer.graph_ops import IntegerCombine, IntegerReduceSum
from aquatic.integer.serialize import load, save
from aquatic.integer.spiking import IntegerNeuron
from aquatic.integer.recurrent import FixedSum, IntegerGRU, IntegerLSTM, IntegerRNN
from aquatic.integer.recurrent_stack import IntegerRecurrentStack
from aquatic.integer.build_recurrent import build_gru, build_lstm, build_rnn
from aquatic.integer.embedding import IntegerEmbedding, IntegerEmbeddingBag
from aquatic.integer.build_sequence import build_embedding
from aquatic.integer.sequence import IntegerLastStep, IntegerSelectOutput
from aquatic.integer.layer_norm import IntegerLayerNorm
from aquatic.integer.attention import IntegerMultiheadAttention
from aquatic.integer.transformer import IntegerTransformerEncoderLayer

__all__ = [
    "IntegerAverage",
    "IntegerClamp",
    "IntegerCombine",
    "IntegerConv",
    "IntegerGraph",
    "IntegerLayerNorm",
    "IntegerLinear",
    "IntegerMaxPool",
    "IntegerModel",
    "IntegerModule",
    "IntegerMultiheadAttention",
    "IntegerTransformerEncoderLayer",
    "IntegerNeuron",
    "IntegerOverflowError",
    "IntegerReLU",
    "IntegerReduceSum",
    "IntegerRequantize",
    "IntegerReshape",
    "IntegerSum",
    "IntegerSumPool",
    "QSpec",
    "convert",
    "layer_to_int",
    "load",
    "save",
    "FixedSum",
    "IntegerGRU",
    "IntegerLSTM",
    "IntegerRecurrentStack",
    "IntegerRNN",
    "build_gru",
    "build_lstm",
    "build_rnn",
    "IntegerEmbedding",
    "IntegerEmbeddingBag",
    "IntegerLastStep",
    "IntegerSelectOutput",
    "build_embedding",
]
