"""`appliance infer`: real files in, findings JSON out, overlays written, bad input reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from appliance.cli import main

from imaging_fixtures import read, save
from runtime_models import (
    blob_image,
    classifier_manifest,
    dicom_file,
    segmenter_manifest,
    segmenter_onnx,
    write_package,
)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    write_package(folder / "classifier", classifier_manifest())
    write_package(folder / "segmenter", segmenter_manifest(), segmenter_onnx)
    return folder


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["infer", "--threads", "1", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_infer_on_a_dicom_prints_findings_and_writes_overlays(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A disc over 69% of the image: the mean is bright enough for "bright".
    image = dicom_file(tmp_path, blob_image(128, 128, (64, 64), 60), PixelSpacing=[0.5, 0.5])
    out = tmp_path / "out"
    code, report, _ = run([str(image), "--models-dir", str(models), "--out", str(out)], capsys)
    assert code == 0
    entry = report["images"][0]
    assert entry["kind"] == "dicom" and entry["spacing_mm"] == [0.5, 0.5]
    by_model = {r["model"]: r for r in entry["results"]}
    classifier = by_model["test-classifier"]
    assert classifier["positives"] == ["bright"]
    assert classifier["labels"][0]["label"] == "bright" and classifier["labels"][0]["positive"]
    assert classifier["model_sha256"] and classifier["not_for_clinical_use"] is True
    assert [h["label"] for h in classifier["heatmaps"]] == ["bright"]
    overlay = Path(classifier["overlays"][0])
    assert overlay.parent == out and overlay.name == "001-test-classifier-f0-bright-cam.png"
    picture = cv2.imread(str(overlay))
    assert picture is not None and picture.shape == (128, 128, 3)
    segmenter = by_model["test-segmenter"]
    assert segmenter["masks"][0]["area_mm2"] > 0
    assert Path(segmenter["overlays"][0]).name == "001-test-segmenter-f0-masks.png"


def test_images_are_routed_by_their_tags(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = dicom_file(tmp_path, blob_image(32, 32, (16, 16), 5), Modality="US")
    code, report, _ = run([str(image), "--models-dir", str(models)], capsys)
    assert code == 0
    entry = report["images"][0]
    assert entry["results"] == []
    reasons = {n["model"]: n["reasons"] for n in entry["not_applied"]}
    assert reasons["test-classifier"] == ["modality 'US' is not one of CR, DX"]


def test_pictures_need_their_tags_on_the_command_line(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "photo.png"
    cv2.imwrite(str(picture), blob_image(64, 64, (32, 32), 20).astype(np.uint8))
    code, report, _ = run([str(picture), "--models-dir", str(models)], capsys)
    assert code == 0 and report["images"][0]["results"] == []
    assert "Modality missing" in report["images"][0]["not_applied"][0]["reasons"][0]
    code, report, _ = run(
        [str(picture), "--model", str(models / "classifier"), "--modality", "cr"], capsys
    )
    entry = report["images"][0]
    assert entry["kind"] == "png" and [r["model"] for r in entry["results"]] == ["test-classifier"]
    assert entry["results"][0]["overlays"] == []  # no --out: nothing written


def test_an_undecodable_file_is_reported_and_the_others_still_run(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM")
    good = dicom_file(tmp_path, blob_image(32, 32, (16, 16), 8))
    code, report, err = run([str(junk), str(good), "--models-dir", str(models)], capsys)
    assert code == 1
    assert report["images"][0]["file"] == str(junk)
    assert "not a readable DICOM file" in report["images"][0]["error"]
    assert f"appliance: {junk}: not a readable DICOM file" in err
    assert "Traceback" not in err
    assert report["images"][1]["results"]


def test_a_dicom_without_pixels_says_which_attribute_is_missing(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = read("MR_small.dcm")
    del ds.PixelData
    path = save(ds, tmp_path, "no-pixels.dcm")
    code, report, err = run([str(path), "--models-dir", str(models)], capsys)
    assert code == 1
    assert "missing required attribute PixelData (7FE0,0010)" in report["images"][0]["error"]
    assert "Traceback" not in err


def test_a_broken_picture_is_named_once_and_out_must_be_a_folder(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code, report, err = run([str(broken), "--models-dir", str(models)], capsys)
    assert "not a readable PNG" in report["images"][0]["error"]
    assert code == 1
    assert f"appliance: {broken}: not a readable PNG or JPEG image" in err
    assert err.count(str(broken)) == 1
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    good = dicom_file(tmp_path, blob_image(32, 32, (16, 16), 8))
    assert main(["infer", str(good), "--models-dir", str(models), "--out", str(taken)]) == 2
    assert f"--out {taken}: cannot use it as a folder" in capsys.readouterr().err


def test_an_implausible_picture_is_held_back_as_the_worker_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    black = tmp_path / "black.png"
    assert cv2.imwrite(str(black), np.zeros((64, 64), dtype=np.uint8))
    chest = Path(__file__).resolve().parent.parent / "models" / "demo-chest-xray"
    argv = [str(black), "--model", str(chest), "--modality", "CR", "--body-part", "CHEST"]
    code, report, _ = run(argv, capsys)
    assert code == 0
    [result] = report["images"][0]["results"]
    assert "labels" not in result and "positives" not in result  # never scored
    assert any("blank" in reason for reason in result["held_back"])


def test_no_packages_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infer", str(tmp_path / "x.dcm"), "--models-dir", str(tmp_path)]) == 2
    assert "no usable model packages" in capsys.readouterr().err


def test_an_unavailable_backend_stops_with_a_message(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime  # type: ignore[import-untyped]  # ships no type hints

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    image = dicom_file(tmp_path, blob_image(32, 32, (16, 16), 8))
    argv = ["infer", str(image), "--models-dir", str(models), "--backend", "cuda"]
    assert main(argv) == 2
    assert "needs ONNX Runtime's CUDAExecutionProvider" in capsys.readouterr().err


def test_registering_the_commands_imports_nothing_heavy() -> None:
    """Every `appliance` command builds the whole parser: it must stay cheap."""
    code = (
        "import sys; from appliance.cli import build_parser; build_parser(); "
        "import appliance.runtime as r; assert sorted(r.__all__) == sorted(r._HOME); "
        "print([m for m in ('cv2', 'onnx', 'onnxruntime', 'appliance.explain') "
        "if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
