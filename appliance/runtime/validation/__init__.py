"""`appliance model validate`: a package measured on a site's own labelled images.

The figures in a manifest were measured where the model was made; a site checks them on its
own patients before use. One module per job: `labels` (the CSV), `scoring` (running the
model), `statistics`, `report` and `plots`; `validate` ties them together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.paths import write_atomically
from appliance.runtime.backends import Precision
from appliance.runtime.errors import InputError
from appliance.runtime.package import ModelPackage, load_package
from appliance.runtime.validation.labels import LabelSet, read_labels, score_labels
from appliance.runtime.validation.plots import ROC_SIZE, draw_roc, write_plots
from appliance.runtime.validation.report import (
    AUC_METHOD,
    classification_report,
    format_report,
    segmentation_report,
)
from appliance.runtime.validation.scoring import Scored, held_back, score_images, without
from appliance.runtime.validation.statistics import auc_delong, wilson

__all__ = [
    "ROC_SIZE",
    "LabelSet",
    "Scored",
    "auc_delong",
    "draw_roc",
    "format_report",
    "read_labels",
    "validate",
    "wilson",
]


def validate(
    folder: Path,
    dataset: Path,
    *,
    labels_csv: Path | None = None,
    precision: str = "both",
    target: float = 0.9,
    out: Path | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Measure the package on the dataset; write report.json (and ROC PNGs) to `out`."""
    if not 0.0 < target <= 1.0:
        raise InputError(f"--sensitivity must be in (0, 1], got {target}")
    package = load_package(folder)
    csv_path = labels_csv or dataset / "labels.csv"
    labels, held = _scorable(package, read_labels(csv_path, dataset, package.manifest), dataset)
    precisions = _precisions(package, precision)
    runs = [score_images(package, labels.files, p, threads) for p in precisions]
    segmentation = labels.areas is not None
    figures = (
        segmentation_report(labels, runs)
        if segmentation
        else classification_report(package, labels, runs, target)
    )
    report: dict[str, Any] = {
        "model": package.name,
        "version": package.version,
        "package": str(package.folder),
        "dataset": str(dataset),
        "labels_csv": str(csv_path),
        "images": len(labels.files),
        "precisions": list(precisions),
        "auc_interval": None if segmentation else AUC_METHOD,
        "proportion_interval": "Wilson score, 95%",
        "labels": figures,
        "labels_not_in_csv": [n for n in score_labels(package.manifest) if n not in labels.truth],
        "held_back": [{"file": path.name, "reason": why} for path, why in held.items()],
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report["plots"] = [] if segmentation else write_plots(out, labels, runs, figures)
        write_atomically(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def _scorable(
    package: ModelPackage, labels: LabelSet, dataset: Path
) -> tuple[LabelSet, dict[Path, str]]:
    """The labelled images the worker would score, and those it would hold back (with why)."""
    held = held_back(package, labels.files)
    kept = without(labels, held)
    if not kept.files:
        raise InputError(f"{dataset}: every image was held back by the plausibility check")
    return kept, held


def _precisions(package: ModelPackage, wanted: str) -> tuple[Precision, ...]:
    if wanted == "both":
        return ("fp32", "int8") if "int8" in package.precisions else ("fp32",)
    if wanted == "int8" and "int8" not in package.precisions:
        raise InputError(
            f"{package.manifest.identity} has no INT8 file; run `appliance model quantize` first"
        )
    return ("int8",) if wanted == "int8" else ("fp32",)
