"""SynSense DYNAP-CNN / Speck: QAT preset, integer simulator and export."""

from aquatic.hw._dynapcnn_sim import STATE_BITS, WEIGHT_BITS, check_spec, simulate

__all__ = ["STATE_BITS", "WEIGHT_BITS", "check_spec", "simulate"]
