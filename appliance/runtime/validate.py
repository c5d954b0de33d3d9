"""`appliance model validate`: a package measured on a site's own labelled images.

The figures in a manifest were measured where the model was made; a site checks them on its
own patients before use. Images go through the same `Model.infer` as in production, so what
is measured is what the box will do. AUC intervals are DeLong's (normal approximation, no
resampling: deterministic and fast); proportions get Wilson score intervals, which stay
inside [0, 1] and behave at small counts, unlike the plain normal interval.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from appliance.runtime.backends import BackendOptions, Precision
from appliance.runtime.engine import Model
from appliance.runtime.errors import InputError
from appliance.runtime.manifest import Manifest
from appliance.runtime.package import ModelPackage, load_package
from appliance.runtime.preprocess import prepare
from appliance.runtime.quality import check_quality
from appliance.runtime.quantize import progress, progress_done, read_image

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Z95 = 1.959963984540054
AREA_COLUMN = "area_mm2"
ROC_SIZE = (480, 480)  # width, height of every ROC PNG
AUC_METHOD = "DeLong (normal approximation, clipped to [0, 1])"


# --- the labels file -------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSet:
    """The CSV read and checked: image paths, 0/1 truth per label column, true areas."""

    files: tuple[Path, ...]
    truth: Mapping[str, npt.NDArray[np.bool_]]
    areas: FloatArray | None = None


def score_labels(manifest: Manifest) -> dict[str, float]:
    """Label name -> manifest threshold, for every label of the scores outputs."""
    return {
        label.name: output.label_threshold(label)
        for output in manifest.outputs
        if output.kind == "scores"
        for label in output.labels
    }


def mask_labels(manifest: Manifest) -> list[str]:
    return [label.name for o in manifest.outputs if o.kind == "mask" for label in o.labels]


def read_labels(path: Path, dataset: Path, manifest: Manifest) -> LabelSet:
    """Read and check the labels CSV against the dataset folder and the manifest.

    Every problem is reported with the column, row or file at fault: a site's admin has to be
    able to fix the CSV from the message alone.
    """
    rows, columns = _read_csv(path)
    if "file" not in columns:
        raise InputError(f"{path}: no 'file' column (columns: {', '.join(columns) or 'none'})")
    files = _listed_files(path, dataset, [row["file"] for row in rows])
    if manifest.task == "segmentation":
        return _segmentation_labels(path, rows, columns, files, manifest)
    known = score_labels(manifest)
    wanted = [c for c in columns if c != "file"]
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise InputError(
            f"{path}: column(s) {', '.join(unknown)} are not labels of {manifest.identity} "
            f"(its labels: {', '.join(known)})"
        )
    if not wanted:
        raise InputError(
            f"{path}: no label column; add one 0/1 column per label to validate "
            f"(labels of {manifest.identity}: {', '.join(known)})"
        )
    truth = {name: _binary(path, rows, name) for name in wanted}
    return LabelSet(files=files, truth=truth)


def _segmentation_labels(
    path: Path,
    rows: list[dict[str, str]],
    columns: list[str],
    files: tuple[Path, ...],
    manifest: Manifest,
) -> LabelSet:
    masks = mask_labels(manifest)
    if len(masks) != 1:
        raise InputError(
            f"{manifest.identity}: validation supports segmentation models with one mask "
            f"label; this one has {len(masks)} ({', '.join(masks)})"
        )
    if AREA_COLUMN not in columns:
        raise InputError(
            f"{path}: a segmentation package needs an '{AREA_COLUMN}' column "
            f"(true area of {masks[0]!r} in mm², 0 when absent)"
        )
    extra = [c for c in columns if c not in ("file", AREA_COLUMN)]
    if extra:
        raise InputError(f"{path}: unexpected column(s) {', '.join(extra)} (use file, area_mm2)")
    areas = np.array([_number(path, number, row) for number, row in enumerate(rows, 2)])
    return LabelSet(files=files, truth={masks[0]: areas > 0}, areas=areas)


def _read_csv(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows as dicts, and the columns. Each row must have the header's number of fields and
    no column may appear twice: either would silently shift or shadow a label."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except FileNotFoundError as exc:
        raise InputError(
            f"{path}: no labels file (give --labels or put labels.csv in the dataset)"
        ) from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the labels CSV: {exc}") from exc
    numbered = [(n, [v.strip() for v in row]) for n, row in enumerate(lines, 1) if any(row)]
    if not numbered:
        raise InputError(f"{path}: empty: no header")
    _, columns = numbered[0]
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise InputError(f"{path}:1: column(s) {', '.join(map(repr, twice))} appear twice")
    rows = []
    for number, values in numbered[1:]:
        if not any(values):
            continue
        if len(values) != len(columns):
            raise InputError(
                f"{path}:{number}: {len(values)} fields but the header has {len(columns)}"
            )
        rows.append(dict(zip(columns, values, strict=True)))
    if not rows:
        raise InputError(f"{path}: no rows below the header")
    return rows, columns


def _listed_files(path: Path, dataset: Path, names: Sequence[str]) -> tuple[Path, ...]:
    """The dataset's files the CSV names: plain names inside DIR, each once."""
    outside = [n for n in names if Path(n).is_absolute() or ".." in Path(n).parts]
    if outside:
        raise InputError(
            f"{path}: file(s) must be named inside {dataset}, without '..' or a leading '/': "
            + ", ".join(repr(n) for n in outside[:10])
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(
            f"{path}: file(s) listed more than once (each image counts once): "
            + ", ".join(repr(n) for n in twice[:10])
        )
    missing = [n for n in names if not n or not (dataset / n).is_file()]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InputError(f"{path}: file(s) listed but not in {dataset}: {shown}{more}")
    return tuple(dataset / n for n in names)


def _binary(path: Path, rows: list[dict[str, str]], column: str) -> BoolArray:
    values = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        value = row.get(column, "")
        if value not in ("0", "1"):
            raise InputError(f"{path}:{number}: column {column!r} must be 0 or 1, got {value!r}")
        values.append(value == "1")
    return np.array(values, dtype=bool)


def _number(path: Path, number: int, row: dict[str, str]) -> float:
    try:
        value = float(row.get(AREA_COLUMN, ""))
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{path}:{number}: {AREA_COLUMN!r} must be a number >= 0")
    return value


# --- statistics ------------------------------------------------------------------------------


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


def _interval(values: tuple[float, float, float]) -> dict[str, float | None]:
    return {"value": _num(values[0]), "low": _num(values[1]), "high": _num(values[2])}


def _num(value: float) -> float | None:
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
        "auc": _interval(auc_delong(scores, truth)),
        "threshold": threshold,
        "sensitivity": {**_interval(wilson(tp, positives)), "count": f"{tp}/{positives}"},
        "specificity": {
            **_interval(wilson(tn, len(truth) - positives)),
            "count": f"{tn}/{len(truth) - positives}",
        },
        "at_target_sensitivity": {
            "target": target,
            "threshold": _num(at_target[0]),
            "sensitivity": _num(at_target[1]),
            "specificity": _num(at_target[2]),
        },
    }


# --- running the model -----------------------------------------------------------------------


def held_back(package: ModelPackage, files: Sequence[Path]) -> dict[Path, str]:
    """The images the worker would hold back (the package's plausibility check), with the
    reason: they are never scored in production, so they do not count here either."""
    first_only = package.manifest.input.frames == "first"
    held: dict[Path, str] = {}
    for path in files:
        prepared = prepare(read_image(path, first_only), package.manifest.input)
        check = check_quality(package.manifest, prepared, 0)
        if not check.passed:
            held[path] = "; ".join(check.reasons)
    return held


def without(labels: LabelSet, held: Mapping[Path, str]) -> LabelSet:
    """`labels` less the images in `held`."""
    keep = np.array([path not in held for path in labels.files], dtype=bool)
    return LabelSet(
        files=tuple(path for path in labels.files if path not in held),
        truth={name: truth[keep] for name, truth in labels.truth.items()},
        areas=None if labels.areas is None else labels.areas[keep],
    )


@dataclass(frozen=True)
class Scored:
    """One precision's answers for every image: scores per label, mask area per image."""

    precision: str
    scores: Mapping[str, FloatArray]
    areas: FloatArray | None


def score_images(
    package: ModelPackage, files: Sequence[Path], precision: Precision, threads: int
) -> Scored:
    """Run every image through `Model.infer` (first selected frame) at `precision`."""
    scores: dict[str, list[float]] = {name: [] for name in score_labels(package.manifest)}
    areas: list[float] = []
    options = BackendOptions(backend="cpu", precision=precision, threads=threads)
    with Model.open(package, options) as model:
        first_only = package.manifest.input.frames == "first"
        for number, path in enumerate(files, start=1):
            if number % 10 == 0 or number == len(files):
                progress(f"{precision}: image {number}/{len(files)}")
            result = model.infer([read_image(path, first_only)])[0]
            for finding in result.labels:
                scores[finding.label].append(finding.score)
            if result.masks:
                area = [m.area_mm2 for m in result.masks]
                areas.append(math.nan if None in area else float(sum(a or 0.0 for a in area)))
    progress_done()
    return Scored(
        precision=precision,
        scores={k: np.array(v, dtype=np.float64) for k, v in scores.items()},
        areas=np.array(areas, dtype=np.float64) if areas else None,
    )


# --- the report ------------------------------------------------------------------------------


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
        "decision_agreement": _num(float(np.mean((a >= threshold) == (b >= threshold)))),
        "auc_difference": None if auc_a is None or auc_b is None else round(auc_b - auc_a, 4),
        "max_score_difference": _num(float(np.max(np.abs(a - b)))),
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
        entry[run.precision] = _area_metrics(run.areas, truth_area, present)
    if len(runs) == 2:
        a, b = runs[0].areas, runs[1].areas
        assert a is not None and b is not None
        entry["int8_vs_fp32"] = {
            "decision_agreement": _num(float(np.mean((a > 0) == (b > 0)))),
            "area_difference_median_mm2": _num(float(np.nanmedian(np.abs(a - b)))),
        }
    return {name: entry}


def _area_metrics(predicted: FloatArray, truth: FloatArray, present: BoolArray) -> dict[str, Any]:
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
        "area_error_mean_mm2": _num(float(error.mean())) if error.size else None,
        "area_error_median_mm2": _num(float(np.median(error))) if error.size else None,
        "area_error_median_pct": _num(float(np.median(percent))) if percent.size else None,
        "sensitivity": {**_interval(wilson(tp, positives)), "count": f"{tp}/{positives}"},
        "specificity": {**_interval(wilson(tn, negatives)), "count": f"{tn}/{negatives}"},
    }


# --- the ROC plot ----------------------------------------------------------------------------

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


# --- the command -----------------------------------------------------------------------------


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
    labels = read_labels(csv_path, dataset, package.manifest)
    held = held_back(package, labels.files)
    labels = without(labels, held)
    if not labels.files:
        raise InputError(f"{dataset}: every image was held back by the plausibility check")
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
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _precisions(package: ModelPackage, wanted: str) -> tuple[Precision, ...]:
    if wanted == "both":
        return ("fp32", "int8") if "int8" in package.precisions else ("fp32",)
    if wanted == "int8" and "int8" not in package.precisions:
        raise InputError(
            f"{package.manifest.identity} has no INT8 file; run `appliance model quantize` first"
        )
    return ("int8",) if wanted == "int8" else ("fp32",)


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


def cmd_validate(args: argparse.Namespace) -> int:
    out = args.out
    if out is None:
        package = load_package(args.package)
        out = Path(f"validation-{package.name}-{package.version}")
    report = validate(
        args.package,
        args.dataset,
        labels_csv=args.labels,
        precision=args.precision,
        target=args.sensitivity,
        out=out,
        threads=args.threads,
    )
    print(format_report(report))
    print(
        f"wrote {out / 'report.json'}"
        + (f" and {len(report['plots'])} ROC plot(s)" if report["plots"] else "")
    )
    return 0
