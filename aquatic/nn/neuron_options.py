r"""The constructor arguments the spiking layers share: their checks and their documentation.

:meth:`aquatic.nn.NeuronModule._setup_neuron` takes them all; the functions here check
them and register the decays, threshold and bias on the layer.
:func:`document_neuron_args` writes each layer's ``Args:`` section from
:data:`NEURON_ARGS`, in the order of the layer's signature, so a shared argument is
described in one place.
"""

from __future__ import annotations

import inspect
import math
import textwrap
from typing import Callable, Dict, Optional, Sequence, Type, TypeVar, Union

import torch
from torch import Tensor, nn

__all__ = [
    "Value",
    "Bias",
    "NEURON_ARGS",
    "document_neuron_args",
    "as_value_tensor",
    "describe",
    "options_repr",
    "check_min_v_mem",
    "check_decay",
    "check_threshold",
    "check_bias",
    "check_loaded_neuron",
    "register_decay",
    "register_threshold",
    "check_quantized_threshold",
    "register_bias",
]

#: A neuron parameter as users give it: a number, one per neuron, or a tensor.
Value = Union[float, Sequence[float], Tensor]
#: ``bias=``: ``None``/``False`` (none), ``True`` (a trainable scalar from 0) or a value.
Bias = Union[bool, Value, None]

#: The description of each shared constructor argument (Google style, without the name).
NEURON_ARGS: Dict[str, str] = {
    "tau_mem": "membrane time constant in time steps (> 0), a number or one per neuron.",
    "tau_syn": "synaptic time constant in time steps; ``None`` for no synaptic state.",
    "threshold": "firing threshold (> 0), a number or one per neuron.",
    "reset": '``"subtract"`` (subtract the threshold per spike) or ``"zero"``.',
    "alpha_mem": "membrane decay per step in ``[0, 1]``, instead of ``tau_mem``.",
    "alpha_syn": "synaptic decay per step, instead of ``tau_syn``.",
    "surrogate": "surrogate gradient, e.g. ``aquatic.nn.FastSigmoid(slope=10)`` "
    "(default :class:`~aquatic.nn.SingleExponential`).",
    "max_spikes": "most spikes per neuron and step; above 1 a neuron emits "
    r":math:`\lfloor v/\vartheta \rfloor` spikes, capped.",
    "min_v_mem": "lower bound of the membrane potential after the reset.",
    "norm_input": r"scale the input by :math:`1 - \alpha_{mem}` (sinabs' default).",
    "bias": "constant input per step: ``True`` for a trainable scalar starting at 0, or "
    "its initial value (a number or one per neuron); trainable.",
    "train_decay": "make the given time constants (or decays) trainable parameters.",
    "train_threshold": "make the threshold a trainable parameter.",
    "detach_reset": "no gradient through the spikes in the reset term (snnTorch's rule).",
    "persistent_state": "start each forward from the state the previous one ended in "
    "(streaming); otherwise from zero. A new batch size starts from zero.",
    "record_states": "keep the membrane (and synaptic current) of every step in "
    "``self.recordings``.",
    "method": '``"auto"``, ``"fused"`` or ``"loop"``: which implementation runs (see '
    ":mod:`aquatic.nn.lif`).",
    "checkpoint": "``None``, or keep the state only every this many steps for backward and "
    "recompute the membranes between (less memory on long sequences, about one more "
    "forward pass of time; the same gradients); the fused float sequence only "
    "(:func:`~aquatic.functional.lif_fused`).",
    "strict_threshold": r"spike when :math:`v > \vartheta` (Loihi's test) rather than "
    r":math:`v \ge \vartheta`; binary spikes only.",
    "input_after_decay": "add the input to the synaptic current after its decay, as "
    "Loihi's CUBA neuron does, instead of decaying it in its arrival step.",
    "input_delay": "receive the input one step late (zero at the first step), as a Loihi "
    "connection delivers it (lava-nc's Dense; lava-dl's ``delay_shift`` delays the output "
    "instead, which differs with a bias); not with ``persistent_state``.",
    "qconfig": "quantizers for ``tau``, ``alpha``, ``threshold``, ``bias`` and ``state``.",
}

#: The line of a layer's docstring that :func:`document_neuron_args` replaces.
ARGS_MARKER = "%(neuron_args)s"

_Class = TypeVar("_Class", bound=type)


def document_neuron_args(**own: str) -> Callable[[Type], Type]:
    """Class decorator: fill the ``%(neuron_args)s`` line of the docstring with the
    ``Args:`` lines of the class's constructor, in signature order.

    Each argument is described by ``own`` (the class's own wording or arguments), else
    by :data:`NEURON_ARGS`. An argument described in neither is an error at import.
    """

    def decorate(cls: _Class) -> _Class:
        names = list(inspect.signature(cls.__init__).parameters)[1:]
        lines = []
        for name in names:
            text = own.get(name, NEURON_ARGS.get(name))
            if text is None:
                raise TypeError(f"{cls.__name__}: argument {name!r} has no description")
            lines += textwrap.wrap(
                f"{name}: {text}",
                width=88,
                initial_indent=" " * 8,
                subsequent_indent=" " * 12,
                break_long_words=False,
                break_on_hyphens=False,
            )
        unknown = set(own) - set(names)
        if unknown or cls.__doc__ is None or ARGS_MARKER not in cls.__doc__:
            raise TypeError(
                f"{cls.__name__}: the docstring needs an {ARGS_MARKER} line and own "
                f"descriptions only of its arguments (unknown: {sorted(unknown)})"
            )
        cls.__doc__ = cls.__doc__.replace(" " * 8 + ARGS_MARKER, "\n".join(lines))
        return cls

    return decorate


def as_value_tensor(name: str, value: Value) -> Tensor:
    """``value`` as a new tensor of the default float dtype (a float tensor keeps its dtype)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a tensor, got {value!r}")
    try:
        tensor = torch.as_tensor(value, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number, a sequence or a tensor, got {value!r}")
    if isinstance(value, Tensor) and value.is_floating_point():
        tensor = value.detach().to(value.dtype)
    return tensor.clone()


def describe(value: Tensor) -> str:
    """A number, or the shape of a tensor of several, for messages and ``repr``."""
    return f"{value.item():g}" if value.numel() == 1 else f"shape {tuple(value.shape)}"


def check_decay(name: str, value: Tensor, trained: bool = False) -> None:
    """Raise a ``ValueError`` unless ``value`` is a valid ``tau_*`` (> 0) or ``alpha_*``
    (in ``[0, 1]``). A ``trained`` value need only be a number (not NaN, and a finite
    alpha): forward keeps decays in ``[0, 1]`` and time constants at least ``1e-3``."""
    kind = name.split("_", 1)[1]
    value = value.detach()
    if name.startswith("tau_"):
        if bool(torch.isnan(value).any()) or (not trained and bool((value <= 0).any())):
            raise ValueError(
                f"{name} must be > 0 (a time constant in time steps), got "
                f"{describe(value)}; for a neuron without leak use IAF or alpha_{kind}=1.0"
            )
    elif not (
        bool(torch.isfinite(value).all()) if trained else bool(((value >= 0) & (value <= 1)).all())
    ):
        raise ValueError(
            f"{name} must lie in [0, 1] (the fraction kept per step), got "
            f"{describe(value)}; to give a time constant use tau_{kind}= instead"
        )


def check_threshold(value: Tensor) -> None:
    """Raise a ``ValueError`` unless every threshold is positive and finite."""
    value = value.detach()
    if not bool(torch.isfinite(value).all()) or bool((value <= 0).any()):
        raise ValueError(
            f"threshold must be positive and finite, got {describe(value)}; "
            "scale the input instead of using a negative threshold"
        )


def check_bias(value: Tensor) -> None:
    """Raise a ``ValueError`` if a bias holds NaN or inf."""
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"bias must be finite, got {describe(value.detach())} holding NaN or inf")


def check_loaded_neuron(module: nn.Module, state_dict: Dict[str, Tensor], prefix: str) -> None:
    """Check the decays, threshold and bias ``module`` is about to load from ``state_dict``
    as its constructor checks them, raising a ``ValueError`` that names the key.

    Trained decays (parameters) are checked as forward uses them: it keeps alphas in
    ``[0, 1]`` and time constants at least ``1e-3``, so there only NaN (and an infinite
    alpha) is refused."""
    for name in ("tau_mem", "tau_syn", "alpha_mem", "alpha_syn", "threshold", "bias"):
        value = state_dict.get(prefix + name)
        if not isinstance(value, Tensor):
            continue
        try:
            if name == "threshold":
                check_threshold(value)
            elif name == "bias":
                check_bias(value)
            else:
                check_decay(name, value, trained=name in module._parameters)
        except ValueError as error:
            raise ValueError(
                f"{type(module).__name__} cannot load state_dict[{prefix + name!r}]: {error}. "
                "The checkpoint holds a value the constructor refuses: fix or drop that "
                "entry, or load a state_dict saved from a working model"
            ) from None


def register_decay(
    module: nn.Module,
    kind: str,
    tau: Optional[Value],
    alpha: Optional[Value],
    trainable: bool,
    required: bool,
) -> None:
    """Register decay ``kind`` (``"mem"``/``"syn"``) on ``module`` as ``tau_{kind}`` or
    ``alpha_{kind}``, whichever was given (the other is ``None``), checked; a parameter
    when ``trainable``, else a buffer. Neither given: both ``None``, unless ``required``."""
    tau_name, alpha_name = f"tau_{kind}", f"alpha_{kind}"
    if tau is not None and alpha is not None:
        raise ValueError(
            f"give either {tau_name} (time constant in steps) or {alpha_name} "
            f"(decay per step), not both"
        )
    if tau is None and alpha is None:
        if required:
            raise ValueError(
                f"{type(module).__name__} needs {tau_name}= (time constant in time steps) "
                f"or {alpha_name}= (decay per step, exp(-1/{tau_name}))"
            )
        module.register_buffer(tau_name, None)
        module.register_buffer(alpha_name, None)
        return
    if tau is not None:
        value = as_value_tensor(tau_name, tau)
        check_decay(tau_name, value)
        name, other = tau_name, alpha_name
    else:
        value = as_value_tensor(alpha_name, alpha)
        check_decay(alpha_name, value)
        name, other = alpha_name, tau_name
    module.register_buffer(other, None)
    if trainable:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


def register_threshold(module: nn.Module, threshold: Value, trainable: bool) -> None:
    """Register the (positive, finite) ``threshold``: a parameter when ``trainable``."""
    value = as_value_tensor("threshold", threshold)
    check_threshold(value)
    if trainable:
        module.threshold = nn.Parameter(value)
    else:
        module.register_buffer("threshold", value)


def check_quantized_threshold(module: nn.Module, threshold: Tensor, quantized: Tensor) -> None:
    """Raise a ``ValueError`` if the threshold quantizer turned a (positive) threshold into
    one that is not positive: a threshold of 0 fires at every step (and divides by zero
    in the spike count of ``max_spikes > 1``). Skipped while ``torch.compile`` traces."""
    if torch.compiler.is_compiling() or bool((quantized > 0).all()):
        return
    quantizer = module.quantizers["threshold"]
    quantized = quantized.detach()
    threshold = threshold.detach().expand_as(quantized) if threshold.numel() == 1 else threshold
    index = int((quantized.flatten() > 0).logical_not().nonzero()[0])
    where = "" if quantized.numel() == 1 else f"[{index}]"
    raise ValueError(
        f"{type(module).__name__}: its threshold quantizer ({type(quantizer).__name__}) "
        f"rounds threshold{where} = {float(threshold.flatten()[index]):g} to "
        f"{float(quantized.flatten()[index]):g}, which is not positive (a neuron would fire "
        "at every step). Quantize thresholds on a finer grid (more bits, a smaller shared "
        "scale, or per neuron), or raise the smallest threshold above half a step of that grid"
    )


def register_bias(module: nn.Module, bias: Bias) -> None:
    """Register ``bias`` as a parameter (a scalar 0 for ``True``), or ``None``."""
    if bias is None or bias is False:
        module.register_parameter("bias", None)
    elif bias is True:
        module.bias = nn.Parameter(torch.zeros(()))
    else:
        module.bias = nn.Parameter(as_value_tensor("bias", bias))


def check_min_v_mem(min_v_mem: Optional[float]) -> Optional[float]:
    """``min_v_mem`` as a float, or ``None``."""
    if min_v_mem is None:
        return None
    if isinstance(min_v_mem, bool) or not isinstance(min_v_mem, (int, float)):
        raise TypeError(f"min_v_mem must be a number or None, got {min_v_mem!r}")
    if math.isnan(min_v_mem):
        raise ValueError("min_v_mem must be a number or None, got nan")
    return float(min_v_mem)


def options_repr(module: nn.Module) -> str:
    """The spiking options of a neuron layer for its ``repr``: ``reset`` and
    ``surrogate``, then each other option that differs from its default.

    Example:
        >>> from aquatic.nn import LIF
        >>> options_repr(LIF(tau_mem=5.0, max_spikes=3, norm_input=True))
        "reset='subtract', surrogate=SingleExponential(width=0.5, scale=1), max_spikes=3, norm_input=True"
    """
    parts = [f"reset={module.reset!r}", f"surrogate={module.surrogate!r}"]
    if module.max_spikes != 1:
        parts.append(f"max_spikes={module.max_spikes}")
    if module.min_v_mem is not None:
        parts.append(f"min_v_mem={module.min_v_mem:g}")
    if module.detach_reset:
        parts.append("detach_reset=True")
    if module.norm_input:
        parts.append("norm_input=True")
    for name in ("strict_threshold", "input_after_decay", "input_delay"):
        if getattr(module, name):
            parts.append(f"{name}=True")
    return ", ".join(parts)
