"""The result of a sensitivity analysis: one record per (layer, candidate)."""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional

from aquatic.ptq.batches import optional_import

__all__ = ["SensitivityRecord", "SensitivityTable"]


class SensitivityRecord(NamedTuple):
    """How much the metric changes when only ``layer`` is quantized with ``candidate``."""

    layer: str
    candidate: Any
    change: float


class SensitivityTable(List[SensitivityRecord]):
    """A list of :class:`SensitivityRecord` that prints as a table, most sensitive first.

    Attributes:
        metric: what ``change`` measures (``"output MSE"`` or the metric's name).
        baseline: the metric of the float model.
    """

    def __init__(self, records=(), metric: str = "output MSE", baseline: float = 0.0) -> None:
        super().__init__(records)
        self.metric = metric
        self.baseline = baseline

    def ranked(self) -> List[SensitivityRecord]:
        """The records, largest change first (ties in layer order)."""
        return sorted(self, key=lambda record: -record.change)

    def as_dict(self) -> Dict[str, Dict[Any, float]]:
        """``{layer: {candidate: change}}``."""
        table: Dict[str, Dict[Any, float]] = {}
        for record in self:
            table.setdefault(record.layer, {})[record.candidate] = record.change
        return table

    def __str__(self) -> str:
        rows = [("layer", "candidate", f"change in {self.metric}")]
        rows += [(r.layer, str(r.candidate), f"{r.change:.6g}") for r in self.ranked()]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(line.rstrip() for line in lines)

    def __repr__(self) -> str:
        return f"SensitivityTable({len(self)} records, metric={self.metric!r})"

    def plot(self, ax: Optional[Any] = None) -> Any:
        """A bar plot: one group of bars per layer, one bar per candidate.

        Needs matplotlib (imported here, on first use).

        Returns:
            The matplotlib ``Axes``.
        """
        plt = optional_import("matplotlib.pyplot", "SensitivityTable.plot")
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(self.as_dict()) + 2), 3.5))
        table = self.as_dict()
        layers = list(table)
        candidates: List[Any] = []
        for row in table.values():
            candidates += [c for c in row if c not in candidates]
        width = 0.8 / max(len(candidates), 1)
        for k, candidate in enumerate(candidates):
            xs = [i + k * width for i in range(len(layers))]
            ys = [table[layer].get(candidate, 0.0) for layer in layers]
            ax.bar(xs, ys, width=width, label=str(candidate))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))])
        ax.set_xticklabels(layers, rotation=45, ha="right")
        ax.set_ylabel(f"change in {self.metric}")
        ax.legend(title="candidate")
        return ax
