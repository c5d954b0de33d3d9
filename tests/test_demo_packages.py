"""The bundled demo model packages: intact, self-describing, and as good in INT8 as in FP32.

Checked with ONNX Runtime and numpy only, on fresh phantoms (seeds 900000 and up, which no
recipe uses), with the reference preprocessing in `appliance.phantoms.preprocess`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type hints
import pytest
import yaml

from appliance.phantoms import (
    CHEST_FINDINGS,
    chest_dataset,
    chest_model_input,
    make_chest,
    make_ultrasound,
    ultrasound_dataset,
    ultrasound_model_input,
)

MODELS = Path(__file__).resolve().parent.parent / "models"
PACKAGES = ("demo-chest-xray", "demo-ultrasound-fluid")
FRESH = 900_000
CAUTION = "Demo model trained on synthetic images only. Not for clinical use."
REQUIRED = {
    "format",
    "name",
    "version",
    "task",
    "title",
    "intended_use",
    "not_for_clinical_use",
    "caution",
    "applies_to",
    "input",
    "outputs",
    "explanation",
    "files",
    "validation",
}
INPUT_KEYS = {
    "name",
    "height",
    "width",
    "channels",
    "layout",
    "resize",
    "window",
    "mean",
    "std",
    "frames",
    "crop_to_ultrasound_region",
    "batch",
}


def manifest(package: str) -> dict[str, Any]:
    loaded = yaml.safe_load((MODELS / package / "manifest.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def session(package: str, which: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path = MODELS / package / manifest(package)["files"][which]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("package", PACKAGES)
def test_checksums_cover_the_manifest_and_every_named_file(package: str) -> None:
    folder = MODELS / package
    listed: dict[str, str] = {}
    for line in (folder / "SHA256SUMS").read_text(encoding="ascii").splitlines():
        match = re.fullmatch(r"([0-9a-f]{64})  (\S+)", line)
        assert match, f"not sha256sum format: {line!r}"
        listed[match.group(2)] = match.group(1)
    named = manifest(package)
    assert set(listed) == {"manifest.yaml", *named["files"].values(), named["golden"]["file"]}
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("package", PACKAGES)
def test_manifest_has_the_required_fields(package: str) -> None:
    m = manifest(package)
    assert set(m) >= REQUIRED, REQUIRED - set(m)
    assert m["format"] == 1 and m["name"] == package
    assert re.fullmatch(r"[a-z0-9-]{2,64}", m["name"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(m["version"]))
    assert m["not_for_clinical_use"] is True and m["caution"] == CAUTION
    assert set(m["input"]) == INPUT_KEYS
    assert m["input"]["layout"] == "NCHW" and m["input"]["batch"] == "dynamic"
    assert m["explanation"]["method"] in ("cam", "occlusion", "none")
    assert {"fp32", "int8"} == set(m["files"])
    for output in m["outputs"]:
        assert output["kind"] in ("scores", "mask", "cam")
        for label in output.get("labels", []):
            assert 0.0 < label["threshold"] < 1.0
            assert label["priority"] in ("urgent", "review", "routine")
    assert m["validation"]["dataset"] and m["validation"]["metrics"]


@pytest.mark.parametrize("package", PACKAGES)
def test_package_is_under_ten_megabytes(package: str) -> None:
    total = sum(p.stat().st_size for p in (MODELS / package).iterdir() if p.is_file())
    assert total < 10 * 1024 * 1024


@pytest.mark.parametrize("which", ["fp32", "int8"])
@pytest.mark.parametrize("package", PACKAGES)
def test_onnx_names_and_shapes_match_the_manifest(package: str, which: str) -> None:
    m = manifest(package)
    sess = session(package, which)
    (graph_input,) = sess.get_inputs()
    spec = m["input"]
    assert graph_input.name == spec["name"]
    assert graph_input.shape[1:] == [spec["channels"], spec["height"], spec["width"]]
    assert isinstance(graph_input.shape[0], str)  # dynamic batch
    assert [o.name for o in sess.get_outputs()] == [o["name"] for o in m["outputs"]]
    batch = np.zeros((2, spec["channels"], spec["height"], spec["width"]), dtype=np.float32)
    names = [o["name"] for o in m["outputs"]]
    results = dict(zip(names, sess.run(None, {spec["name"]: batch}), strict=True))
    for output in m["outputs"]:
        value = results[output["name"]]
        if output["kind"] == "scores":
            assert value.shape == (2, len(output["labels"]))
        elif output["kind"] == "cam":
            scores = next(o for o in m["outputs"] if o["name"] == output["for"])
            assert value.shape[:2] == (2, len(scores["labels"])) and value.ndim == 4
        else:
            assert value.shape == (2, len(output["labels"]), spec["height"], spec["width"])
        if output["kind"] != "cam":
            assert value.min() >= 0.0 and value.max() <= 1.0


# --- chest: INT8 vs FP32 and CAM localisation on fresh phantoms ---------------------------------


@pytest.fixture(scope="module")
def chest_run() -> dict[str, np.ndarray]:
    inputs, labels, masks, inner = [], [], [], []
    for seed in range(FRESH, FRESH + 100):
        phantom = make_chest(seed, rows=320)
        x, placement = chest_model_input(chest_dataset(phantom))
        inputs.append(x[0])
        labels.append([phantom.labels[n] for n in CHEST_FINDINGS])
        masks.append(
            {n: placement.forward(m.astype(np.float32)) > 0.5 for n, m in phantom.masks.items()}
        )
        inner.append(placement.inner)
    batch = np.stack(inputs)
    out: dict[str, Any] = {"labels": np.array(labels), "masks": masks, "inner": inner}
    for which in ("fp32", "int8"):
        out[f"{which}_scores"], out[f"{which}_cam"] = session("demo-chest-xray", which).run(
            None, {"image": batch}
        )
    return out


def chest_thresholds() -> np.ndarray:
    (scores,) = [o for o in manifest("demo-chest-xray")["outputs"] if o["kind"] == "scores"]
    assert [label["name"] for label in scores["labels"]] == list(CHEST_FINDINGS)
    return np.array([label["threshold"] for label in scores["labels"]])


def test_chest_int8_decisions_agree_with_fp32(chest_run: dict[str, Any]) -> None:
    thresholds = chest_thresholds()
    fp32 = chest_run["fp32_scores"] >= thresholds
    int8 = chest_run["int8_scores"] >= thresholds
    assert (fp32 == int8).mean() >= 0.99


def test_chest_model_separates_findings(chest_run: dict[str, Any]) -> None:
    """A floor well below the recorded figures: catches a broken package, not a weak one."""
    for k, name in enumerate(CHEST_FINDINGS):
        truth = chest_run["labels"][:, k]
        scores = chest_run["fp32_scores"][:, k]
        positives, negatives = scores[truth], scores[~truth]
        auc = (positives[:, None] > negatives[None, :]).mean()
        assert auc >= 0.8, (name, auc)


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_chest_cam_peaks_inside_the_lesion(chest_run: dict[str, Any], which: str) -> None:
    hits = total = 0
    for i, (truth, masks, inner) in enumerate(
        zip(chest_run["labels"], chest_run["masks"], chest_run["inner"], strict=True)
    ):
        for k in np.flatnonzero(truth):
            cam = chest_run[f"{which}_cam"][i, k].astype(np.float32)
            heat = cv2.resize(cam, (256, 256), interpolation=cv2.INTER_LINEAR)[inner]
            y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
            hits += bool(masks[CHEST_FINDINGS[k]][inner][y, x])
            total += 1
    assert total >= 100
    assert hits / total >= 0.9


# --- ultrasound: INT8 vs FP32 and segmentation quality ----------------------------------


@pytest.fixture(scope="module")
def ultrasound_run() -> dict[str, Any]:
    inputs, truths, placements = [], [], []
    for seed in range(FRESH, FRESH + 40):
        phantom = make_ultrasound(seed, color=seed % 2 == 0)
        x, placement = ultrasound_model_input(ultrasound_dataset(phantom))
        x0, y0, x1, y1 = phantom.geometry.region
        inputs.append(x[0])
        truths.append(phantom.fluid_mask[y0 : y1 + 1, x0 : x1 + 1])
        placements.append(placement)
    batch = np.stack(inputs)
    out: dict[str, Any] = {"truths": truths}
    for which in ("fp32", "int8"):
        (masks,) = session("demo-ultrasound-fluid", which).run(None, {"image": batch})
        out[which] = [p.inverse(m[0]) >= 0.5 for p, m in zip(placements, masks, strict=True)]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


def test_ultrasound_int8_agrees_with_fp32(ultrasound_run: dict[str, Any]) -> None:
    fp32, int8 = ultrasound_run["fp32"], ultrasound_run["int8"]
    pixels = np.mean([(a == b).mean() for a, b in zip(fp32, int8, strict=True)])
    assert pixels >= 0.99
    assert np.mean([a.any() == b.any() for a, b in zip(fp32, int8, strict=True)]) >= 0.95


def test_ultrasound_model_outlines_the_fluid(ultrasound_run: dict[str, Any]) -> None:
    scores = [
        dice(predicted, truth)
        for predicted, truth in zip(ultrasound_run["fp32"], ultrasound_run["truths"], strict=True)
        if truth.any()
    ]
    assert len(scores) >= 20
    assert float(np.median(scores)) >= 0.8
