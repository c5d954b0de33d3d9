"""Result tables as the benchmarks print them, and the figures in their cells."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; columns of numbers are right-aligned."""
    columns = range(len(rows[0]))
    widths = [max(len(row[i]) for row in rows) for i in columns]
    right = [all(_numeric(row[i]) for row in rows[1:] if row[i]) for i in columns]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if right[i] else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    """A number, a count like 20/20, or a percentage; negative ones too."""
    digits = cell.removeprefix("-").removesuffix("%")
    return digits.replace(".", "", 1).replace("/", "", 1).isdigit()


def verdict(met: bool) -> str:
    """A target's verdict as every report writes it."""
    return "MET" if met else "NOT MET"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile; NaN when nothing was measured (a report then shows "nan")."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def median(values: Sequence[float]) -> float:
    """The median; NaN when nothing was measured."""
    return statistics.median(values) if values else float("nan")
