"""Saving and loading integer models (the format: :mod:`aquatic.integer.archive`)."""

from __future__ import annotations

from typing import Union


from aquatic.integer.archive import FORMAT, VERSION
from aquatic.integer.graph import IntegerGraph
from aquatic.integer.model import IntegerModel

__all__ = ["FORMAT", "VERSION", "save", "load"]


def save(model: Union[IntegerModel, IntegerGraph], f) -> None:
    """Save ``model`` to ``f`` (a path or a writable binary file). An integer graph is
    saved in its own format (:mod:`aquatic.integer.graph_archive`) and loads with
    :meth:`aquatic.integer.IntegerGraph.load`.

    Example:
        >>> import io, torch
        >>> from aquatic.integer.base import QSpec
        >>> from aquatic.integer.layers import IntegerLinear
        >>> model = IntegerModel([IntegerLinear(torch.tensor([[2, -1]]))],
        ...                      QSpec(0.5, 0, low=-8, high=7), QSpec(0.25, 0))
        >>> buffer = io.BytesIO(); save(model, buffer); _ = buffer.seek(0)
        >>> sorted(torch.load(buffer, weights_only=True)["tensors"])
        ['0.input_zero_point', '0.pre_shift', '0.weight']
        >>> _ = buffer.seek(0); load(buffer)(torch.tensor([[3, -4]]))
        tensor([[10]], dtype=torch.int32)
    """
    if not isinstance(model, (IntegerModel, IntegerGraph)):
        raise TypeError(
            "save takes an IntegerModel or IntegerGraph (from aquatic.convert), got "
            f"{type(model).__name__}"
        )
    model.save(f)


def load(f) -> IntegerModel:
    """Load an integer model saved by :func:`save` (``weights_only``: no code is unpickled).

    Everything in the file is checked before the model is rebuilt: the header's fields
    and their types, every layer's configuration (known rounding names, ``low <= high``,
    one entry per dimension...), every tensor (integer dtype, shape against the header,
    multipliers, shifts and decays in range, thresholds positive), and the range each
    integer accumulator can reach from the input range, which must stay in int32 as
    :func:`aquatic.convert` certified it (weights edited out of range are refused).

    Raises:
        ValueError: the file is empty, truncated, not an aquatic integer model, of a
            newer version, or malformed; the message names the field.
    """
    return IntegerModel.load(f)
