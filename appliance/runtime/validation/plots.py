"""ROC plots of a validation, drawn with OpenCV (already a dependency; no plotting library)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from appliance.runtime.errors import InputError
from appliance.runtime.validation.labels import FloatArray, LabelSet
from appliance.runtime.validation.scoring import Scored
from appliance.runtime.validation.statistics import roc_points

ROC_SIZE = (480, 480)  # width, height of every ROC PNG
_COLOURS = {"fp32": (180, 90, 20), "int8": (20, 140, 230)}  # BGR: blue, orange


def draw_roc(
    path: Path,
    title: str,
    curves: Mapping[str, FloatArray],
    operating: Mapping[str, tuple[float, float]],
) -> None:
    """An ROC plot PNG: axes with ticks, the chance diagonal, a curve per precision and the
    manifest operating point of each (1 - specificity, sensitivity)."""
    width, height = ROC_SIZE
    left, right, top, bottom = 60, 20, 40, 50
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)

    def at(x: float, y: float) -> tuple[int, int]:
        return (
            round(left + x * (width - left - right)),
            round(height - bottom - y * (height - top - bottom)),
        )

    font = cv2.FONT_HERSHEY_SIMPLEX
    for tick in np.linspace(0, 1, 6):
        cv2.line(canvas, at(tick, 0), at(tick, 1), (235, 235, 235), 1)
        cv2.line(canvas, at(0, tick), at(1, tick), (235, 235, 235), 1)
        x, y = at(tick, 0)
        cv2.putText(canvas, f"{tick:.1f}", (x - 12, y + 18), font, 0.4, (0, 0, 0), 1)
        x, y = at(0, tick)
        cv2.putText(canvas, f"{tick:.1f}", (x - 30, y + 4), font, 0.4, (0, 0, 0), 1)
    cv2.line(canvas, at(0, 0), at(1, 1), (160, 160, 160), 1, cv2.LINE_AA)
    cv2.line(canvas, at(0, 0), at(1, 0), (0, 0, 0), 1)
    cv2.line(canvas, at(0, 0), at(0, 1), (0, 0, 0), 1)
    for number, (precision, points) in enumerate(curves.items()):
        colour = _COLOURS.get(precision, (0, 0, 0))
        polyline = np.array([at(x, y) for x, y in points], dtype=np.int32)
        cv2.polylines(canvas, [polyline], False, colour, 2, cv2.LINE_AA)
        if precision in operating:
            cv2.circle(canvas, at(*operating[precision]), 6, colour, 2, cv2.LINE_AA)
        cv2.putText(
            canvas,
            precision,
            (width - 80, height - bottom - 30 - 18 * number),
            font,
            0.45,
            colour,
            1,
            cv2.LINE_AA,
        )
    cv2.putText(canvas, title, (left, 25), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "1 - specificity", (width // 2 - 40, height - 12), font, 0.45, (0, 0, 0), 1)
    cv2.putText(canvas, "sens.", (5, top - 8), font, 0.45, (0, 0, 0), 1)
    if not cv2.imwrite(str(path), canvas):
        raise InputError(f"{path}: cannot write the ROC plot")


def write_plots(
    out: Path, labels: LabelSet, runs: Sequence[Scored], report: Mapping[str, Any]
) -> list[str]:
    written = []
    for name, truth in labels.truth.items():
        curves = {run.precision: roc_points(run.scores[name], truth) for run in runs}
        operating = {}
        for run in runs:
            figures = report[name][run.precision]
            sens, spec = figures["sensitivity"]["value"], figures["specificity"]["value"]
            if sens is not None and spec is not None:
                operating[run.precision] = (1 - spec, sens)
        auc = report[name][runs[0].precision]["auc"]["value"]
        path = out / f"roc-{name}.png"
        draw_roc(
            path,
            f"{name}  AUC {auc if auc is not None else 'n/a'} ({runs[0].precision})",
            curves,
            operating,
        )
        written.append(path.name)
    return written
