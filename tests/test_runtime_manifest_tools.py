"""Tools that write manifests: comments and key order survive quantize, profile and
validate --write; `model init` writes a skeleton from the graph; `model verify` refuses logits
declared as probabilities; `infer` says which precision it ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from appliance.cli import main
from appliance.runtime import precision
from appliance.runtime.errors import ManifestError
from appliance.runtime.manifest import parse_manifest
from appliance.runtime.package import load_package
from appliance.runtime.precision import choose_precision
from appliance.runtime.skeleton import inspect_graph

from runtime_models import (
    classifier_manifest,
    classifier_onnx,
    nhwc_classifier_onnx,
    segmenter_onnx,
    stripes_dataset,
    third_party_onnx,
    write_package,
    write_sums,
)

SITE_NOTE = "# Site note: thresholds agreed with radiology, 2026-03"
THRESHOLD_NOTE = "# maker's operating point, see their paper"


def commented_package(folder: Path) -> Path:
    """A classifier package whose manifest carries an admin's comments."""
    manifest = classifier_manifest()
    manifest["validation"] = {"dataset": "maker's figures", "metrics": {"bright": {"auc": 0.9}}}
    write_package(folder, manifest)
    text = f"{SITE_NOTE}\n" + yaml.safe_dump(manifest, sort_keys=False)
    text = text.replace("    threshold: 0.5\n", f"    threshold: 0.5  {THRESHOLD_NOTE}\n", 1)
    (folder / "manifest.yaml").write_text(text)
    write_sums(folder, ["manifest.yaml", "model.onnx"])
    return folder


def stripes(folder: Path, count: int = 12) -> Path:
    """PNGs with a bright band of growing height, labelled `bright` when over half the rows."""
    return stripes_dataset(folder, [6 + number * 52 // count for number in range(count)])


def keys_in_order(text: str) -> list[str]:
    return [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]


def test_comments_and_order_survive_quantize_profile_and_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = commented_package(tmp_path / "pkg")
    images = stripes(tmp_path / "images")
    order = keys_in_order((package / "manifest.yaml").read_text())
    for command in (
        ["model", "quantize", str(package), "--calibration", str(images)],
        ["model", "profile", str(package), "--dataset", str(images)],
        ["model", "validate", str(package), "--dataset", str(images), "--write"],
    ):
        code = main(
            [*command, "--out", str(tmp_path / "report")] if "--write" in command else command
        )
        assert code == 0, capsys.readouterr().err
        text = (package / "manifest.yaml").read_text()
        assert text.startswith(SITE_NOTE + "\n"), command
        assert f"threshold: 0.5  {THRESHOLD_NOTE}" in text, command
        assert keys_in_order(text)[: len(order)] == order, command
        load_package(package)  # re-sealed and valid
    manifest = load_package(package).manifest
    assert manifest.files.int8 is not None and manifest.quality is not None


def test_validate_write_records_the_measured_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = commented_package(tmp_path / "pkg")
    images = stripes(tmp_path / "images", count=10)
    out = tmp_path / "report"
    args = ["model", "validate", str(package), "--dataset", str(images), "--out", str(out)]
    assert main([*args, "--write"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    validation = load_package(package).manifest.validation
    assert validation is not None
    measured = report["labels"]["bright"]["fp32"]
    assert validation.metrics["bright"]["auc"] == measured["auc"]["value"]
    assert validation.metrics["bright"]["sensitivity"] == measured["sensitivity"]["value"]
    assert validation.metrics["bright"]["n"] == 10
    assert validation.dataset.startswith("site images in images, 10 image(s)")
    assert "re-sealed" in capsys.readouterr().out


# --- model init -----------------------------------------------------------------------------


def _init(tmp_path: Path, onnx_file: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = tmp_path / "skeleton"
    assert main(["model", "init", str(onnx_file), "--out", str(out)]) == 0
    assert "fill in every TODO" in capsys.readouterr().out
    text = (out / "manifest.yaml").read_text()
    with pytest.raises(ManifestError, match="TODO"):  # cannot be imported as it is
        parse_manifest(text)
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def test_init_on_an_nchw_grey_classifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _init(tmp_path, classifier_onnx(tmp_path / "m.onnx", size=96), capsys)
    assert {k: data["input"][k] for k in ("name", "height", "width", "channels", "layout")} == {
        "name": "image",
        "height": 96,
        "width": 96,
        "channels": 1,
        "layout": "NCHW",
    }
    assert data["input"]["batch"] == "dynamic"
    assert [(o["name"], o["kind"]) for o in data["outputs"]] == [
        ("logits", "scores"),
        ("cam", "cam"),
    ]
    logits = data["outputs"][0]
    assert logits["activation"] == "TODO"  # the graph ends in Flatten: logits, not probabilities
    assert len(logits["labels"]) == 2 and logits["labels"][0]["negative"] is True
    # A rank-4 output with as many classes as the scores: their activation maps.
    assert data["outputs"][1] == {"name": "cam", "kind": "cam", "for": "logits"}
    assert data["explanation"]["method"] == "cam"


def test_init_on_an_nhwc_rgb_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = third_party_onnx(tmp_path / "m.onnx", size=150, dynamic=False)
    data = _init(tmp_path, path, capsys)
    assert (data["input"]["layout"], data["input"]["channels"]) == ("NHWC", 3)
    assert (data["input"]["height"], data["input"]["width"], data["input"]["batch"]) == (
        150,
        150,
        1,
    )


def test_init_on_a_segmenter_and_a_softmax_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _init(tmp_path, segmenter_onnx(tmp_path / "seg.onnx", size=64), capsys)
    (mask,) = data["outputs"]
    assert (mask["kind"], mask["threshold"], len(mask["labels"])) == ("mask", "TODO", 1)
    path = third_party_onnx(tmp_path / "soft.onnx", size=32)
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])
    )
    onnx.save(model, str(path))
    assert inspect_graph(path).outputs[0].ends_in == "softmax"
    square = nhwc_classifier_onnx(tmp_path / "sq.onnx", size=3)  # 3 x 3 x 1: cannot tell
    assert inspect_graph(square).layout is None


def test_init_on_a_segmenter_guesses_a_segmentation_task_that_imports_once_filled_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _init(tmp_path, segmenter_onnx(tmp_path / "seg.onnx", size=64), capsys)
    assert (data["task"], data["explanation"]["method"]) == ("segmentation", "none")
    filled = {"name": "third-party-seg", "version": "1.0.0", "title": "Seg", "caution": "Test"}
    data.update(filled, intended_use="Test")
    data["input"].update(
        resize="stretch", interpolation="nearest", window="minmax", mean=[0.0], std=[1.0]
    )
    (mask,) = data["outputs"]
    mask.update(activation="none", threshold=0.5)
    mask["labels"] = [{"name": "region", "display": "Region", "priority": "review"}]
    parse_manifest(yaml.safe_dump(data))  # no other guess to correct


def test_init_never_writes_over_a_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.yaml").write_text("mine\n")
    code = main(
        ["model", "init", str(classifier_onnx(tmp_path / "m.onnx")), "--out", str(tmp_path)]
    )
    assert code != 0 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "manifest.yaml").read_text() == "mine\n"


# --- verify and infer ---------------------------------------------------------------------------


def test_verify_refuses_logits_declared_as_probabilities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = classifier_manifest()
    manifest["outputs"][0]["activation"] = "none"
    package = write_package(tmp_path / "p", manifest)
    assert main(["model", "verify", str(package)]) == 1
    err = capsys.readouterr().err
    assert "outputs.0 gives scores outside [0, 1] (" in err and "sigmoid or softmax" in err
    good = write_package(tmp_path / "good", classifier_manifest())
    assert main(["model", "verify", str(good)]) == 0


def _infer(
    capsys: pytest.CaptureFixture[str], picture: Path, package: Path, *options: str
) -> tuple[int, str, str]:
    """`appliance [options] infer PICTURE --model PACKAGE --modality CR`: status, out, err."""
    code = main([*options, "infer", str(picture), "--model", str(package), "--modality", "CR"])
    out, err = capsys.readouterr()
    return code, out, err


def test_infer_runs_the_precision_the_worker_would_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    package = write_package(tmp_path / "p", classifier_manifest())
    picture = tmp_path / "a.png"
    cv2.imwrite(str(picture), np.full((64, 64), 200, dtype=np.uint8))
    config = tmp_path / "appliance.yaml"
    config.write_text("models:\n  precision: fp32\n")
    code, out, err = _infer(capsys, picture, package, "--config", str(config))
    assert code == 0, err
    assert "precision fp32 (set in models.precision)" in err
    assert json.loads(out)["images"][0]["results"][0]["precision"] == "fp32"
    code, out, err = _infer(capsys, picture, package)
    assert code == 0, err
    auto = choose_precision("auto", "cpu")
    assert f"precision {auto.precision} ({auto.reason})" in err
    if auto.precision == "int8":  # this package has no INT8 file: FP32, as in the worker
        assert "has no INT8 file: it runs FP32" in err
    # On a processor with 8-bit dot products (whatever this one has), auto picks INT8 and a
    # package without an INT8 file still runs FP32, as in the worker.
    monkeypatch.setattr(precision, "read_cpu_flags", lambda *_: frozenset({"avx512_vnni"}))
    code, out, err = _infer(capsys, picture, package)
    assert code == 0, err
    assert "precision int8 (auto: " in err and "has no INT8 file: it runs FP32" in err
    assert json.loads(out)["images"][0]["results"][0]["precision"] == "fp32"
