"""Biases on the accumulator grid, as integer hardware adds them.

An integer layer computes :math:`\\sum_k q_{x,k}\\, q_{w,k}` in an int32 accumulator,
in units of :math:`s_x s_w` (input scale times weight scale), and adds the bias there.
So the bias must be an integer multiple of that unit (Jacob et al. 2018, "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
section 2.4):

.. math::

    s_b = s_x\\, s_w, \\qquad z_b = 0, \\qquad
    q_b = \\mathrm{clamp}(\\mathrm{round}(b / s_b), -2^{31}, 2^{31} - 1)

With a per-channel weight scale, :math:`s_b` is per output channel too. The layer hands
:meth:`AccumulatorBiasQuantizer.quantize_bias` its input and its weight scale; the
quantizer knows the input scale from one of, in this order:

1. a quantizer linked with :meth:`~AccumulatorBiasQuantizer.follow_input` (for example
   the activation quantizer of the previous layer): exact, what integer deployment
   needs;
2. a fixed ``input_scale`` (inputs already integers, or images in steps of 1/255);
3. otherwise an observer of the layer's input, computing the scale that an ``input_bits``
   quantizer of the same kind would use: an estimate that suits training, while (1)
   makes the grids agree exactly.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn

from aquatic.functional.fake_quant_uniform import fake_quantize_uniform
from aquatic.functional.grid import Grid
from aquatic.observers import MovingAverageMinMaxObserver, RangeObserver
from aquatic.quantizers.base import Quantizer, check_bits
from aquatic.quantizers.state_checks import check_scale, describe

__all__ = ["AccumulatorBiasQuantizer"]


class AccumulatorBiasQuantizer(Quantizer):
    """Bias quantizer whose scale is the input scale times the weight scale (int32).

    Use it as a QConfig's ``bias`` field; the layer supplies the scales on every
    forward (see the module docstring). Called on its own, ``forward(bias)`` uses the
    bias scale of the layer's last forward pass, so ``layer.quantize_params()`` and
    :meth:`to_int` give what the last forward used.

    Args:
        bits: bit width of the signed bias codes, 2 to 32.
        input_scale: fixed scale of the layer's input; ``None`` to observe the input (or
            to follow a linked quantizer).
        input_bits: bit width assumed for the observed input.
        input_signed: whether the observed input's codes are signed.
        input_symmetric: whether the observed input's zero point is fixed at 0.
        input_observer: factory of the observer of the layer's input (``None``: a
            moving-average min/max observer, like :data:`aquatic.qconfig.int8`'s
            activations); called with the input range settings.

    Shape:
        - Input: the bias, ``(C,)``. Output: same shape and dtype.

    Example:
        >>> import aquatic
        >>> from aquatic.quantizers import UniformQuantizer
        >>> qconfig = aquatic.QConfig(
        ...     weight=UniformQuantizer.with_args(scale=0.5),
        ...     bias=AccumulatorBiasQuantizer.with_args(input_scale=0.25),
        ... )
        >>> layer = aquatic.nn.Linear(2, 1, qconfig=qconfig)
        >>> with torch.no_grad():
        ...     _ = layer.bias.fill_(0.3)
        >>> _ = layer(torch.zeros(1, 2))
        >>> layer.quantizers["bias"].qparams()["scale"]  # 0.25 * 0.5
        tensor(0.1250)
        >>> layer.quantize_params()["bias"]  # 0.3 on a 0.125 grid
        tensor([0.2500])
    """

    #: Layers hand this quantizer their input and weight scale (``quantize_bias``).
    follows_input_scale = True

    def __init__(
        self,
        bits: int = 32,
        input_scale: Optional[float] = None,
        input_bits: int = 8,
        input_signed: bool = False,
        input_symmetric: bool = False,
        input_observer: Optional[Callable[..., RangeObserver]] = None,
    ) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
            raise ValueError(f"bits must be an int from 2 to 32, got {bits!r}")
        self.bits = bits
        self.quant_min = -(2 ** (bits - 1))
        self.quant_max = 2 ** (bits - 1) - 1
        self.input_observer: Optional[RangeObserver] = None
        if input_scale is not None:
            if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float)):
                raise TypeError(f"input_scale must be a number or None, got {input_scale!r}")
            if not input_scale > 0 or input_scale == float("inf"):
                raise ValueError(f"input_scale must be positive and finite, got {input_scale!r}")
            self.register_buffer("input_scale", torch.tensor(float(input_scale)))
        else:
            self.input_scale = None
            check_bits(input_bits)
            if input_signed:
                low, high = -(2 ** (input_bits - 1)), 2 ** (input_bits - 1) - 1
            else:
                low, high = 0, 2**input_bits - 1
            factory = input_observer or MovingAverageMinMaxObserver
            self.input_observer = factory(quant_min=low, quant_max=high, symmetric=input_symmetric)
        # The bias scale of the last forward, for forward(bias), to_int and qparams.
        self.register_buffer("scale", torch.tensor(float("nan")))
        self._input_quantizer: Optional[nn.Module] = None

    def follow_input(self, quantizer: Optional[nn.Module]) -> "AccumulatorBiasQuantizer":
        """Take the input scale from ``quantizer`` (the one that produces the layer's input).

        The link is not part of the ``state_dict``: after loading into a new model, link
        again. ``None`` removes the link. Returns ``self``.

        Raises:
            TypeError: if ``quantizer`` has no ``grid()`` (nor ``qparams()``) giving a scale.
        """
        if quantizer is not None and not callable(getattr(quantizer, "grid", None)):
            raise TypeError(
                "follow_input needs a quantizer with a grid() (and qparams()) giving its "
                f"scale, got {type(quantizer).__name__}"
            )
        # Stored outside _modules so that the other layer's quantizer is not registered
        # (and saved, and moved) twice.
        self.__dict__["_input_quantizer"] = quantizer
        return self

    def _current_input_scale(self, input: Tensor) -> Tensor:
        if self._input_quantizer is not None:
            return self._input_quantizer.grid().scale.detach()
        if self.input_scale is not None:
            return self.input_scale
        observer = self.input_observer
        if self.observer_enabled and (self.training or not observer.initialized):
            observer(input.detach())
        return observer.calculate_qparams()[0]

    def quantize_bias(self, bias: Tensor, input: Tensor, weight_scale: Tensor) -> Tensor:
        """Fake-quantize ``bias`` on the grid ``input scale * weight_scale``.

        Args:
            bias: the layer's bias, ``(C,)``.
            input: the layer's input (observed when no input scale is known otherwise).
            weight_scale: the weight quantizer's scale, a scalar or one per output channel.
        """
        scale = (self._current_input_scale(input) * weight_scale.detach()).float()
        if self.scale.shape == scale.shape:
            self.scale.copy_(scale)
        else:
            self.scale = scale.clone()
        if not self.fake_quant_enabled:
            return bias
        return self._fake_quantize(bias, scale)

    def observe(self, input: Tensor) -> None:
        """Nothing to observe in the bias itself; the scales come from the layer."""

    def _scale(self) -> Tensor:
        if not torch.compiler.is_compiling() and bool(torch.isnan(self.scale).any()):
            raise RuntimeError(
                "AccumulatorBiasQuantizer has no bias scale yet: it is set by the layer's "
                "forward pass (input scale times weight scale); run one first"
            )
        return self.scale

    def _fake_quantize(self, input: Tensor, scale: Tensor) -> Tensor:
        ch_axis = 0 if scale.dim() == 1 else None
        return fake_quantize_uniform(input, scale, None, self.quant_min, self.quant_max, ch_axis)

    def fake_quantize(self, input: Tensor) -> Tensor:
        return self._fake_quantize(input, self._scale())

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """int32 codes of ``input`` on the grid of the last forward."""
        scale = self._scale()
        inv = torch.reciprocal(scale)
        codes = torch.round(input.float() * (inv if scale.dim() == 0 else inv.reshape(-1)))
        return codes.to(torch.int64).clamp_(self.quant_min, self.quant_max).to(torch.int32)

    def grid(self) -> Grid:
        """The bias grid of the last forward: zero point 0, the int range, per output
        channel (``ch_axis`` 0) when the weight scale is."""
        try:
            scale = self._scale()
        except RuntimeError as error:
            raise self._no_range(str(error)) from None
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return Grid(scale, zero_point, self.quant_min, self.quant_max, 0 if scale.dim() else None)

    def qparams(self) -> Dict[str, Any]:
        """``scale`` (of the last forward), zero point 0, the int range, ``ch_axis``."""
        return self.grid().qparams()

    def _check_loaded(self, name, value, own):
        if name == "input_scale":
            check_scale(value, describe(value), name="input_scale")

    def _prepare_load(self, state_dict, prefix):
        saved = state_dict.get(prefix + "scale")
        if saved is not None and saved.shape != self.scale.shape:
            self.scale = torch.empty_like(saved, device=self.scale.device)

    def extra_repr(self) -> str:
        if self._input_quantizer is not None:
            source = "input_scale=followed"
        elif self.input_scale is not None:
            source = f"input_scale={self.input_scale.item():g}"
        else:
            source = "input_scale=observed"
        return f"bits={self.bits}, {source}" + self._switch_repr()
