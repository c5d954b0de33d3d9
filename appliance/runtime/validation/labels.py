"""The labels CSV of `appliance model validate`: read, checked against the dataset folder
and the manifest, with every problem named by its column, row or file."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.runtime.errors import InputError
from appliance.runtime.manifest import Manifest

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
AREA_COLUMN = "area_mm2"


@dataclass(frozen=True)
class LabelSet:
    """The CSV read and checked: image paths, 0/1 truth per label column, true areas."""

    files: tuple[Path, ...]
    truth: Mapping[str, npt.NDArray[np.bool_]]
    areas: FloatArray | None = None


def score_labels(manifest: Manifest) -> dict[str, float]:
    """Label name -> manifest threshold, for every label of the scores outputs that can be a
    finding (a negative label never is, so it has no threshold to measure)."""
    return {
        label.name: output.label_threshold(label)
        for output in manifest.outputs
        if output.kind == "scores"
        for _, label in output.finding_labels
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
