"""Model-wide switches for observers and fake quantization.

Each function flips the switch on every quantizer in a model at once and returns a
handle that also works as a context manager, restoring the previous settings on exit::

    aquatic.freeze_observers(model)          # from now on
    with aquatic.disable_fake_quant(model):  # only inside the block
        float_out = model(x)
"""

from __future__ import annotations

from typing import List, Tuple

from torch import nn

from aquatic.quantizers.base import Quantizer

__all__ = [
    "freeze_observers",
    "enable_observers",
    "disable_fake_quant",
    "enable_fake_quant",
    "trust_weight_versions",
]


class _Switch:
    """Handle returned by the switch functions; a context manager that restores."""

    def __init__(self, model: nn.Module, attribute: str, value: bool) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
        self._saved: List[Tuple[Quantizer, bool]] = []
        for module in model.modules():
            if isinstance(module, Quantizer):
                self._saved.append((module, getattr(module, attribute)))
                setattr(module, attribute, value)
        self._attribute = attribute

    def __enter__(self) -> "_Switch":
        return self

    def __exit__(self, *exc) -> None:
        for module, value in self._saved:
            setattr(module, self._attribute, value)


def freeze_observers(model: nn.Module) -> _Switch:
    """Stop every quantizer in ``model`` from updating its ranges or initial values.

    Example:
        >>> import torch, aquatic
        >>> q = aquatic.quantizers.UniformQuantizer()
        >>> _ = q(torch.tensor([1.0]))
        >>> with aquatic.freeze_observers(q):
        ...     _ = q(torch.tensor([5.0]))
        >>> q.observer.max_val
        tensor(1.)
    """
    return _Switch(model, "observer_enabled", False)


def enable_observers(model: nn.Module) -> _Switch:
    """Let every quantizer in ``model`` update its ranges again."""
    return _Switch(model, "observer_enabled", True)


def disable_fake_quant(model: nn.Module) -> _Switch:
    """Make every quantizer in ``model`` pass its input through unchanged.

    Example:
        >>> import torch, aquatic
        >>> q = aquatic.quantizers.UniformQuantizer(bits=2, scale=1.0)
        >>> with aquatic.disable_fake_quant(q):
        ...     q(torch.tensor([0.3]))
        tensor([0.3000])
        >>> q(torch.tensor([0.3]))
        tensor([0.])
    """
    return _Switch(model, "fake_quant_enabled", False)


def enable_fake_quant(model: nn.Module) -> _Switch:
    """Make every quantizer in ``model`` quantize again."""
    return _Switch(model, "fake_quant_enabled", True)


def trust_weight_versions(model: nn.Module, trust: bool = True) -> _Switch:
    """Declare that the weights of ``model`` change only where PyTorch's version
    counters see it: an optimizer's step, in-place operations on the parameters
    themselves; not through ``weight.data`` or a tensor that shares its memory.

    A layer called again and again within a training step (at every time step of a
    sequence) gets the same quantized weight each time, quantized once
    (:class:`aquatic.quantizers.fused.Plan`). By default every repeat first compares
    the weight's bits with a copy, one pass over it, since edits through ``.data``
    leave the version as it is; with the versions trusted, a repeat skips that pass
    and the copy. Then an edit through ``.data`` between two calls goes unseen: the
    layer keeps its last quantized weight until the next version (the next optimizer
    step).

    Args:
        model: the model (or one quantizer) whose quantizers trust the versions.
        trust: ``False`` compares the bits again (the default of every quantizer).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``trust`` is not a bool.

    Example:
        >>> import torch, aquatic
        >>> layer = aquatic.nn.Linear(4, 3, qconfig=aquatic.qconfig.int8)
        >>> with aquatic.trust_weight_versions(layer):
        ...     outputs = [layer(torch.randn(2, 4)) for _ in range(5)]  # time steps
        >>> layer.quantizers["weight"].trusts_weight_versions
        False
    """
    if not isinstance(trust, bool):
        raise TypeError(f"trust must be True or False, got {trust!r}")
    return _Switch(model, "trusts_weight_versions", trust)
