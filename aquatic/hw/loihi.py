"""Intel Loihi (CUBA neurons, as lava-dl trains them): QAT preset, simulator and export."""

from aquatic.hw._loihi_sim import DECAY_BITS, STATE_BITS, W_SCALE, check_spec, simulate

__all__ = ["DECAY_BITS", "STATE_BITS", "W_SCALE", "check_spec", "simulate"]
