"""Pure functions, no state: STE rounding, fake quantization, grids, qparams, spiking neurons."""

from aquatic.functional.fake_quant import (
    dequantize_affine,
    fake_quantize_affine,
    fake_quantize_learnable,
    grad_scale,
    int_dtype,
    quantize_affine,
)
from aquatic.functional.grid import Grid
from aquatic.functional.fake_quant_nearest import (
    fake_quantize_nearest,
    fake_quantize_nearest_scalar,
)
from aquatic.functional.fake_quant_uniform import fake_quantize_uniform
from aquatic.functional.qparams import calculate_qparams, round_to_power_of_two
from aquatic.functional.rounding import ROUNDING_MODES, round_ste, sign_ste, straight_through
from aquatic.functional.neurons import (
    LIFOutput,
    LIFState,
    NeuronSpec,
    StateOps,
    exp_leak,
    lif,
    lif_loop,
    lif_recurrent,
    lif_step,
    neuron_sequence,
    neuron_step,
)
from aquatic.functional.neurons_fused import lif_fused
from aquatic.functional.surrogate import spike
from aquatic.functional.recurrent import CellQuantizers, CellWeights, gru_cell, lstm_cell, rnn_cell
from aquatic.functional.recurrent_sequence import recurrent_sequence
from aquatic.functional.attention import additive_mask, quantized_attention

__all__ = [
    "additive_mask",
    "quantized_attention",
    "Grid",
    "ROUNDING_MODES",
    "calculate_qparams",
    "dequantize_affine",
    "fake_quantize_affine",
    "fake_quantize_learnable",
    "fake_quantize_nearest",
    "fake_quantize_nearest_scalar",
    "fake_quantize_uniform",
    "grad_scale",
    "int_dtype",
    "quantize_affine",
    "round_ste",
    "round_to_power_of_two",
    "sign_ste",
    "straight_through",
    "LIFOutput",
    "LIFState",
    "NeuronSpec",
    "StateOps",
    "exp_leak",
    "lif",
    "lif_fused",
    "lif_loop",
    "lif_recurrent",
    "lif_step",
    "neuron_sequence",
    "neuron_step",
    "spike",
    "CellQuantizers",
    "CellWeights",
    "gru_cell",
    "lstm_cell",
    "recurrent_sequence",
    "rnn_cell",
]
