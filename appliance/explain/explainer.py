"""Explain one model result the way its manifest says: CAM output, occlusion, or not at all."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from appliance.explain.heatmaps import Heatmap, cam_heatmaps, occlusion_heatmaps
from appliance.runtime.engine import Model
from appliance.runtime.findings import ModelResult, activate
from appliance.runtime.manifest import OutputSpec
from appliance.runtime.preprocess import Geometry

Which = Literal["positive", "all"]


def explain(
    model: Model,
    result: ModelResult,
    which: Which = "positive",
    batch_size: int = 32,
    scale: float = 1.0,
) -> list[Heatmap]:
    """Heatmaps in image coordinates for the positive labels (or all) of `result`.

    `scale` < 1 gives them for a copy of the image resized by that factor: a heatmap is smooth,
    so a preview-sized one holds the same information at a fraction of the cost.
    Scores outputs without a CAM output get no heatmap under method 'cam'; the manifest's
    cross-checks guarantee at least one has one.
    """
    method = model.manifest.explanation.method
    heatmaps: list[Heatmap] = []
    if method == "none":
        return heatmaps
    for output in model.manifest.outputs_of("scores"):
        wanted = _wanted(output, result, which)
        if not wanted:
            continue
        labels = [label.name for label in output.labels]
        geometry = result.prepared.geometry.scaled(scale)
        if method == "cam":
            heatmaps += _from_cam(model, result, output, labels, wanted, geometry)
        else:
            heatmaps += _by_occlusion(model, result, output, labels, wanted, batch_size, geometry)
    return heatmaps


def _wanted(output: OutputSpec, result: ModelResult, which: Which) -> list[str]:
    names = {label.name for label in output.labels}
    return [f.label for f in result.labels if f.label in names and (which == "all" or f.positive)]


def _from_cam(
    model: Model,
    result: ModelResult,
    output: OutputSpec,
    labels: list[str],
    wanted: list[str],
    geometry: Geometry,
) -> list[Heatmap]:
    cam = model.manifest.cam_for(output.name)
    if cam is None:
        return []
    return cam_heatmaps(result.outputs[cam.name], geometry, labels, wanted)


def _by_occlusion(
    model: Model,
    result: ModelResult,
    output: OutputSpec,
    labels: list[str],
    wanted: list[str],
    batch_size: int,
    geometry: Geometry,
) -> list[Heatmap]:
    def score(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return activate(model.run(batch)[output.name], output.activation)

    settings = model.manifest.explanation
    return occlusion_heatmaps(
        score,
        result.prepared.tensor[result.position],
        geometry,
        labels,
        wanted,
        patch=settings.patch,
        stride=settings.stride,
        batch_size=batch_size,
    )
