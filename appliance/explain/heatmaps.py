"""Heatmaps in image coordinates: from a model's CAM output, or by occlusion through the model.

CAM is free (the model computed it with the scores); occlusion works for any classifier but
costs one model run per patch position, so masked copies are sent through the backend in
batches. Both end as one map per label over the whole image, scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from appliance.runtime.preprocess import Box, Geometry

FloatArray = npt.NDArray[np.float32]
Method = Literal["cam", "occlusion"]
ScoreFunction = Callable[[FloatArray], FloatArray]  # N x C x H x W -> N x labels, activated


@dataclass(frozen=True, eq=False)
class Heatmap:
    """Where the model looked for one label: `values` is rows x columns in [0, 1]."""

    label: str
    method: Method
    values: FloatArray
    notes: tuple[str, ...] = ()

    @property
    def peak(self) -> tuple[int, int]:
        """(x, y) image pixel of the highest value."""
        row, column = np.unravel_index(int(np.argmax(self.values)), self.values.shape)
        return int(column), int(row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "method": self.method,
            "peak": list(self.peak),
            "notes": list(self.notes),
        }


def cam_heatmaps(
    cam: FloatArray, geometry: Geometry, labels: Sequence[str], wanted: Sequence[str]
) -> list[Heatmap]:
    """Heatmaps of the `wanted` labels from one sample's CAM output (labels x h x w).

    Negative evidence is dropped (as Grad-CAM does) before the map is upsampled, the
    letterbox undone and the result scaled so its maximum is 1.
    """
    indexes = [labels.index(name) for name in wanted]
    positive = np.maximum(np.asarray(cam, dtype=np.float32)[indexes], 0.0)
    return _heatmaps(geometry.map_to_image(positive), wanted, "cam")


def occlusion_heatmaps(
    score: ScoreFunction,
    tensor: FloatArray,
    geometry: Geometry,
    labels: Sequence[str],
    wanted: Sequence[str],
    *,
    patch: int,
    stride: int,
    batch_size: int = 32,
) -> list[Heatmap]:
    """Heatmaps of the `wanted` labels by occluding `patch`-sized squares of one input."""
    maps = occlusion_maps(score, tensor, geometry.content, patch, stride, batch_size)
    indexes = [labels.index(name) for name in wanted]
    return _heatmaps(geometry.map_to_image(maps[indexes]), wanted, "occlusion")


def occlusion_maps(
    score: ScoreFunction,
    tensor: FloatArray,
    box: Box,
    patch: int,
    stride: int,
    batch_size: int = 32,
) -> FloatArray:
    """Score drop per label when each model-input pixel is hidden (labels x H x W).

    A patch is set to 0, which after the manifest's mean/std normalisation is the mean
    intensity: "no information" rather than black, which would itself be a feature. Each
    pixel gets the mean drop of the patches that covered it; rises count as no drop. Patch
    positions cover `box` (the image's content; letterbox padding is not occluded).
    """
    baseline = score(tensor[np.newaxis])[0]
    positions = patch_positions(box, patch, stride)
    total = np.zeros((baseline.shape[0], *tensor.shape[1:]), dtype=np.float32)
    count = np.zeros(tensor.shape[1:], dtype=np.float32)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start : start + batch_size]
        batch = np.repeat(tensor[np.newaxis], len(chunk), axis=0)
        for index, (x, y) in enumerate(chunk):
            batch[index, :, y : y + patch, x : x + patch] = 0.0
        drops = np.maximum(baseline[np.newaxis] - score(batch), 0.0)
        for index, (x, y) in enumerate(chunk):
            total[:, y : y + patch, x : x + patch] += drops[index][:, None, None]
            count[y : y + patch, x : x + patch] += 1.0
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def patch_positions(box: Box, patch: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of patches tiling `box` (left, top, width, height) to its far edges."""
    left, top, width, height = box
    xs = _starts(left, width, patch, stride)
    ys = _starts(top, height, patch, stride)
    return [(x, y) for y in ys for x in xs]


def _starts(offset: int, extent: int, patch: int, stride: int) -> list[int]:
    last = max(extent - patch, 0)
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)  # the far edge is occluded too
    return [offset + s for s in starts]


def _heatmaps(maps: FloatArray, wanted: Sequence[str], method: Method) -> list[Heatmap]:
    heatmaps = []
    for name, values in zip(wanted, maps, strict=True):
        peak = float(values.max())
        if peak <= 0.0:
            note = f"no {method} evidence for {name!r}: the heatmap is empty"
            heatmaps.append(Heatmap(name, method, np.zeros_like(values), (note,)))
        else:
            heatmaps.append(Heatmap(name, method, values / np.float32(peak)))
    return heatmaps
