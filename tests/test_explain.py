"""Explanations: CAM and occlusion heatmaps land on the bright blob; overlays are real PNGs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.explain import (
    explain,
    mask_overlay_png,
    occlusion_maps,
    overlay_png,
    patch_positions,
)
from appliance.imaging import decode
from appliance.runtime import Model
from appliance.runtime.backends import BackendOptions
from appliance.runtime.findings import ModelResult

from runtime_models import (
    blob_image,
    classifier_manifest,
    dicom_file,
    segmenter_manifest,
    segmenter_onnx,
    write_package,
)

CPU = BackendOptions(threads=1)
CENTRE, RADIUS = (230, 70), 30  # a blob off-centre in a wide 200 x 320 image


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    return dicom_file(folder, blob_image(200, 320, CENTRE, RADIUS), PixelSpacing=[0.2, 0.2])


def open_model(folder: Path, method: str) -> Model:
    manifest = classifier_manifest(explanation={"method": method, "patch": 8, "stride": 4})
    return Model.open(write_package(folder, manifest), CPU)


def inside_blob(peak: tuple[int, int]) -> bool:
    return (peak[0] - CENTRE[0]) ** 2 + (peak[1] - CENTRE[1]) ** 2 <= RADIUS**2


def bright_result(model: Model, blob: Path) -> ModelResult:
    result = model.infer([decode(blob)])[0]
    result_labels = {f.label: f for f in result.labels}
    assert not result_labels["bright"].positive  # a small blob: explain "all" labels below
    return result


@pytest.mark.parametrize("method", ["cam", "occlusion"])
def test_the_heatmap_peaks_inside_the_blob(tmp_path: Path, blob: Path, method: str) -> None:
    with open_model(tmp_path / method, method) as model:
        result = bright_result(model, blob)
        heatmaps = {h.label: h for h in explain(model, result, "all")}
    bright = heatmaps["bright"]
    assert bright.method == method
    assert bright.values.shape == (200, 320)
    assert inside_blob(bright.peak), bright.peak
    if method == "cam":
        assert bright.values.dtype == np.float32
        assert bright.values.max() == pytest.approx(1.0) and bright.values.min() >= 0.0
        assert bright.values[20, 20] == 0.0  # background: no positive evidence for "bright"


def test_only_positive_labels_are_explained_by_default(tmp_path: Path, blob: Path) -> None:
    with open_model(tmp_path / "cam", "cam") as model:
        result = model.infer([decode(blob)])[0]
        assert [h.label for h in explain(model, result)] == ["dark"]


def test_occlusion_in_batches_equals_one_by_one(tmp_path: Path, blob: Path) -> None:
    with open_model(tmp_path / "occlusion", "occlusion") as model:
        result = model.infer([decode(blob)])[0]
        tensor, box = result.prepared.tensor[0], result.prepared.geometry.content
        calls: list[int] = []

        def score(batch: np.ndarray) -> np.ndarray:
            calls.append(batch.shape[0])
            return 1 / (1 + np.exp(-model.run(batch)["logits"]))

        batched = occlusion_maps(score, tensor, box, patch=8, stride=4, batch_size=64)
        batch_calls = len(calls)
        single = occlusion_maps(score, tensor, box, patch=8, stride=4, batch_size=1)
    positions = len(patch_positions(box, 8, 4))
    assert max(calls[:batch_calls]) == 64 and batch_calls == 1 + -(-positions // 64)
    np.testing.assert_allclose(batched, single, atol=1e-6)


def test_patches_cover_the_content_to_its_far_edges() -> None:
    positions = patch_positions((0, 12, 64, 40), patch=16, stride=16)
    xs, ys = {x for x, _ in positions}, {y for _, y in positions}
    assert xs == {0, 16, 32, 48} and ys == {12, 28, 36}


def test_overlay_png_decodes_at_the_image_size(tmp_path: Path, blob: Path) -> None:
    with open_model(tmp_path / "cam", "cam") as model:
        result = model.infer([decode(blob)])[0]
        heatmap = explain(model, result, "all")[0]
    png = overlay_png(result.display, heatmap.values)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (200, 320, 3)
    x, y = heatmap.peak
    assert decoded[y, x, 2] > decoded[y, x, 0]  # the hot spot is tinted red (BGR)
    assert np.array_equal(decoded[5, 5], [result.display[5, 5]] * 3)  # cold: untouched


def test_overlay_refuses_a_heatmap_of_another_size() -> None:
    with pytest.raises(ValueError, match=r"heatmap shape \(2, 2\) is not the image's \(3, 3\)"):
        overlay_png(np.zeros((3, 3), np.uint8), np.zeros((2, 2), np.float32))


def test_mask_overlay_outlines_the_segmentation(tmp_path: Path, blob: Path) -> None:
    manifest = segmenter_manifest(128)
    with Model.open(write_package(tmp_path / "seg", manifest, segmenter_onnx), CPU) as model:
        result = model.infer([decode(blob)])[0]
        assert explain(model, result, "all") == []  # method none
    png = mask_overlay_png(result.display, [m.mask for m in result.masks])
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (200, 320, 3)
    x, y = result.masks[0].outlines[0][0]
    assert tuple(decoded[y, x]) == (0, 140, 255)  # the outline colour of the first label
