"""Interoperability: export to NIR (and load from it) and to ONNX.

The third-party packages are optional extras, imported only when used:
``pip install 'aquatic[nir]'`` for :mod:`aquatic.interop.nir`,
``pip install 'aquatic[onnx]'`` for :mod:`aquatic.interop.onnx`.
"""

from aquatic.interop import nir, onnx

__all__ = ["nir", "onnx"]
