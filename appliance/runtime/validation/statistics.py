"""The figures of a validation: AUC with DeLong's interval, proportions with Wilson's.

AUC intervals are DeLong's (normal approximation, no resampling: deterministic and fast);
proportions get Wilson score intervals, which stay inside [0, 1] and behave at small counts,
unlike the plain normal interval. Figures that are undefined (no positives, ...) come out as
None, since JSON has no NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from appliance.runtime.validation.labels import BoolArray, FloatArray

Z95 = 1.959963984540054


def auc_delong(scores: FloatArray, truth: BoolArray) -> tuple[float, float, float]:
    """AUC (Mann-Whitney, ties count a half) and its 95% DeLong interval.

    The interval is AUC +- 1.96 standard errors, clipped to [0, 1]; it has zero width when the
    classes are perfectly separated (a limitation of DeLong's variance, not a certainty).
    """
    positive, negative = scores[truth], scores[~truth]
    if len(positive) == 0 or len(negative) == 0:
        return math.nan, math.nan, math.nan
    psi = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    area = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    s10 = float(np.var(v10, ddof=1)) if len(v10) > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if len(v01) > 1 else 0.0
    error = math.sqrt(s10 / len(positive) + s01 / len(negative))
    return area, max(0.0, area - Z95 * error), min(1.0, area + Z95 * error)


def wilson(successes: int, total: int) -> tuple[float, float, float]:
    """Proportion and its 95% Wilson score interval (nan when total is 0)."""
    if total == 0:
        return math.nan, math.nan, math.nan
    p = successes / total
    denominator = 1 + Z95**2 / total
    centre = (p + Z95**2 / (2 * total)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / denominator
    return p, max(0.0, centre - half), min(1.0, centre + half)


def threshold_for_sensitivity(
    scores: FloatArray, truth: BoolArray, target: float
) -> tuple[float, float, float]:
    """The highest threshold (score >= threshold is positive) whose sensitivity reaches
    `target`, with the sensitivity and specificity there."""
    positive = np.sort(scores[truth])[::-1]
    if len(positive) == 0:
        return math.nan, math.nan, math.nan
    needed = min(len(positive), max(1, math.ceil(target * len(positive) - 1e-9)))
    threshold = float(positive[needed - 1])
    negative = scores[~truth]
    specificity = float(np.mean(negative < threshold)) if len(negative) else math.nan
    return threshold, float(np.mean(positive >= threshold)), specificity


def roc_points(scores: FloatArray, truth: BoolArray) -> FloatArray:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0)."""
    points = [(0.0, 0.0)]
    positives, negatives = max(1, int(truth.sum())), max(1, int((~truth).sum()))
    for threshold in np.unique(scores)[::-1]:
        decided = scores >= threshold
        points.append(
            (
                float((decided & ~truth).sum()) / negatives,
                float((decided & truth).sum()) / positives,
            )
        )
    points.append((1.0, 1.0))
    return np.array(points, dtype=np.float64)


def interval(values: tuple[float, float, float]) -> dict[str, float | None]:
    """A figure and its interval, as the report holds them."""
    return {
        "value": json_number(values[0]),
        "low": json_number(values[1]),
        "high": json_number(values[2]),
    }


def proportion(successes: int, total: int) -> dict[str, Any]:
    """A proportion with its Wilson interval and the count it comes from, e.g. "9/10"."""
    return {**interval(wilson(successes, total)), "count": f"{successes}/{total}"}


def json_number(value: float) -> float | None:
    """JSON has no NaN: undefined figures (no positives, ...) are null."""
    return None if not math.isfinite(value) else round(value, 4)


def label_metrics(
    scores: FloatArray, truth: BoolArray, threshold: float, target: float
) -> dict[str, Any]:
    """The per-label figures of one precision."""
    decided = scores >= threshold
    positives = int(truth.sum())
    tp, tn = int((decided & truth).sum()), int((~decided & ~truth).sum())
    at_target = threshold_for_sensitivity(scores, truth, target)
    return {
        "n": len(truth),
        "positives": positives,
        "auc": interval(auc_delong(scores, truth)),
        "threshold": threshold,
        "sensitivity": proportion(tp, positives),
        "specificity": proportion(tn, len(truth) - positives),
        "at_target_sensitivity": {
            "target": target,
            "threshold": json_number(at_target[0]),
            "sensitivity": json_number(at_target[1]),
            "specificity": json_number(at_target[2]),
        },
    }


def area_metrics(predicted: FloatArray, truth: FloatArray, present: BoolArray) -> dict[str, Any]:
    """Area error and presence (area > 0) decisions of one precision; images without a
    pixel spacing have no area and are left out."""
    usable = np.isfinite(predicted)
    error = np.abs(predicted - truth)[usable]
    with_area = usable & present
    percent = 100 * np.abs(predicted - truth)[with_area] / truth[with_area]
    decided = predicted > 0
    tp = int((decided & present & usable).sum())
    tn = int((~decided & ~present & usable).sum())
    positives, negatives = int((present & usable).sum()), int((~present & usable).sum())
    return {
        "n": int(usable.sum()),
        "without_spacing": int((~usable).sum()),
        "with_area": positives,
        "area_error_mean_mm2": json_number(float(error.mean())) if error.size else None,
        "area_error_median_mm2": json_number(float(np.median(error))) if error.size else None,
        "area_error_median_pct": json_number(float(np.median(percent))) if percent.size else None,
        "sensitivity": proportion(tp, positives),
        "specificity": proportion(tn, negatives),
    }
