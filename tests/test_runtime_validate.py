"""`appliance model validate`: figures checked by hand on a tiny model, a phantom run of the
demo package, and CSV errors that name what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import appliance.phantoms as phantoms
from appliance.cli import main
from appliance.runtime.validation import ROC_SIZE, auc_delong, validate, wilson

from runtime_models import (
    classifier_manifest,
    segmenter_manifest,
    segmenter_onnx,
    stripes_dataset,
    write_package,
)

REPO = Path(__file__).resolve().parent.parent

# Bright rows (of 64) per image and its `bright` label. The tiny classifier's `bright` score is
# sigmoid(4 * (fraction bright - 0.5)) under a min-max window, so the ranking is by rows and
# the threshold 0.5 falls between 29 and 35 rows.
ROWS = [6, 13, 19, 26, 29, 35, 38, 45, 51, 58]
BRIGHT = [0, 0, 1, 0, 0, 1, 0, 1, 1, 1]


def hand_counted_dataset(folder: Path) -> Path:
    """The images of ROWS with the labels of BRIGHT."""
    return stripes_dataset(folder, ROWS, BRIGHT)


def test_figures_match_hand_counts(tmp_path: Path) -> None:
    package = write_package(tmp_path / "classifier", classifier_manifest())
    dataset = hand_counted_dataset(tmp_path / "data")

    report = validate(package, dataset, out=tmp_path / "out", target=0.9)

    figures = report["labels"]["bright"]["fp32"]
    assert report["precisions"] == ["fp32"]  # no INT8 file: FP32 only
    assert report["labels_not_in_csv"] == ["dark"]
    assert (figures["n"], figures["positives"]) == (10, 5)
    # Pairs (positive above negative) by hand: 2 + 4 + 5 + 5 + 5 = 21 of 25.
    assert figures["auc"]["value"] == 0.84
    # DeLong by hand: var(V10) = 0.068, var(V01) = 0.028; se = sqrt(0.068/5 + 0.028/5).
    assert figures["auc"]["low"] == pytest.approx(0.84 - 1.96 * 0.0192**0.5, abs=1e-3)
    assert figures["auc"]["high"] == 1.0
    # At 0.5: positives 35, 38, 45, 51, 58 rows; 4 of 5 truly bright, 4 of 5 dark rejected.
    assert figures["sensitivity"]["count"] == "4/5" and figures["specificity"]["count"] == "4/5"
    assert figures["sensitivity"]["low"] == pytest.approx(0.3755, abs=1e-3)  # Wilson, 4/5
    assert figures["sensitivity"]["high"] == pytest.approx(0.9638, abs=1e-3)
    # Sensitivity >= 0.9 needs all 5 positives: threshold at 19 rows; 2 of 5 negatives below.
    at_target = figures["at_target_sensitivity"]
    expected = 1 / (1 + np.exp(-4 * (19 / 64 - 0.5)))
    assert at_target["threshold"] == pytest.approx(expected, abs=1e-4)
    assert (at_target["sensitivity"], at_target["specificity"]) == (1.0, 0.4)
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["labels"]["bright"]["fp32"]["auc"]["value"] == 0.84
    plot = cv2.imread(str(tmp_path / "out" / "roc-bright.png"))
    assert plot is not None and plot.shape == (ROC_SIZE[1], ROC_SIZE[0], 3)


def test_statistics_helpers() -> None:
    truth = np.array([True, True, False, False])
    assert auc_delong(np.array([0.9, 0.5, 0.5, 0.1]), truth)[0] == 0.875  # a tie counts half
    assert np.isnan(auc_delong(np.array([0.1, 0.2]), np.array([True, True]))[0])
    p, low, high = wilson(0, 10)
    assert (p, low) == (0.0, 0.0) and high == pytest.approx(0.2775, abs=1e-3)


def test_demo_package_on_phantoms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = tmp_path / "chest"
    shutil.copytree(REPO / "models" / "demo-chest-xray", package)
    dataset = tmp_path / "data"
    dataset.mkdir()
    lines = ["file,pleural_effusion,cardiomegaly"]
    for seed in range(910_000, 910_030):
        phantom = phantoms.make_chest(seed, rows=512)
        phantoms.chest_dataset(phantom).save_as(dataset / f"{seed}.dcm", enforce_file_format=True)
        labels = phantom.labels
        lines.append(f"{seed}.dcm,{int(labels['pleural_effusion'])},{int(labels['cardiomegaly'])}")
    # A blank picture labelled positive: the worker would hold it back, so it must not count.
    cv2.imwrite(str(dataset / "blank.png"), np.zeros((256, 256), dtype=np.uint8))
    lines.append("blank.png,1,1")
    (dataset / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "report"

    code = main(["model", "validate", str(package), "--dataset", str(dataset), "--out", str(out)])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["precisions"] == ["fp32", "int8"]
    effusion = report["labels"]["pleural_effusion"]
    assert effusion["fp32"]["n"] == 30 and effusion["fp32"]["auc"]["value"] > 0.9
    [held] = report["held_back"]
    assert held["file"] == "blank.png" and "blank" in held["reason"]
    assert "held back by the plausibility check" in captured.out
    assert effusion["int8_vs_fp32"]["decision_agreement"] >= 0.9
    assert report["plots"] == ["roc-pleural_effusion.png", "roc-cardiomegaly.png"]
    assert "pleural_effusion" in captured.out and "int8 vs fp32" in captured.out


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("name,bright\np0.png,1\n", "no 'file' column"),
        ("file,bright,nodule\np0.png,1,0\n", "column(s) nodule are not labels"),
        ("file,bright\np0.png,1\nmissing.png,0\n", "'missing.png'"),
        ("file,bright\np0.png,yes\n", "column 'bright' must be 0 or 1"),
        ("file\np0.png\n", "no label column"),
        ("file,bright\np0.png,1\np1.png,0,EXTRA\n", "labels.csv:3: 3 fields but the header has 2"),
        ("file,bright,bright\np0.png,1,0\n", "column(s) 'bright' appear twice"),
        ("file,bright\np0.png,1\np0.png,1\n", "listed more than once"),
        ("file,bright\n../data/p0.png,1\n", "without '..' or a leading '/'"),
        ("file,bright\n/etc/hostname,1\n", "without '..' or a leading '/'"),
    ],
)
def test_csv_errors_name_the_fault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], csv: str, message: str
) -> None:
    package = write_package(tmp_path / "classifier", classifier_manifest())
    dataset = hand_counted_dataset(tmp_path / "data")
    (dataset / "labels.csv").write_text(csv)
    code = main(["model", "validate", str(package), "--dataset", str(dataset)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_segmentation_needs_an_area_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = write_package(tmp_path / "segmenter", segmenter_manifest(), segmenter_onnx)
    dataset = hand_counted_dataset(tmp_path / "data")  # its CSV has `bright`, not `area_mm2`
    code = main(["model", "validate", str(package), "--dataset", str(dataset)])
    assert code == 2
    assert "needs an 'area_mm2' column" in capsys.readouterr().err
