"""One scale shared by several quantizers, as integer and neuromorphic hardware needs.

On chips such as Xylo or DYNAP-CNN, the weights, biases and thresholds of a layer are
integers in one common unit. :class:`SharedScaleQuantizer` members of one
:class:`ScaleGroup` use a single symmetric scale: the smallest that fits every member's
observed range into that member's own integer range,

.. math::  s = \\max_i \\frac{\\max |x_i|}{q_{max,i}}

so 8-bit weights and 16-bit thresholds can share it. A :class:`SharedStateQuantizer`
puts a neuron state on that grid without taking part in the scale: the state counts in
the unit the parameters set, as on the chip.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from aquatic.functional.fake_quant import fake_quantize_affine_kernel, quantize_affine
from aquatic.functional.grid import Grid
from aquatic.functional.qparams import round_to_power_of_two
from aquatic.functional.rounding import check_rounding
from aquatic.observers import MinMaxObserver, RangeObserver
from aquatic.quantizers.base import Quantizer, integer_range

__all__ = ["ScaleGroup", "SharedScaleQuantizer", "SharedStateQuantizer", "link_shared_scales"]


class ScaleGroup:
    """A set of :class:`SharedScaleQuantizer` that use one scale.

    Pass the same group to quantizers of several layers (for example one group in a
    QConfig applied to a whole network) to share the scale across them. The group holds
    its members weakly: a member that is no longer referenced elsewhere (its layer was
    deleted) leaves the group and no longer sets the scale.

    Args:
        power_of_two: round the shared scale up to a power of two.

    Example:
        >>> group = ScaleGroup()
        >>> w = SharedScaleQuantizer(bits=8, group=group)
        >>> th = SharedScaleQuantizer(bits=16, group=group)
        >>> _ = w(torch.tensor([-2.54, 1.0])); _ = th(torch.tensor([3.0]))
        >>> group.scale()
        tensor(0.0200)
        >>> th.to_int(torch.tensor([3.0]))
        tensor([150], dtype=torch.int16)
    """

    def __init__(self, power_of_two: bool = False) -> None:
        self.power_of_two = bool(power_of_two)
        # Weak references: members hold the group, not the other way round, so a deleted
        # layer's quantizer is collected instead of widening the shared scale forever.
        self._refs: List["weakref.ref[SharedScaleQuantizer]"] = []

    @property
    def members(self) -> List["SharedScaleQuantizer"]:
        """The live members, in the order they joined (a new list)."""
        alive = [ref() for ref in self._refs]
        if len(alive) != sum(member is not None for member in alive):
            self._refs = [ref for ref in self._refs if ref() is not None]
        return [member for member in alive if member is not None]

    def add(self, member: "SharedScaleQuantizer") -> None:
        """Add ``member`` (held weakly); adding a member twice keeps it once."""
        if not any(ref() is member for ref in self._refs):
            self._refs.append(weakref.ref(member))

    def discard(self, member: "SharedScaleQuantizer") -> None:
        """Remove ``member`` if it belongs to the group."""
        self._refs = [ref for ref in self._refs if ref() is not None and ref() is not member]

    def __getstate__(self) -> Dict[str, Any]:
        # Weak references cannot be pickled or deep-copied into the copy's members:
        # store the live members, which the copy (or the pickle) shares with its model.
        return {"power_of_two": self.power_of_two, "members": self.members}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.power_of_two = state["power_of_two"]
        self._refs = [weakref.ref(member) for member in state["members"]]

    def scale(self) -> Tensor:
        """The shared scale from the members' current ranges.

        A layer asks for it several times per forward pass (its weight, bias and
        threshold quantizers, its states' grids). Eagerly, it is computed again only when
        a member's own scale changed: each member keeps its own until its observer's
        range changes (:meth:`SharedScaleQuantizer._own_scale`), and the group keeps the
        result for the same set of members' scales. Each call returns a tensor of its own.
        """
        candidates = [m._own_scale() for m in self.members if m.observer.initialized]
        if not candidates:
            raise RuntimeError(
                "no member of this ScaleGroup has observed data yet: run a forward "
                "pass (in training mode) before asking for the scale"
            )
        compiling = torch.compiler.is_compiling()
        key = None if compiling else (self.power_of_two,) + tuple(map(id, candidates))
        cached = getattr(self, "_cached", None)
        # The cache holds the candidates themselves, so their ids stay theirs.
        if key is not None and cached is not None and cached[0] == key:
            return cached[2].clone()
        scale = torch.stack(candidates).amax() if len(candidates) > 1 else candidates[0]
        scale = round_to_power_of_two(scale) if self.power_of_two else scale
        if key is None:
            return scale
        self._cached = (key, candidates, scale)
        return scale.clone()  # never a member's own tensor: a caller may change its copy

    def __repr__(self) -> str:
        return f"ScaleGroup(members={len(self.members)}, power_of_two={self.power_of_two})"


class SharedScaleQuantizer(Quantizer):
    """Symmetric uniform quantizer whose scale is shared with the rest of its group.

    Each member observes its own range; the group's scale is the smallest that fits all
    of them (see the module docstring), rounded up to a power of two when the group is
    ``power_of_two``. :meth:`to_int` and :meth:`qparams` use the same shared scale as
    ``forward``, so ``to_int(x) * qparams()["scale"]`` is ``forward(x)`` (after the
    forward pass that observed ``x``).

    Args:
        bits: bit width of this member's codes, 2 to 16.
        narrow_range: drop the most negative code.
        group: a :class:`ScaleGroup` to join (shared across layers), or a name: members
            of one layer with the same name are linked to one group when the layer is
            built (:func:`link_shared_scales`). Until linked, a member has a group of
            its own.
        observer: factory of the range observer of this member.
        rounding: ``"nearest"``, ``"floor"`` or ``"stochastic"``.
        power_of_two: restrict the shared scale to powers of two (rounded up). Members
            of one named group must agree; with a :class:`ScaleGroup` object the group's
            own setting applies, and ``power_of_two=True`` needs
            ``ScaleGroup(power_of_two=True)``.

    Shape:
        - Input: any shape. Output: same shape and dtype.

    Example:
        >>> weight = SharedScaleQuantizer(bits=8, group="layer", power_of_two=True)
        >>> threshold = SharedScaleQuantizer(bits=16, group="layer", power_of_two=True)
        >>> link_shared_scales([weight, threshold])
        >>> _ = weight(torch.tensor([-1.0, 0.5])); _ = threshold(torch.tensor([3.0]))
        >>> weight.qparams()["scale"]  # 1/127 rounded up to 2**-6
        tensor(0.0156)
        >>> threshold.to_int(torch.tensor([3.0]))
        tensor([192], dtype=torch.int16)
    """

    def __init__(
        self,
        bits: int = 8,
        narrow_range: bool = False,
        group: Union[str, ScaleGroup] = "layer",
        observer: Callable[..., RangeObserver] = MinMaxObserver,
        rounding: str = "nearest",
        power_of_two: bool = False,
    ) -> None:
        super().__init__()
        self.quant_min, self.quant_max = integer_range(bits, True, narrow_range)
        self.bits = bits
        self.rounding = check_rounding(rounding)
        self.observer = observer(quant_min=self.quant_min, quant_max=self.quant_max, symmetric=True)
        if isinstance(group, ScaleGroup):
            if power_of_two and not group.power_of_two:
                raise ValueError(
                    "power_of_two=True, but the ScaleGroup given has power_of_two=False; "
                    "build the group as ScaleGroup(power_of_two=True)"
                )
            self.group_name: Optional[str] = None
            self._join(group)
        elif isinstance(group, str):
            self.group_name = group
            self._join(ScaleGroup(power_of_two=power_of_two))
        else:
            raise TypeError(f"group must be a ScaleGroup or a name (str), got {group!r}")

    @property
    def power_of_two(self) -> bool:
        """Whether the shared scale is a power of two (a property of the group)."""
        return self.group.power_of_two

    def _join(self, group: ScaleGroup) -> None:
        self.group = group
        group.add(self)

    def __getstate__(self) -> Dict[str, Any]:
        # A copy or a pickle starts without the kept scale: its key names the buffers of
        # this object by identity, which a copy does not share.
        state = dict(self.__dict__)
        state.pop("_own_cached", None)
        return state

    def _own_scale(self) -> Tensor:
        """This member's scale from its own range (the group takes the largest); computed
        again only when the observer's range changed, eagerly (the same tensor until then:
        the group compares its members' scales by identity)."""
        observer = self.observer
        key = _range_key(observer)
        cached = self.__dict__.get("_own_cached")  # not through nn.Module.__getattr__
        if key is not None and cached is not None and cached[0] == key:
            return cached[2]
        scale, _ = observer.calculate_qparams()
        if key is not None:  # the buffers held with the key, so their ids stay theirs
            buffers = observer._buffers
            self.__dict__["_own_cached"] = (key, (buffers["min_val"], buffers["max_val"]), scale)
        return scale

    def observe(self, input: Tensor) -> None:
        observer = self.observer
        if self.training or not observer.initialized:
            # One range on the CPU: the observer's Python-float path (the same buffers),
            # which writes them only when the range grows, so the scale is kept.
            if isinstance(observer, RangeObserver) and observer.supports_scalars(input):
                observer.update_scalar(input)
            else:
                observer(input)

    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        """The group's ``(scale, zero_point)``; the zero point is always 0."""
        scale = self.group.scale()
        return scale, torch.zeros((), dtype=torch.int32, device=scale.device)

    def fake_quantize(self, input: Tensor) -> Tensor:
        scale, zero_point = self.calculate_qparams()
        # The observers' scales are finite and positive: skip the public entry's checks.
        return fake_quantize_affine_kernel(
            input, scale, zero_point, self.quant_min, self.quant_max, rounding=self.rounding
        )

    @torch.no_grad()
    def to_int(self, input: Tensor) -> Tensor:
        """Codes of ``input`` with the shared scale; stochastic rounding exports with nearest."""
        scale, zero_point = self.calculate_qparams()
        rounding = "nearest" if self.rounding == "stochastic" else self.rounding
        return quantize_affine(
            input, scale, zero_point, self.quant_min, self.quant_max, rounding=rounding
        )

    def grid(self) -> Grid:
        """The shared scale, zero point 0, this member's range, per tensor."""
        try:
            scale, zero_point = self.calculate_qparams()
        except RuntimeError as error:
            raise self._no_range(str(error)) from None
        return Grid(scale, zero_point, self.quant_min, self.quant_max, None, self.rounding)

    def qparams(self) -> Dict[str, Any]:
        """The shared ``scale``, ``zero_point`` 0, this member's range, ``ch_axis`` None."""
        return self.grid().qparams()

    def extra_repr(self) -> str:
        group = repr(self.group_name) if self.group_name is not None else repr(self.group)
        parts = [f"bits={self.bits}", f"group={group}"]
        if self.rounding != "nearest":
            parts.append(f"rounding={self.rounding!r}")
        if self.power_of_two:
            parts.append("power_of_two=True")
        return ", ".join(parts) + self._switch_repr()


class SharedStateQuantizer(SharedScaleQuantizer):
    """A neuron state on its :class:`ScaleGroup`'s grid, ``bits`` wide.

    A :class:`SharedScaleQuantizer` that follows the group's scale and never widens it:
    it observes nothing, so the weights, biases and thresholds set the unit and the state
    counts in it, saturating at the signed ``bits``-bit range (e.g. Xylo's 16-bit
    synaptic currents and membranes, :func:`aquatic.hw.xylo.qconfig`). Arguments as
    :class:`SharedScaleQuantizer`.

    Example:
        >>> from aquatic.quantizers import ScaleGroup, SharedScaleQuantizer
        >>> group = ScaleGroup(power_of_two=True)
        >>> weight = SharedScaleQuantizer(bits=8, group=group, power_of_two=True)
        >>> state = SharedStateQuantizer(bits=16, group=group, power_of_two=True)
        >>> _ = weight(torch.tensor([0.5, -1.0]))  # scale 2**-6
        >>> state(torch.tensor([1.0, 1.01, 1000.0]))  # 1.01 rounds; 1000 saturates
        tensor([  1.0000,   1.0156, 511.9844])
        >>> group.scale()  # unchanged by the state
        tensor(0.0156)
    """

    def __init__(
        self,
        bits: int = 16,
        narrow_range: bool = False,
        group: Union[str, ScaleGroup] = "layer",
        rounding: str = "nearest",
        power_of_two: bool = False,
    ) -> None:
        super().__init__(bits, narrow_range, group, _NoObserver, rounding, power_of_two)

    def observe(self, input: Tensor) -> None:
        """Nothing: the state follows the scale that the other members set."""


def _range_key(observer: nn.Module) -> Optional[Tuple]:
    """What a :class:`~aquatic.observers.RangeObserver`'s scale depends on: its range
    buffers (identity and in-place version) and settings; ``None`` where that is not
    known (another observer, one that computes its scale its own way, or under
    ``torch.compile``), so that the scale is always computed."""
    if torch.compiler.is_compiling() or not isinstance(observer, RangeObserver):
        return None
    if type(observer).calculate_qparams is not RangeObserver.calculate_qparams:
        return None
    buffers = observer._buffers
    low, high = buffers.get("min_val"), buffers.get("max_val")
    if low is None or high is None or low.is_inference() or high.is_inference():
        return None  # (tensors made under inference_mode keep no version)
    return (
        id(low),
        low._version,
        id(high),
        high._version,
        observer.initialized,
        observer.quant_min,
        observer.quant_max,
        observer.symmetric,
        observer.power_of_two,
    )


class _NoObserver(nn.Module):
    """The observer of a :class:`SharedStateQuantizer`: it never has a range of its own,
    so its group leaves it out of the shared scale."""

    initialized = False

    def __init__(self, quant_min: int, quant_max: int, symmetric: bool = True) -> None:
        super().__init__()


def link_shared_scales(quantizers: Iterable[nn.Module]) -> None:
    """Give the :class:`SharedScaleQuantizer` members that share a group *name* one group.

    Layers call this on their own quantizers when they are built, so ``group="layer"``
    shares one scale within each layer. Members built with a :class:`ScaleGroup`
    object keep it. Anything that is not a :class:`SharedScaleQuantizer` is skipped.

    Raises:
        ValueError: if members of one named group disagree on ``power_of_two`` (then
            nothing is linked).

    Example:
        >>> w, b = SharedScaleQuantizer(group="g"), SharedScaleQuantizer(bits=16, group="g")
        >>> link_shared_scales([w, b])
        >>> w.group is b.group
        True
    """
    by_name: Dict[str, List[SharedScaleQuantizer]] = {}
    for quantizer in quantizers:
        if isinstance(quantizer, SharedScaleQuantizer) and quantizer.group_name is not None:
            by_name.setdefault(quantizer.group_name, []).append(quantizer)
    # Check every group before changing any, so an error leaves the members as they were.
    for name, members in by_name.items():
        settings = {member.power_of_two for member in members}
        if len(settings) > 1:
            raise ValueError(
                f"the members of shared-scale group {name!r} disagree on power_of_two "
                f"({sorted(settings)}); give every member of the group the same "
                "power_of_two, e.g. SharedScaleQuantizer.with_args(group="
                f"{name!r}, power_of_two=True)"
            )
    for members in by_name.values():
        group = members[0].group
        for quantizer in members[1:]:
            if quantizer.group is not group:
                quantizer.group.discard(quantizer)
                quantizer._join(group)
