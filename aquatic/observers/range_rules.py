"""Which fast paths an observer class may take, decided once per class.

A :class:`~aquatic.observers.RangeObserver` subclass that keeps the base class's
``update``, ``_extrema`` and ``calculate_qparams`` is held to the promises of the class
that defines its merge rule ``_combine``: a Python-float twin of the merge
(``_combine_float``), a range that only widens (``_widens_only``), and a merge written
straight into the buffers (``_combine_into_buffers``). A subclass that changes any of
those methods, or ``_combine`` alone, is not taken at its parent's word.
"""

from __future__ import annotations

from typing import Tuple

__all__ = ["observer_rules"]


def _own_rules(cls: type, base: type) -> bool:
    """Whether ``cls`` observes and computes qparams with ``base``'s methods (so that
    their Python-float twins and the promises built on them hold)."""
    return all(
        getattr(cls, name) is getattr(base, name)
        for name in ("update", "_extrema", "calculate_qparams")
    )


def observer_rules(cls: type, base: type) -> Tuple[bool, bool, bool]:
    """``(supports_scalars, covers_last_batch, in_place)`` of observer class ``cls``, a
    subclass of ``base`` (:class:`~aquatic.observers.RangeObserver`): whether its
    ``_combine`` has a Python-float version, whether its range always holds the last
    batch, and whether it merges straight into the buffers.

    Computed once per class and kept on the class itself (``_class_rules`` in its own
    ``__dict__``), when an observer is built: never while ``torch.compile`` traces, and
    not in a shared dict whose change would invalidate compiled graphs of other classes.
    Each observer keeps its class's rules as ``_rules`` too: a compiled graph reads them
    there, since torch.compile refuses to read a class's ``__dict__`` (a mapping proxy)
    after a dict changed in the same graph, as a per-channel range's first batch does.
    """
    rules = cls.__dict__.get("_class_rules")
    if rules is None:
        owner = next(k for k in cls.__mro__ if "_combine" in k.__dict__)
        own = _own_rules(cls, base)
        scalars = "_combine_float" in owner.__dict__ and own
        covers = bool(owner.__dict__.get("_widens_only", False)) and own
        in_place = "_combine_into_buffers" in owner.__dict__ and own
        rules = (scalars, covers, in_place)
        type.__setattr__(cls, "_class_rules", rules)
    return rules
