"""SynSense Xylo: QAT preset, bit-exact simulator and export."""

from aquatic.hw._xylo_sim import SPEC_KEYS, XYLO_AUDIO_2, XyloLimits, check_spec, simulate

__all__ = ["SPEC_KEYS", "XYLO_AUDIO_2", "XyloLimits", "check_spec", "simulate"]
