"""The result of learned rounding: one record per layer with a weight quantizer."""

from __future__ import annotations

from typing import List, NamedTuple

__all__ = ["RoundingRecord", "RoundingReport"]


class RoundingRecord(NamedTuple):
    """What learned rounding did to one layer.

    The fields, in order:

    - ``layer``: the layer's qualified name;
    - ``rounded``: whether its weight now holds a learned rounding;
    - ``note``: why not (or why the nearest rounding was kept); empty when rounded;
    - ``nearest_mse``: the mean squared error of the layer's output with its weight
      rounded to nearest, against the float model's, on the calibration inputs
      (``nan`` for a layer skipped);
    - ``learned_mse``: the same with the rounding kept (``nan`` for a layer skipped);
    - ``flipped``: the fraction of weights rounded the other way than to nearest.
    """

    layer: str
    rounded: bool
    note: str
    nearest_mse: float
    learned_mse: float
    flipped: float


class RoundingReport(List[RoundingRecord]):
    """A list of :class:`RoundingRecord` in the model's order that prints as a table."""

    @property
    def skipped(self) -> List[RoundingRecord]:
        """The records of the layers left as they were."""
        return [record for record in self if not record.rounded]

    def __str__(self) -> str:
        rows = [("layer", "nearest MSE", "learned MSE", "flipped", "note")]
        for r in self:
            rows.append(
                (
                    r.layer,
                    f"{r.nearest_mse:.4g}",
                    f"{r.learned_mse:.4g}",
                    f"{100 * r.flipped:.1f}%",
                    r.note,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(line.rstrip() for line in lines)

    def __repr__(self) -> str:
        return f"RoundingReport({len(self)} layers, {len(self.skipped)} skipped)"
