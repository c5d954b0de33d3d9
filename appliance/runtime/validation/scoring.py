"""Running the package over the labelled images, as production would.

Images go through the same `Model.infer` as in the worker, so what is measured is what the box
will do; images the worker would hold back are set aside first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.runtime.backends import BackendOptions, Precision
from appliance.runtime.engine import Model
from appliance.runtime.package import ModelPackage
from appliance.runtime.preprocess import prepare
from appliance.runtime.quality import check_quality
from appliance.runtime.quantize import progress, progress_done, read_image
from appliance.runtime.validation.labels import FloatArray, LabelSet, score_labels


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
