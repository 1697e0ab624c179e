"""Model level: :func:`convert` a trained quantization-aware model to integer arithmetic."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from aquatic.walk import sequential_layers
from aquatic.integer.base import IntegerModule
from aquatic.integer.build_activation import settle_clamp
from aquatic.integer.convert_graph import convert_graph
from aquatic.integer.convert_module import PASSIVE, convert_module, input_spec, refuse_in_chain
from aquatic.integer.graph import IntegerGraph
from aquatic.integer.reading import check_observed
from aquatic.integer.model import IntegerModel

__all__ = ["convert"]


def _layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The leaf modules of (nested) ``nn.Sequential`` containers, with qualified names; a
    layer used twice is converted at each use (each use has an input grid of its own)."""
    return sequential_layers(model, default=type(model).__name__)


def _follows_graph(model: nn.Module) -> bool:
    """Whether ``model`` holds a container with its own ``forward`` (the model itself, or
    inside its ``nn.Sequential``): then it is converted as a traced graph."""
    for _, module in _layers(model):
        if (
            not isinstance(module, nn.Sequential)
            and list(module.children())
            and not hasattr(module, "quantizers")
        ):
            return True
    return False


def convert(
    model: nn.Module,
    example_input: Optional[Union[torch.Tensor, Tuple[torch.Tensor, ...]]] = None,
    input_scale: Optional[float] = None,
    input_zero_point: int = 0,
    input_range: Optional[Sequence[int]] = None,
    state_frac_bits: int = 16,
    require_exact: bool = False,
) -> Union[IntegerModel, IntegerGraph]:
    """An integer-arithmetic counterpart of a trained quantization-aware ``model``.

    ``model`` is an ``nn.Sequential`` (nested ones are walked) of aquatic layers and the
    modules between them (see the ``TypeError`` below for the list). Each becomes an
    integer module: integer accumulators certified to stay within int32, requantization
    by integer multiplier and shift (Jacob et al. 2018) with saturation, and spiking
    layers run on integer states (:mod:`aquatic.integer.spiking`). The result's
    ``forward`` takes and returns integer codes; :meth:`IntegerModel.quantize_input` and
    :meth:`IntegerModel.dequantize_output` convert at the edges.

    Any other model whose ``forward`` can be traced (a module of one's own with layers
    inside, an ``fx.GraphModule`` from :func:`aquatic.quantize`, or an ``nn.Sequential``
    holding one) is followed as a graph (:func:`aquatic.graph.trace`) and becomes an
    :class:`~aquatic.integer.IntegerGraph` with the same edge API; it needs
    ``example_input`` for its shapes. Residual additions, products and concatenations
    are requantized onto the grid of their :class:`aquatic.nn.Add` /
    :class:`~aquatic.nn.Mul` / :class:`~aquatic.nn.Cat` (or, without one, combined on a
    common grid of the inputs); see the deployment guide for the operations supported.

    The scale of the input comes from, in this order:

    1. a leading :class:`aquatic.nn.ActivationQuantizer` (in a graph: one that takes
       the input first, as :func:`aquatic.quantize` places it): ``quantize_input``
       quantizes as it does, so the integer model sees exactly the codes the float
       model saw;
    2. ``input_scale`` (with ``input_zero_point`` and ``input_range``, default
       ``(-128, 127)``): for data already on a grid, e.g. ``1/16`` for values ``k/16``;
    3. a model with spiking layers takes spike counts: scale 1, range ``(0, 255)``.

    In cases 2 and 3 the float model took the input unrounded, so ``quantize_input``
    raises for values off the grid. Otherwise ``convert`` raises a ``ValueError``.

    Agreement with the quantization-aware model (the same model, in eval mode): with
    power-of-two scales (and accumulators below :math:`2^{24}`, where float32 is exact)
    and, in spiking layers, quantized states, the integer model computes the same codes
    bit for bit; otherwise requantized codes may be one step apart (and spikes may then
    differ). ``integer_model.exact`` and ``integer_model.notes`` say which holds and why.

    Args:
        model: the trained model, quantized (aquatic layers with qconfigs).
        example_input: for a model that is not a chain: one batch of inputs (a tensor,
            or a tuple with one tensor per ``forward`` argument), run once in eval mode
            to read the graph's shapes. Not needed for ``nn.Sequential``.
        input_scale: scale of the input grid when no ``ActivationQuantizer`` leads.
        input_zero_point: zero point of the input codes (with ``input_scale``).
        input_range: ``(low, high)`` of the input codes, used to bound the accumulators.
        state_frac_bits: fractional bits below the unit step that spiking layers keep for
            a state that ``QConfig.state`` leaves in float.
        require_exact: raise a ``ValueError`` (listing the reasons) unless the integer
            model is exact.

    Returns:
        An :class:`~aquatic.integer.IntegerModel` (``nn.Sequential``), or an
        :class:`~aquatic.integer.IntegerGraph`.

    Raises:
        TypeError: a layer or operation has no integer counterpart (named, with the
            supported list), or a float ``torch.nn`` layer with weights.
        aquatic.graph.GraphCaptureError: (a ``TypeError``) the ``forward`` cannot be
            traced; names the file, line and source, and the fixes.
        ValueError: a quantizer never saw data (no range), the input scale is unknown,
            ``example_input`` is missing for a graph, or a layer's quantization has no
            integer form (named with the fix).
        aquatic.integer.IntegerOverflowError: an accumulator could exceed int32 for some
            input in range (names the layer and the bound).

    Example:
        >>> import torch, aquatic
        >>> from torch import nn
        >>> from aquatic.quantizers import UniformQuantizer
        >>> pow2 = UniformQuantizer.with_args(bits=8, power_of_two=True)
        >>> qconfig = aquatic.QConfig(weight=pow2, activation=pow2)
        >>> layer = aquatic.nn.Linear(4, 3, bias=False, qconfig=qconfig)
        >>> model = nn.Sequential(layer, nn.ReLU())
        >>> x = torch.randint(-8, 8, (16, 4)) / 8.0  # inputs on a grid of 1/8
        >>> _ = model(x); model = model.eval()
        >>> integer_model = aquatic.convert(model, input_scale=1 / 8)
        >>> out = integer_model(integer_model.quantize_input(x))
        >>> out.dtype, torch.equal(integer_model.dequantize_output(out), model(x))
        (torch.int32, True)
        >>> integer_model.exact
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert takes an nn.Module, got {type(model).__name__}")
    if isinstance(state_frac_bits, bool) or not isinstance(state_frac_bits, int):
        raise TypeError(f"state_frac_bits must be an int, got {state_frac_bits!r}")
    if not 0 <= state_frac_bits <= 24:
        raise ValueError(f"state_frac_bits must be in 0..24, got {state_frac_bits}")
    if _follows_graph(model):
        graph = convert_graph(
            model, example_input, input_scale, input_zero_point, input_range, state_frac_bits
        )
        if require_exact and not graph.exact:
            raise ValueError("the integer model is not bit-exact: " + "; ".join(graph.notes))
        return graph
    layers = [(n, m) for n, m in _layers(model) if not isinstance(m, PASSIVE)]
    if not layers:
        raise ValueError("the model has no layers to convert")
    for name, module in layers:
        refuse_in_chain(name, module)
    check_observed(model)
    modes = {id(m): m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            spec, rounding, on_grid, notes, consumed = input_spec(
                layers[0][1], layers, input_scale, input_zero_point, input_range
            )
            first_spec = spec
            modules: List[IntegerModule] = []
            for name, module in layers[1:] if consumed else layers:
                new, spec = convert_module(name, module, spec, state_frac_bits)
                modules, spec = settle_clamp(modules, new, spec)
    finally:
        for m in model.modules():
            m.training = modes[id(m)]
    result = IntegerModel(modules, first_spec, spec, rounding, on_grid, notes)
    if require_exact and not result.exact:
        raise ValueError("the integer model is not bit-exact: " + "; ".join(result.notes))
    return result
