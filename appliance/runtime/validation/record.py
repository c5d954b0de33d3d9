"""`appliance model validate --write`: the measured figures into the manifest's `validation:`.

The README promises that validation figures are measured, never typed in by hand: this writes
what `validate` measured on the site's images into the manifest (the admin's comments, key
order and any further keys of the section are kept) and re-seals the package, so the figures
shown beside the model are the ones this box measured.

Per label and precision: `auc`, `sensitivity`, `specificity` at the manifest threshold, `n`
and `positives` (INT8 with an `_int8` suffix), and `int8_agreement` (decision agreement with
FP32) when both ran; segmentation labels get `area_error_median_mm2` in place of AUC.
Undefined figures (no positives, ...) are left out rather than written as 0. A package
without golden inputs gets them here (`appliance.runtime.golden`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap

from appliance.runtime.golden import write_goldens
from appliance.runtime.manifest import MANIFEST_NAME
from appliance.runtime.manifest_edit import edit_manifest, plain, section
from appliance.runtime.package import ModelPackage, seal_package
from appliance.runtime.quantize import STALE_NOTE

_FIGURES = ("auc", "sensitivity", "specificity", "area_error_median_mm2", "n", "positives")


def metrics_of(report: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """label -> figure name -> value, from a `validate` report."""
    metrics: dict[str, dict[str, float]] = {}
    for label, entry in report["labels"].items():
        figures: dict[str, float] = {}
        for precision in report["precisions"]:
            suffix = "" if precision == "fp32" else f"_{precision}"
            for key in _FIGURES:
                value = _value(entry[precision].get(key))
                if value is not None:
                    figures[f"{key}{suffix}"] = value
        agreement = _value(entry.get("int8_vs_fp32", {}).get("decision_agreement"))
        if agreement is not None:
            figures["int8_agreement"] = agreement
        metrics[label] = figures
    return metrics


def _value(figure: Any) -> float | None:
    """A figure's number: intervals are {"value": ...}; None when undefined."""
    if isinstance(figure, Mapping):
        figure = figure.get("value")
    return figure if isinstance(figure, (int, float)) and not isinstance(figure, bool) else None


def dataset_text(report: Mapping[str, Any], today: date | None = None) -> str:
    """What `validation.dataset` says: which images, how many, when, at which precisions."""
    held = len(report["held_back"])
    return (
        f"site images in {Path(report['dataset']).name}, {report['images']} image(s)"
        + (f" ({held} held back by the plausibility check, not counted)" if held else "")
        + f", measured by appliance model validate on {(today or date.today()).isoformat()}"
        + f" ({', '.join(report['precisions'])})"
    )


def write_figures(folder: Path, report: Mapping[str, Any]) -> ModelPackage:
    """Record `report`'s figures in the package's manifest and re-seal the package."""
    metrics = metrics_of(report)
    text = dataset_text(report)
    measured_int8 = "int8" in report["precisions"]

    def change(data: CommentedMap) -> None:
        validation = section(data, "validation")
        validation["dataset"] = text
        validation["metrics"] = plain(metrics)
        int8 = validation.get("int8")
        if measured_int8 and isinstance(int8, dict) and int8.get("note") == STALE_NOTE:
            del int8["note"]  # the INT8 figures it asked for are measured now

    edit_manifest(Path(folder) / MANIFEST_NAME, change)
    package = seal_package(folder)
    if package.manifest.golden is None:  # a validated package carries its goldens
        package, _ = write_goldens(package.folder)
    return package
