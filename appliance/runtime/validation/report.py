"""The validation report: per-label figures of each precision, INT8 against FP32, and the
same report as a plain-text table for the terminal."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from appliance.runtime.package import ModelPackage
from appliance.runtime.validation.labels import LabelSet, score_labels
from appliance.runtime.validation.scoring import Scored
from appliance.runtime.validation.statistics import area_metrics, json_number, label_metrics

AUC_METHOD = "DeLong (normal approximation, clipped to [0, 1])"


def classification_report(
    package: ModelPackage, labels: LabelSet, runs: Sequence[Scored], target: float
) -> dict[str, Any]:
    thresholds = score_labels(package.manifest)
    report: dict[str, Any] = {}
    for name, truth in labels.truth.items():
        entry: dict[str, Any] = {}
        for run in runs:
            entry[run.precision] = label_metrics(run.scores[name], truth, thresholds[name], target)
        if len(runs) == 2:
            entry["int8_vs_fp32"] = _compare(runs, name, thresholds[name], entry)
        report[name] = entry
    return report


def _compare(
    runs: Sequence[Scored], name: str, threshold: float, entry: Mapping[str, Any]
) -> dict[str, Any]:
    a, b = runs[0].scores[name], runs[1].scores[name]
    auc_a, auc_b = (
        entry[runs[0].precision]["auc"]["value"],
        entry[runs[1].precision]["auc"]["value"],
    )
    return {
        "decision_agreement": json_number(float(np.mean((a >= threshold) == (b >= threshold)))),
        "auc_difference": None if auc_a is None or auc_b is None else round(auc_b - auc_a, 4),
        "max_score_difference": json_number(float(np.max(np.abs(a - b)))),
    }


def segmentation_report(labels: LabelSet, runs: Sequence[Scored]) -> dict[str, Any]:
    """Area error against the CSV's areas and presence (area > 0) decisions per precision."""
    assert labels.areas is not None
    truth_area = labels.areas
    present = truth_area > 0
    name = next(iter(labels.truth))
    entry: dict[str, Any] = {}
    for run in runs:
        assert run.areas is not None
        entry[run.precision] = area_metrics(run.areas, truth_area, present)
    if len(runs) == 2:
        a, b = runs[0].areas, runs[1].areas
        assert a is not None and b is not None
        entry["int8_vs_fp32"] = {
            "decision_agreement": json_number(float(np.mean((a > 0) == (b > 0)))),
            "area_difference_median_mm2": json_number(float(np.nanmedian(np.abs(a - b)))),
        }
    return {name: entry}


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table for the terminal."""
    lines = [f"{report['model']} {report['version']} on {report['images']} image(s)"]
    for name, entry in report["labels"].items():
        for precision in report["precisions"]:
            f = entry[precision]
            if "auc" in f:
                auc, s, p, t = (
                    f["auc"],
                    f["sensitivity"],
                    f["specificity"],
                    f["at_target_sensitivity"],
                )
                lines.append(
                    f"{name:<18} {precision:<5} n={f['n']:<4} pos={f['positives']:<4} "
                    f"AUC {_ci(auc)}  @{f['threshold']:.3f}: sens {_ci(s)} spec {_ci(p)}  "
                    f"sens>={t['target']}: thr {_fmt(t['threshold'])} spec {_fmt(t['specificity'])}"
                )
            else:
                lines.append(
                    f"{name:<18} {precision:<5} n={f['n']} with area={f['with_area']} "
                    f"area error median {_fmt(f['area_error_median_mm2'])} mm² "
                    f"({_fmt(f['area_error_median_pct'])} %), sens {_ci(f['sensitivity'])} "
                    f"spec {_ci(f['specificity'])}"
                )
        if "int8_vs_fp32" in entry:
            lines.append(f"{name:<18} int8 vs fp32: {json.dumps(entry['int8_vs_fp32'])}")
    if report["held_back"]:
        lines.append(
            f"held back by the plausibility check, as the worker would (not counted): "
            f"{len(report['held_back'])} image(s), e.g. {report['held_back'][0]['file']}: "
            f"{report['held_back'][0]['reason']}"
        )
    if report["labels_not_in_csv"]:
        lines.append(f"not validated (no CSV column): {', '.join(report['labels_not_in_csv'])}")
    return "\n".join(lines)


def _ci(figure: Mapping[str, Any]) -> str:
    return f"{_fmt(figure['value'])} [{_fmt(figure['low'])}, {_fmt(figure['high'])}]"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
