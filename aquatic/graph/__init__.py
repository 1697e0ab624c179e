"""Graph capture: follow a model's own ``forward`` (``torch.fx``), not only ``nn.Sequential``.

- :func:`trace`: the ``torch.fx`` graph of a model, every ``torch.nn`` and
  ``aquatic.nn`` layer kept as one node (why ``torch.fx`` and not ``torch.export``: see
  :mod:`aquatic.graph.trace`).
- :func:`insert_quantizers`: input quantizers at the graph inputs, and
  :class:`aquatic.nn.Add` / :class:`~aquatic.nn.Mul` / :class:`~aquatic.nn.Cat` where
  tensors meet; :func:`aquatic.quantize` calls it for models that are not
  ``nn.Sequential``.
"""

from aquatic.graph.insert import insert_quantizers, scope
from aquatic.graph.ops import kind
from aquatic.graph.trace import GraphCaptureError, is_leaf, trace

__all__ = ["GraphCaptureError", "insert_quantizers", "is_leaf", "kind", "scope", "trace"]
