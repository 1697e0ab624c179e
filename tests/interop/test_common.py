"""What the NIR and ONNX exports read of a quantizer: its grid, or a clear error."""

import pytest
import torch

from aquatic.interop._common import export_grid
from aquatic.quantizers import BitShiftDecay, LSQQuantizer, UniformQuantizer


def test_export_grid():
    grid = export_grid(UniformQuantizer(scale=0.5), "q")
    assert float(grid.scale) == 0.5 and grid.scale.dtype == torch.float32
    with pytest.raises(ValueError, match="q: the quantizer has no scale yet.*calibration"):
        export_grid(UniformQuantizer(), "q")
    with pytest.raises(ValueError, match="q: BitShiftDecay.*no scale and zero point to export"):
        export_grid(BitShiftDecay(), "q")
    negative = LSQQuantizer()
    negative(torch.randn(10))
    with torch.no_grad():
        negative.scale.fill_(-1.0)
    with pytest.raises(ValueError, match="q has the scale -1.0; scales must be positive"):
        export_grid(negative, "q")
