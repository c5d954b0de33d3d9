"""Model outputs -> findings: scores against operating points, masks to outlines and mm².

Plain dataclasses that the worker stores and the web UI and DICOM SR builder read; `to_dict`
gives their JSON form. Everything here is in image coordinates: masks are mapped back from the
model's input space before they are thresholded, so outlines follow the image, not the grid
of a 256 x 256 model input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from appliance.imaging import SpacingSource
from appliance.runtime.errors import ManifestError
from appliance.runtime.manifest import Code, Label, OutputSpec, Priority
from appliance.runtime.preprocess import Prepared

FloatArray = npt.NDArray[np.float32]
_PRIORITY_ORDER = {"urgent": 0, "review": 1, "routine": 2}
_DETECTOR_SPACING = (
    "area from ImagerPixelSpacing: measured at the detector, not corrected for magnification"
)


@dataclass(frozen=True)
class LabelFinding:
    """One label of a scores output: the score against its operating threshold."""

    label: str
    display: str
    code: Code | None
    score: float
    threshold: float
    positive: bool
    priority: Priority

    def to_dict(self) -> dict[str, Any]:
        return _finding_dict(self, score=round(self.score, 6))


@dataclass(frozen=True, eq=False)
class MaskFinding:
    """One channel of a mask output, in image coordinates.

    `outlines` are closed polygons of (x, y) image pixel coordinates, one per connected region
    (outer borders; holes are counted in the area but not outlined). `area_mm2` is None when
    the image has no physical pixel spacing; `notes` then says so.
    """

    label: str
    display: str
    code: Code | None
    threshold: float
    priority: Priority
    mask: npt.NDArray[np.bool_]
    area_px: int
    area_mm2: float | None
    outlines: tuple[npt.NDArray[np.int32], ...]
    notes: tuple[str, ...] = ()

    @property
    def positive(self) -> bool:
        return self.area_px > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **_finding_dict(self),
            "area_px": self.area_px,
            "area_mm2": None if self.area_mm2 is None else round(self.area_mm2, 3),
            "outlines": [outline.tolist() for outline in self.outlines],
            "notes": list(self.notes),
        }


def _finding_dict(finding: LabelFinding | MaskFinding, **measured: Any) -> dict[str, Any]:
    """What every finding says, in the order the JSON has always had: `measured` (a label's
    score) goes between the label's code and its threshold."""
    return {
        "label": finding.label,
        "display": finding.display,
        "code": None if finding.code is None else finding.code.model_dump(),
        **measured,
        "threshold": finding.threshold,
        "positive": finding.positive,
        "priority": finding.priority,
    }


@dataclass(frozen=True)
class Provenance:
    """Which model made a finding, run how: recorded with every finding."""

    model: str
    version: str
    title: str
    model_hash: str
    backend: str
    precision: str
    providers: tuple[str, ...]
    not_for_clinical_use: bool
    caution: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "title": self.title,
            "model_sha256": self.model_hash,
            "backend": self.backend,
            "precision": self.precision,
            "providers": list(self.providers),
            "not_for_clinical_use": self.not_for_clinical_use,
            "caution": self.caution,
        }


@dataclass(frozen=True)
class Timing:
    """Milliseconds per stage; `model_ms` is the batch's time shared out over its samples."""

    preprocess_ms: float
    model_ms: float
    postprocess_ms: float

    def to_dict(self) -> dict[str, float]:
        return {
            "preprocess_ms": round(self.preprocess_ms, 3),
            "model_ms": round(self.model_ms, 3),
            "postprocess_ms": round(self.postprocess_ms, 3),
        }


@dataclass(frozen=True, eq=False)
class ModelResult:
    """What one model found in one frame of one image.

    `outputs` keeps the raw outputs (model space, this sample only) and `prepared`/`position`
    the input, so an explanation can be computed afterwards without running the model again.
    """

    provenance: Provenance
    frame: int
    labels: tuple[LabelFinding, ...]
    masks: tuple[MaskFinding, ...]
    timing: Timing
    prepared: Prepared
    position: int
    outputs: Mapping[str, FloatArray] = field(repr=False)
    notes: tuple[str, ...] = ()

    @property
    def positives(self) -> tuple[str, ...]:
        """Names of positive labels and non-empty masks, most urgent first."""
        found: list[LabelFinding | MaskFinding] = [*self.labels, *self.masks]
        positive = sorted(
            (f for f in found if f.positive), key=lambda f: _PRIORITY_ORDER[f.priority]
        )
        return tuple(f.label for f in positive)

    @property
    def display(self) -> npt.NDArray[np.uint8]:
        """The whole frame as uint8 display values, for overlays."""
        return self.prepared.display(self.position)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.provenance.to_dict(),
            "frame": self.frame,
            "labels": [finding.to_dict() for finding in self.labels],
            "masks": [finding.to_dict() for finding in self.masks],
            "positives": list(self.positives),
            "timing": self.timing.to_dict(),
            "notes": list(self.notes),
        }


def activate(values: FloatArray, activation: str, axis: int = 1) -> FloatArray:
    """Apply the manifest's activation; softmax runs across the label axis."""
    x = np.asarray(values, dtype=np.float32)
    if activation == "sigmoid":
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float32)  # overflow-free
    if activation == "softmax":
        shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return np.asarray(shifted / np.sum(shifted, axis=axis, keepdims=True), dtype=np.float32)
    return x


def out_of_range(index: int, output: OutputSpec, values: FloatArray) -> str | None:
    """Why activated `values` of outputs.`index` cannot be compared with a threshold, or None.

    A threshold in [0, 1] means something only for a probability: a logits output declared
    `activation: none` gives scores such as 7.05 or -2.85, and comparing those with 0.5 would
    turn every image positive or negative without saying so.
    """
    array = np.asarray(values, dtype=np.float32)
    if array.size == 0:
        return None
    # Run on every output of every inference: two reductions without temporaries settle the
    # usual case (NaN makes min or max NaN, which fails the comparison and is located below).
    if float(array.min()) >= 0.0 and float(array.max()) <= 1.0:
        return None
    bad = array[~((array >= 0.0) & (array <= 1.0))]  # NaN included
    if bad.size == 0:
        return None
    worst = float(bad[np.argmax(np.abs(np.nan_to_num(bad - 0.5, nan=np.inf)))])
    what = "scores" if output.kind == "scores" else "values"
    fix = "sigmoid or softmax" if output.kind == "scores" else "sigmoid"
    return (
        f"outputs.{index} gives {what} outside [0, 1] ({worst:.3g}) after activation "
        f"{output.activation!r}: set activation: {fix}"
    )


def score_findings(output: OutputSpec, scores: FloatArray) -> tuple[LabelFinding, ...]:
    """Findings for one sample's activated scores (one value per label).

    A negative label (the "nothing found" class of a softmax) is never a finding: only the
    other labels' probabilities are scored against their thresholds.
    """
    findings = []
    values = scores.tolist()
    for position, label in output.finding_labels:
        threshold = output.label_threshold(label)
        score = values[position]
        findings.append(
            LabelFinding(
                label=label.name,
                display=label.display,
                code=label.code,
                score=float(score),
                threshold=threshold,
                positive=float(score) >= threshold,
                priority=label_priority(label),
            )
        )
    return tuple(findings)


def mask_findings(
    output: OutputSpec, probabilities: FloatArray, prepared: Prepared
) -> tuple[MaskFinding, ...]:
    """Findings for one sample's activated mask (labels x h x w, model space)."""
    in_image = prepared.geometry.map_to_image(probabilities)
    findings = []
    for index, label in enumerate(output.labels):
        threshold = output.label_threshold(label)
        mask = in_image[index] >= threshold
        area_mm2, notes = _area_mm2(int(np.count_nonzero(mask)), prepared)
        findings.append(
            MaskFinding(
                label=label.name,
                display=label.display,
                code=label.code,
                threshold=threshold,
                priority=label_priority(label),
                mask=mask,
                area_px=int(np.count_nonzero(mask)),
                area_mm2=area_mm2,
                outlines=outlines(mask),
                notes=notes,
            )
        )
    return tuple(findings)


def label_priority(label: Label) -> Priority:
    """The priority of a label that can be a finding (the manifest's checks require one)."""
    if label.priority is None:
        raise ManifestError(
            f"label {label.name!r} has no priority: give it urgent, review or routine"
        )
    return label.priority


def _area_mm2(pixels: int, prepared: Prepared) -> tuple[float | None, tuple[str, ...]]:
    if prepared.spacing_mm is None:
        return None, ("the image has no physical pixel spacing: area in mm² is unknown",)
    row, column = prepared.spacing_mm
    notes = (
        (_DETECTOR_SPACING,)
        if prepared.spacing_source is SpacingSource.IMAGER_PIXEL_SPACING
        else ()
    )
    return pixels * row * column, notes


def outlines(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.int32], ...]:
    """Outer borders of the mask's connected regions as (K, 2) arrays of (x, y) points."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return tuple(np.asarray(c.reshape(-1, 2), dtype=np.int32) for c in contours)
