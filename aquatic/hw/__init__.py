"""Hardware profiles for neuromorphic chips.

Each profile gives a ``qconfig()`` preset that trains a model against the chip's
constraints, a bit-exact integer ``simulate`` of the chip's neuron arithmetic (batched,
in torch) and an ``export(model)`` to the chip's integer parameters that checks the
chip's limits. Errors for what a chip cannot hold are
:class:`~aquatic.hw.DoesNotFitError` (a ``ValueError``).

- :mod:`aquatic.hw.xylo`: SynSense Xylo (Xylo Audio 2), bit-exact with ``xylosim``.
- :mod:`aquatic.hw.dynapcnn`: SynSense DYNAP-CNN / Speck, as sinabs discretises it.
- :mod:`aquatic.hw.loihi`: Intel Loihi CUBA neurons, as lava-nc's bit-accurate models compute them (netx export).
"""

from aquatic.hw import dynapcnn, loihi, xylo
from aquatic.hw._common import DoesNotFitError

__all__ = ["DoesNotFitError", "dynapcnn", "loihi", "xylo"]
