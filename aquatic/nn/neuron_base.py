"""What the spiking layers share: neuron parameters, their quantizers, and state.

A neuron layer holds each decay either as a time constant (``tau_mem``, ``tau_syn``, in
time steps) or as a decay per step (``alpha_mem``, ``alpha_syn``), whichever the user
gave; the other name is ``None``. Forward uses :math:`\\alpha = e^{-1/\\tau}`.

Quantizers (from the :class:`~aquatic.QConfig`):

- ``QConfig.tau`` quantizes ``tau_mem``/``tau_syn`` when the layer holds time constants;
- ``QConfig.alpha`` quantizes ``alpha_mem``/``alpha_syn``: the given decays, or the
  decays computed from the (quantized) time constants, so a bit-shift decay applies
  whichever way the layer was built;
- ``QConfig.threshold``, ``QConfig.bias`` and ``QConfig.weight`` (recurrent weights);
- ``QConfig.state`` builds one quantizer per state variable, ``"v_mem"`` and (with a
  synaptic state) ``"i_syn"``: the membrane is quantized after its integration and
  before the spike decision, the synaptic current after its update (see
  :mod:`aquatic.functional.neurons`).

Decays on a quantized state: when the decay's quantizer knows how a chip applies it to
an integer state and the state is quantized, the layer decays the state by that rule
on the state's grid (see :mod:`aquatic.nn.grid_decay`).

While training, decays are kept in ``[0, 1]`` (time constants below ``1e-3`` steps act
as ``1e-3``).
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn

from aquatic.functional.neuron_checks import check_checkpoint, check_max_spikes
from aquatic.functional.neuron_checks import check_method, check_reset
from aquatic.functional.neuron_types import TAU_MIN, LIFOutput, LIFState, NeuronSpec, StateOps
from aquatic.functional.surrogate import Surrogate, check_surrogate
from aquatic.nn.base import QuantizedModule, eval_mode
from aquatic.nn.grid_decay import GridDecay, GridState
from aquatic.nn.neuron_options import (
    Bias,
    Value,
    check_loaded_neuron,
    check_min_v_mem,
    describe,
    options_repr,
    register_bias,
    register_decay,
    register_threshold,
    check_quantized_threshold,
)
from aquatic.qconfig import QConfig

__all__ = ["NeuronModule"]

# The state operations of a layer without quantizers (a NamedTuple: one value serves all).
_NO_STATE_OPS = StateOps()


class NeuronModule(QuantizedModule):
    """Base class of the spiking layers (``LIF``, ``IAF``, ``ExpLeak``, ...).

    A subclass's constructor passes its arguments to :meth:`_setup_neuron`, which
    checks and stores them; three class attributes say what kind of neurons it has.
    :meth:`spec` then returns what a forward pass computes with, quantized, as one
    :class:`~aquatic.functional.NeuronSpec` that the functions of
    :mod:`aquatic.functional.neurons` run.
    """

    #: Whether the membrane leaks (``tau_mem``/``alpha_mem``); without, ``alpha_mem = 1``.
    _leaky = True
    #: Whether the neurons spike (threshold, reset, surrogate, ...); without, the layer
    #: returns the membrane.
    _spiking = True
    #: Whether the layer runs whole sequences (``persistent_state``, ``record_states``,
    #: ``method``, the final state kept on the layer).
    _sequence = True
    #: Overridden by the argument of layers that run sequences.
    persistent_state = False
    #: Loihi's conventions (see :class:`~aquatic.functional.NeuronSpec`); ``LIF`` takes
    #: them as arguments, the other layers keep these defaults.
    strict_threshold = False
    input_after_decay = False
    input_delay = False

    _quantized_params = {
        "tau_mem": "tau",
        "tau_syn": "tau",
        "alpha_mem": "alpha",
        "alpha_syn": "alpha",
        "threshold": "threshold",
        "bias": "bias",
    }
    _quantizes_output = False

    # -- construction ----------------------------------------------------------------
    def _setup_neuron(
        self,
        *,
        tau_mem: Optional[Value] = None,
        tau_syn: Optional[Value] = None,
        threshold: Value = 1.0,
        reset: str = "subtract",
        alpha_mem: Optional[Value] = None,
        alpha_syn: Optional[Value] = None,
        surrogate: Optional[Surrogate] = None,
        max_spikes: int = 1,
        min_v_mem: Optional[float] = None,
        norm_input: bool = False,
        bias: Bias = None,
        train_decay: bool = False,
        train_threshold: bool = False,
        detach_reset: bool = False,
        persistent_state: bool = False,
        record_states: bool = False,
        method: str = "auto",
        checkpoint: Optional[int] = None,
        qconfig: Optional[QConfig] = None,
    ) -> None:
        """Check and store the constructor arguments the neuron layers share.

        The arguments are those of the layers' constructors (described in
        :data:`~aquatic.nn.neuron_options.NEURON_ARGS`); what a layer does not take
        keeps its default here. The class attributes ``_leaky``, ``_spiking`` and
        ``_sequence`` say which of them apply: ``tau_mem``/``alpha_mem`` is required
        when leaky; threshold and spike options are stored when spiking; the sequence
        options when the layer runs sequences. Quantizers are built last, from what
        the layer holds.
        """
        register_decay(self, "mem", tau_mem, alpha_mem, train_decay, required=self._leaky)
        register_decay(self, "syn", tau_syn, alpha_syn, train_decay, required=False)
        if self._spiking:
            register_threshold(self, threshold, train_threshold)
        else:
            self.register_buffer("threshold", None)
        register_bias(self, bias)
        if self._spiking:
            self.reset = check_reset(reset)
            self.surrogate = check_surrogate(surrogate)
            self.max_spikes = check_max_spikes(max_spikes)
        self.min_v_mem = check_min_v_mem(min_v_mem)
        if self._spiking:
            self.detach_reset = bool(detach_reset)
        self.norm_input = bool(norm_input)
        if self._sequence:
            self.method = check_method(method)
            self.checkpoint = check_checkpoint(checkpoint)
            self.persistent_state = bool(persistent_state)
            self.record_states = bool(record_states)
            self.register_buffer("v_mem", None, persistent=False)
            self.register_buffer("i_syn", None, persistent=False)
            self.recordings: Dict[str, Tensor] = {}
        self._setup_quantizers(qconfig)

    def _setup_quantizers(self, qconfig: Optional[QConfig]) -> None:
        self._quantized_states = ("v_mem", "i_syn") if self.synaptic else ("v_mem",)
        self._init_quantizers(qconfig)
        if qconfig is not None and qconfig.alpha is not None:
            # Decays computed from time constants are quantized as decays too.
            for kind in ("mem", "syn"):
                if getattr(self, f"tau_{kind}") is not None:
                    self.quantizers[f"alpha_{kind}"] = qconfig.alpha()

    # -- values used by forward --------------------------------------------------------
    @property
    def synaptic(self) -> bool:
        """Whether the neurons have a synaptic current state (``tau_syn``/``alpha_syn``)."""
        return self.tau_syn is not None or self.alpha_syn is not None

    def decay(self, kind: str = "mem") -> Optional[Tensor]:
        """The decay ``alpha_mem`` or ``alpha_syn`` as forward uses it (quantized), or ``None``."""
        if kind not in ("mem", "syn"):
            raise ValueError(f"kind must be 'mem' or 'syn', got {kind!r}")
        tau = getattr(self, f"tau_{kind}")
        name = f"alpha_{kind}"
        if tau is not None:
            # the bits of exp(-1.0 / tau), in (0, 1] or nan: only a quantizer's needs the clamp
            inverse = torch.reciprocal(self.quantized(f"tau_{kind}").clamp(min=TAU_MIN))
            alpha = torch.exp(torch.neg(inverse))
            if name not in self.quantizers:
                return alpha
            alpha = self.quantizers[name](alpha)
        elif getattr(self, name) is not None:
            alpha = self.quantized(name)
        else:
            return None
        return alpha.clamp(0.0, 1.0)

    def spec(self) -> NeuronSpec:
        """What a forward pass computes with, quantized: a
        :class:`~aquatic.functional.NeuronSpec`.

        The decays (:meth:`decay`; ``alpha_mem = 1`` without a leak), threshold and bias
        passed through their quantizers, the options, and the state operations
        (:meth:`state_ops`). Forward builds it once per call and runs it with
        :func:`~aquatic.functional.neurons.neuron_sequence` (or
        :func:`~aquatic.functional.neurons.neuron_step`,
        :func:`~aquatic.functional.neurons.lif_recurrent`); the integer conversion and
        the exports read it. Quantizers run as in forward: in training mode, their
        observers see the parameters (use ``eval()`` or :func:`aquatic.nn.base.eval_mode`
        to read without that).

        Example:
            >>> from aquatic.functional import neuron_sequence
            >>> from aquatic.nn import LIF
            >>> lif = LIF(alpha_mem=0.5, threshold=0.8, max_spikes=2)
            >>> spec = lif.spec()
            >>> spec.alpha_mem, spec.threshold, spec.max_spikes, spec.synaptic
            (tensor(0.5000), tensor(0.8000), 2, False)
            >>> x = torch.rand(2, 5, 3)
            >>> torch.equal(neuron_sequence(x, spec).output, lif(x))
            True
        """
        alpha_mem = self.decay("mem") if self._leaky else 1.0
        alpha_syn = self.decay("syn")
        threshold = self.quantized("threshold")
        if self._spiking and "threshold" in self.quantizers:
            check_quantized_threshold(self, self.threshold, threshold)
        bias = self.quantized("bias")
        ops = self.state_ops()
        if not self._spiking:
            return NeuronSpec(
                alpha_mem,
                alpha_syn,
                None,
                bias,
                min_v_mem=self.min_v_mem,
                norm_input=self.norm_input,
                spiking=False,
                state_ops=ops,
            )
        return NeuronSpec(
            alpha_mem,
            alpha_syn,
            threshold,
            bias,
            reset=self.reset,
            surrogate=self.surrogate,
            max_spikes=self.max_spikes,
            min_v_mem=self.min_v_mem,
            norm_input=self.norm_input,
            detach_reset=self.detach_reset,
            spiking=True,
            state_ops=ops,
            strict_threshold=self.strict_threshold,
            input_after_decay=self.input_after_decay,
            input_delay=self.input_delay,
        )

    def neuron_params(self) -> Dict[str, Optional[Tensor]]:
        """``alpha_mem``, ``alpha_syn``, ``threshold`` and ``bias`` as forward uses them.

        .. deprecated::
            Use :meth:`spec`, whose fields of these names hold the same values.
        """
        warnings.warn(
            "NeuronModule.neuron_params() is deprecated; use spec() (its fields alpha_mem, "
            "alpha_syn, threshold and bias hold the same values)",
            DeprecationWarning,
            stacklevel=2,
        )
        spec = self.spec()
        return {
            "alpha_mem": spec.alpha_mem,
            "alpha_syn": spec.alpha_syn,
            "threshold": spec.threshold,
            "bias": spec.bias,
        }

    def _state_quantizer(self, name: str):
        return self.quantizers[name] if name in self.quantizers else None

    def decay_quantizer(self, kind: str = "mem") -> Optional[nn.Module]:
        """The quantizer that decides decay ``kind`` (``"mem"``/``"syn"``), or ``None``.

        ``alpha_{kind}``'s quantizer when there is one (it is applied last), else the
        quantizer of ``tau_{kind}``.

        Example:
            >>> from aquatic import QConfig
            >>> from aquatic.nn import LIF
            >>> from aquatic.quantizers import BitShiftDecay
            >>> q = QConfig(tau=BitShiftDecay.with_args(bits=4, param="tau"))
            >>> LIF(tau_mem=10.0, qconfig=q).decay_quantizer("mem")
            BitShiftDecay(bits=4, param='tau')
            >>> print(LIF(tau_mem=10.0).decay_quantizer("mem"))
            None
        """
        for name in (f"alpha_{kind}", f"tau_{kind}"):
            if name in self.quantizers:
                return self.quantizers[name]
        return None

    def _state_decay(self, kind: str, state: str) -> Optional[Callable]:
        decay_quantizer = self.decay_quantizer(kind)
        state_quantizer = self._state_quantizer(state)
        if (
            state_quantizer is None
            or decay_quantizer is None
            or decay_quantizer.decay_state is None
        ):
            return None
        return GridDecay(decay_quantizer, state_quantizer)

    def state_ops(self) -> StateOps:
        """The state quantizers and decay functions a forward pass hands to the neurons.

        A decay function is there for a decay whose quantizer has an integer rule
        (``decay_state``) when its state is quantized (see :mod:`aquatic.nn.grid_decay`).

        Example:
            >>> from aquatic import QConfig
            >>> from aquatic.nn import LIF
            >>> from aquatic.quantizers import BitShiftDecay, UniformQuantizer
            >>> q = QConfig(
            ...     alpha=BitShiftDecay.with_args(bits=4),
            ...     state=UniformQuantizer.with_args(bits=16, scale=0.25),
            ... )
            >>> ops = LIF(tau_mem=10.0, qconfig=q).state_ops()
            >>> ops.quantize_v_mem is not None, ops.decay_v_mem is not None, ops.decay_i_syn
            (True, True, None)
        """
        if not self.quantizers:
            return _NO_STATE_OPS
        v_mem, i_syn = self._state_quantizer("v_mem"), self._state_quantizer("i_syn")
        return StateOps(
            quantize_v_mem=None if v_mem is None else GridState(v_mem),
            quantize_i_syn=None if i_syn is None else GridState(i_syn),
            decay_v_mem=self._state_decay("mem", "v_mem"),
            decay_i_syn=self._state_decay("syn", "i_syn"),
        )

    @torch.no_grad()
    def quantize_params(self) -> Dict[str, Tensor]:
        """The quantized values of every quantized parameter, as ``forward`` uses them.

        Decays computed from quantized time constants are listed as ``alpha_mem`` /
        ``alpha_syn`` when ``QConfig.alpha`` quantizes them. Quantizers run in eval mode.
        """
        result = {}
        with eval_mode(self.quantizers.values()):
            for name in self.quantizers:
                if name == "activation" or name in self._quantized_states:
                    continue
                if name.startswith("alpha_") and getattr(self, name) is None:
                    result[name] = self.decay(name[len("alpha_") :])
                else:
                    result[name] = self.quantized(name)
        return result

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_loaded_neuron(self, state_dict, prefix)  # before anything is copied
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- state -------------------------------------------------------------------------
    def reset_states(self) -> None:
        """Forget the stored state: the next forward starts from zero."""
        self.v_mem = None
        self.i_syn = None
        self.recordings = {}

    def _initial_state(self, input: Tensor, state) -> Optional[LIFState]:
        if state is not None or not self.persistent_state or self.v_mem is None:
            return state
        batch_shape = (input.shape[0],) + tuple(input.shape[2:])
        if tuple(self.v_mem.shape) != batch_shape:
            return None  # a new batch size or input shape starts from zero
        i_syn = None if self.i_syn is None else self.i_syn.to(input.dtype)
        return LIFState(self.v_mem.to(input.dtype), i_syn)

    def _store(self, result: LIFOutput) -> None:
        self.v_mem = result.state.v_mem.detach()
        if result.state.i_syn is not None or self.i_syn is not None:  # (None stays None)
            self.i_syn = None if result.state.i_syn is None else result.state.i_syn.detach()
        if self.record_states:
            self.recordings = {"v_mem": result.v_mem}
            if result.i_syn is not None:
                self.recordings["i_syn"] = result.i_syn

    # -- repr ----------------------------------------------------------------------------
    def _params_repr(self) -> str:
        parts = []
        for name in ("tau_mem", "alpha_mem", "tau_syn", "alpha_syn", "threshold"):
            value = getattr(self, name, None)
            if value is not None:
                trained = " (trained)" if isinstance(value, nn.Parameter) else ""
                parts.append(f"{name}={describe(value.detach())}{trained}")
        return ", ".join(parts)

    def _options_repr(self) -> str:
        return options_repr(self)

    def extra_repr(self) -> str:
        params = self._params_repr()
        return f"{params + ', ' if params else ''}{self._options_repr()}{self._quant_repr()}"
