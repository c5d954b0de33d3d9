"""Inference through real ONNX Runtime: scores, masks in mm², provenance, batching."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from appliance.imaging import decode
from appliance.runtime import Model, load_package
from appliance.runtime.backends import BackendOptions

from runtime_models import (
    blob_image,
    classifier_manifest,
    dicom_file,
    segmenter_manifest,
    segmenter_onnx,
    sha256,
    write_package,
)

CPU = BackendOptions(threads=1)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Model:
    folder = tmp_path_factory.mktemp("models") / "classifier"
    return Model.open(write_package(folder, classifier_manifest()), CPU)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Model:
    folder = tmp_path_factory.mktemp("models") / "segmenter"
    return Model.open(write_package(folder, segmenter_manifest(128), segmenter_onnx), CPU)


def test_scores_are_the_hand_computed_values(classifier: Model) -> None:
    # Half the square picture white: display mean 0.5 -> normalised mean 0 -> sigmoid 0.5.
    # The letterbox adds nothing for a square picture.
    picture = np.zeros((40, 40), dtype=np.uint8)
    picture[:, :20] = 255
    result = classifier.infer([picture])[0]
    assert [f.score for f in result.labels] == pytest.approx([0.5, 0.5], abs=1e-6)
    # A white quarter: display mean 0.25 -> (0.25 - 0.5) / 0.25 = -1.
    picture[:, :] = 0
    picture[:20, :20] = 255
    bright, dark = classifier.infer([picture])[0].labels
    assert bright.score == pytest.approx(sigmoid(-1.0), abs=1e-6)
    assert dark.score == pytest.approx(sigmoid(1.0), abs=1e-6)
    assert (bright.positive, dark.positive) == (False, True)


def test_findings_carry_labels_codes_priorities_and_provenance(
    classifier: Model, tmp_path: Path
) -> None:
    image = decode(dicom_file(tmp_path, blob_image(100, 100, (50, 50), 40)))
    result = classifier.infer([image])[0]
    bright = result.labels[0]
    assert (bright.label, bright.display, bright.priority) == ("bright", "Bright area", "urgent")
    assert bright.code is not None and bright.code.scheme == "99TEST"
    assert bright.positive and bright.score >= bright.threshold
    assert result.positives == ("bright",)
    provenance = result.to_dict()
    assert provenance["model"] == "test-classifier" and provenance["version"] == "0.1.0"
    assert provenance["model_sha256"] == sha256(classifier.package.model_file())
    assert provenance["backend"] == "onnxruntime-cpu" and provenance["precision"] == "fp32"
    assert provenance["not_for_clinical_use"] is True
    assert set(provenance["timing"]) == {"preprocess_ms", "model_ms", "postprocess_ms"}


@pytest.mark.parametrize(
    ("rows", "columns", "centre", "radius"),
    [(512, 512, (256, 256), 100), (400, 600, (250, 180), 70.5), (300, 500, (100, 150), 40)],
)
def test_mask_area_in_mm2_matches_the_disc(
    segmenter: Model,
    tmp_path: Path,
    rows: int,
    columns: int,
    centre: tuple[int, int],
    radius: float,
) -> None:
    spacing = (0.3, 0.25)
    image = decode(
        dicom_file(tmp_path, blob_image(rows, columns, centre, radius), PixelSpacing=list(spacing))
    )
    mask = segmenter.infer([image])[0].masks[0]
    true_area = math.pi * radius**2 * spacing[0] * spacing[1]
    assert mask.area_mm2 == pytest.approx(true_area, rel=0.03)
    assert mask.mask.shape == (rows, columns)
    assert len(mask.outlines) == 1
    xs, ys = mask.outlines[0][:, 0], mask.outlines[0][:, 1]
    assert abs((xs.min() + xs.max()) / 2 - centre[0]) <= 2
    assert abs((ys.min() + ys.max()) / 2 - centre[1]) <= 2
    assert mask.positive and mask.priority == "review"


def test_mask_area_is_unknown_without_spacing(segmenter: Model) -> None:
    mask = segmenter.infer([blob_image(100, 100, (50, 50), 20).astype(np.float32) / 3000])[0]
    finding = mask.masks[0]
    assert finding.area_px > 0 and finding.area_mm2 is None
    assert "no physical pixel spacing" in finding.notes[0]


def test_detector_spacing_is_noted(segmenter: Model, tmp_path: Path) -> None:
    path = dicom_file(tmp_path, blob_image(64, 64, (32, 32), 10), ImagerPixelSpacing=[0.2, 0.2])
    finding = segmenter.infer([decode(path)])[0].masks[0]
    assert finding.area_mm2 is not None
    assert "ImagerPixelSpacing" in finding.notes[0]


def test_a_batch_gives_the_same_results_as_one_at_a_time(classifier: Model, tmp_path: Path) -> None:
    images = [
        decode(
            dicom_file(tmp_path, blob_image(90 + 10 * i, 120, (30 + 15 * i, 40), 12), f"{i}.dcm")
        )
        for i in range(5)
    ]
    together = classifier.infer(images)
    alone = [classifier.infer([image])[0] for image in images]
    assert len(together) == 5
    for a, b in zip(together, alone, strict=True):
        assert [f.score for f in a.labels] == pytest.approx([f.score for f in b.labels], abs=1e-6)
        np.testing.assert_allclose(a.outputs["cam"], b.outputs["cam"], atol=1e-6)


def test_a_fixed_batch_model_runs_batches_one_by_one(tmp_path: Path) -> None:
    dynamic = classifier_manifest()
    fixed = classifier_manifest(input={**dynamic["input"], "batch": 1})
    with Model.open(write_package(tmp_path / "fixed", fixed), CPU) as model:
        assert model.backend.max_batch == 1
        batch = np.random.default_rng(1).normal(size=(3, 1, 64, 64)).astype(np.float32)
        outputs = model.run(batch)
        assert outputs["logits"].shape == (3, 2)
        expected = batch.mean(axis=(1, 2, 3))
        np.testing.assert_allclose(outputs["logits"][:, 0], expected, atol=1e-5)


def test_every_frame_gets_its_own_result(tmp_path: Path) -> None:
    manifest = classifier_manifest()
    manifest["input"]["frames"] = "all"
    frames = np.stack([blob_image(48, 48, (24, 24), r) for r in (4, 12, 20)])
    image = decode(dicom_file(tmp_path, frames, NumberOfFrames=3))
    with Model.open(write_package(tmp_path / "cine", manifest), CPU) as model:
        results = model.infer([image])
    assert [r.frame for r in results] == [0, 1, 2]
    scores = [r.labels[0].score for r in results]
    assert scores[0] < scores[1] < scores[2]  # a bigger bright disc each frame


def test_a_package_folder_is_verified_when_opened(tmp_path: Path) -> None:
    folder = write_package(tmp_path / "classifier", classifier_manifest())
    with Model.open(folder, CPU) as model:
        assert model.package.folder == folder
        assert model.infer([]) == []
    assert load_package(folder).model_hash() == model.provenance.model_hash
