"""The pictures beside findings: heatmap and overlay per explained label, mask and overlay per
positive mask. Made by a follow-up `pictures` job after the findings are saved.

The job runs the same model on the same file again: the backend is deterministic, and a second
inference costs milliseconds where the PNG encoding costs tens. Pictures are stored at most
PREVIEW_MAX_SIDE pixels wide or high: a heatmap is smooth, so a larger one shows nothing more,
and the touchscreen is smaller still. Masks are kept at full size for exact outlines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from appliance.explain import Which, encode_png, explain, mask_overlay_png, overlay_png
from appliance.imaging.limits import Limits
from appliance.runtime.engine import Model
from appliance.runtime.findings import MaskFinding, ModelResult
from appliance.worker.analyse import decode_for

log = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 1024


@dataclass(frozen=True)
class Picture:
    """A picture to store beside a finding, before it has a file name."""

    kind: str  # heatmap | overlay | mask
    label: str
    frame: int
    width: int
    height: int
    data: bytes
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pending:
    """A saved finding whose pictures are still to be made."""

    finding_id: int
    model: str
    model_sha256: str
    key_frame: int


def draw(
    path: Path, pending: Sequence[Pending], models: Sequence[Model], which: str, limits: Limits
) -> tuple[dict[int, list[Picture]], list[str]]:
    """Pictures per finding id, and a note for each finding that cannot be drawn now."""
    by_name = {model.package.name: model for model in models}
    runnable, notes = [], []
    for item in pending:
        model = by_name.get(item.model)
        if model is None or model.provenance.model_hash != item.model_sha256:
            notes.append(f"finding {item.finding_id}: {item.model} as it ran is not loaded now")
        else:
            runnable.append((item, model))
    if not runnable:
        return {}, notes
    image = decode_for(path, [model for _, model in runnable], limits)
    drawn = {}
    for item, model in runnable:
        results = model.infer([image])
        result = next((r for r in results if r.frame == item.key_frame), results[0])
        drawn[item.finding_id] = pictures_for(model, result, which)
    return drawn, notes


def pictures_for(model: Model, result: ModelResult, which: str) -> list[Picture]:
    """Heatmap + overlay per explained label, mask + overlay for the positive masks."""
    display = result.display
    scale = min(1.0, PREVIEW_MAX_SIDE / max(display.shape[:2]))
    preview = _resize(display, scale, cv2.INTER_AREA)
    pictures: list[Picture] = []
    if which != "none":
        wanted: Which = "all" if which == "all" else "positive"
        for heatmap in explain(model, result, wanted, scale=scale):
            peak_x, peak_y = heatmap.peak
            detail = {**heatmap.to_dict(), "peak": [round(peak_x / scale), round(peak_y / scale)]}
            pictures += _heatmap_pictures(result.frame, heatmap.values, preview, detail)
    masks = [m for m in result.masks if m.positive]
    if masks:
        pictures += _mask_pictures(result.frame, masks, preview, scale)
    return pictures


def _heatmap_pictures(
    frame: int,
    values: npt.NDArray[np.float32],
    preview: npt.NDArray[np.uint8],
    detail: dict[str, Any],
) -> list[Picture]:
    height, width = values.shape
    label = str(detail["label"])
    gray = np.asarray(np.clip(values, 0.0, 1.0) * 255.0 + 0.5, dtype=np.uint8)
    return [
        Picture("heatmap", label, frame, width, height, encode_png(gray), detail),
        Picture("overlay", label, frame, width, height, overlay_png(preview, values), detail),
    ]


def _mask_pictures(
    frame: int, masks: Sequence[MaskFinding], preview: npt.NDArray[np.uint8], scale: float
) -> list[Picture]:
    pictures = []
    small = []
    for finding in masks:
        full = np.asarray(finding.mask, dtype=np.uint8) * np.uint8(255)
        rows, columns = full.shape
        detail = {"label": finding.label, "area_px": finding.area_px}
        pictures.append(
            Picture("mask", finding.label, frame, columns, rows, encode_png(full), detail)
        )
        small.append(_resize(full, scale, cv2.INTER_NEAREST) > 0)
    height, width = preview.shape[:2]
    labels = "+".join(m.label for m in masks)
    overlay = mask_overlay_png(preview, small)
    pictures.append(Picture("overlay", labels, frame, width, height, overlay, {"labels": labels}))
    return pictures


def _resize(image: npt.NDArray[np.uint8], scale: float, method: int) -> npt.NDArray[np.uint8]:
    if scale >= 1.0:
        return image
    rows, columns = image.shape[:2]
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=method), dtype=np.uint8)
