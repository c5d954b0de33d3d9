"""Third-party models imported as they are: NHWC layout, interpolation and centre crop, the raw
window, a two-logit softmax shown as one finding, and logits declared as probabilities refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from appliance.explain import explain
from appliance.imaging import decode
from appliance.runtime.backends import BackendOptions
from appliance.runtime.engine import Model
from appliance.runtime.errors import InferenceError, InputError, ManifestError, PackageError
from appliance.runtime.findings import out_of_range
from appliance.runtime.importing import import_model
from appliance.runtime.manifest import InputSpec, parse_manifest
from appliance.runtime.package import load_package
from appliance.runtime.preprocess import prepare, resize
from appliance.runtime.quantize import quantize_package

from runtime_models import (
    blob_image,
    classifier_manifest,
    classifier_onnx,
    dicom_file,
    nhwc_classifier_onnx,
    write_package,
)

CPU = BackendOptions(backend="cpu", threads=1)


def _nhwc(manifest: dict[str, Any]) -> dict[str, Any]:
    return {**manifest, "input": {**manifest["input"], "layout": "NHWC"}}


def _spec(**changes: Any) -> InputSpec:
    return InputSpec.model_validate({**classifier_manifest()["input"], **changes})


# --- layout ----------------------------------------------------------------------------------


def test_an_nhwc_model_scores_and_explains_as_its_nchw_twin(tmp_path: Path) -> None:
    nchw = write_package(tmp_path / "nchw", classifier_manifest())
    nhwc = write_package(tmp_path / "nhwc", _nhwc(classifier_manifest()), nhwc_classifier_onnx)
    image = blob_image(96, 128, centre=(40, 50), radius=14)
    with Model.open(nchw, CPU) as a, Model.open(nhwc, CPU) as b:
        ra, rb = a.infer([image])[0], b.infer([image])[0]
        assert [f.score for f in rb.labels] == pytest.approx([f.score for f in ra.labels], abs=1e-6)
        cam_a, cam_b = explain(a, ra, "all"), explain(b, rb, "all")
        assert [h.label for h in cam_b] == ["bright", "dark"]
        np.testing.assert_allclose(cam_b[0].values, cam_a[0].values, atol=1e-5)
        for model in (a, b):  # occlusion runs the model on occluded copies of the tensor
            occlusion = model.manifest.explanation.model_copy(update={"method": "occlusion"})
            model.package = dataclasses.replace(
                model.package, manifest=model.manifest.model_copy(update={"explanation": occlusion})
            )
        occluded_a, occluded_b = explain(a, ra, "all"), explain(b, rb, "all")
        assert [h.method for h in occluded_b] == ["occlusion", "occlusion"]
        assert float(np.max(occluded_b[0].values)) > 0.0
        np.testing.assert_allclose(occluded_b[0].values, occluded_a[0].values, atol=1e-5)


def test_the_graph_check_says_when_the_layout_is_the_other_one(tmp_path: Path) -> None:
    folder = write_package(tmp_path / "p", classifier_manifest(), nhwc_classifier_onnx)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(classifier_manifest()))
    with pytest.raises(PackageError, match=r"input\.layout: 'NCHW' but the graph takes NHWC"):
        import_model(folder / "model.onnx", manifest, tmp_path / "out")


def test_quantize_calibrates_an_nhwc_model(tmp_path: Path) -> None:
    folder = write_package(tmp_path / "p", _nhwc(classifier_manifest()), nhwc_classifier_onnx)
    images = tmp_path / "calibration"
    images.mkdir()
    for number in range(4):
        pixels = blob_image(64, 64, centre=(16 + 8 * number, 30), radius=10)
        dicom_file(images, pixels, name=f"{number}.dcm")
    result = quantize_package(folder, images)
    assert result.package.manifest.files.int8 is not None
    assert max(a.max_difference for a in result.measured.values()) < 0.05
    image = blob_image(64, 64, (30, 30), 10)
    int8_options = dataclasses.replace(CPU, precision="int8")
    with Model.open(result.package, int8_options) as int8, Model.open(result.package, CPU) as fp32:
        a, b = fp32.infer([image])[0].labels, int8.infer([image])[0].labels
    assert [f.score for f in b] == pytest.approx([f.score for f in a], abs=0.05)


# --- interpolation and resize ------------------------------------------------------------------


@pytest.mark.parametrize("source", [(600, 480), (150, 150), (97, 203), (40, 30), (1024, 850)])
def test_nearest_takes_the_pixel_opencv_documents(source: tuple[int, int]) -> None:
    rows, columns = source
    index = (np.arange(rows)[:, None] * 1000 + np.arange(columns)[None, :]).astype(np.float32)
    out = resize(index, 150, 150, "nearest")
    # scale = 1 / (150 / source) in double precision, as OpenCV's resizeNN computes it
    ys = np.minimum(np.floor(np.arange(150) * (1.0 / (150 / rows))).astype(int), rows - 1)
    xs = np.minimum(np.floor(np.arange(150) * (1.0 / (150 / columns))).astype(int), columns - 1)
    np.testing.assert_array_equal(out, index[ys][:, xs])


def test_the_interpolations_differ_and_area_is_the_default() -> None:
    rng = np.random.default_rng(5)
    picture = rng.integers(0, 256, size=(200, 300), dtype=np.uint8)
    tensors = {
        name: prepare(picture, _spec(interpolation=name, resize="stretch")).tensor
        for name in ("nearest", "linear", "area", "cubic")
    }
    default = prepare(picture, _spec(resize="stretch")).tensor
    np.testing.assert_array_equal(default, tensors["area"])
    names = list(tensors)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert float(np.max(np.abs(tensors[a] - tensors[b]))) > 0.05, (a, b)
    # area averages: a 200 x 300 noise picture to 64 x 64 loses most of its spread
    assert tensors["area"].std() < tensors["nearest"].std() / 2


def test_crop_keeps_the_centre_and_maps_back_inside_it() -> None:
    picture = np.zeros((100, 300), dtype=np.uint8)
    picture[:, 100:200] = 255  # the middle third is white
    prepared = prepare(picture, _spec(resize="crop", window="file", mean=[0.0], std=[1.0]))
    assert prepared.geometry.crop == (100, 0, 100, 100)
    assert prepared.geometry.content == (0, 0, 64, 64)
    assert float(prepared.tensor.min()) == pytest.approx(1.0)  # only the white part is fed
    back = prepared.geometry.map_to_image(np.ones((1, 64, 64), dtype=np.float32))[0]
    assert back[:, 100:200].min() == 1.0 and back[:, :100].max() == 0.0


# --- the raw window ------------------------------------------------------------------------------


def test_raw_scales_stored_values_by_bit_depth(tmp_path: Path) -> None:
    pixels = np.full((64, 64), 1000, dtype=np.uint16)
    pixels[:32] = 4095
    path = dicom_file(tmp_path, pixels, WindowCenter=500, WindowWidth=200)
    spec = _spec(window="raw", mean=[0.0], std=[1.0], resize="stretch")
    tensor = prepare(decode(path), spec).tensor[0, 0]
    assert tensor[0, 0] == pytest.approx(1.0)
    assert tensor[-1, -1] == pytest.approx(1000 / 4095, abs=1e-6)  # the file's window ignored
    inverted = prepare(
        decode(dicom_file(tmp_path, pixels, "m1.dcm", photometric="MONOCHROME1")), spec
    )
    assert inverted.tensor[0, 0, -1, -1] == pytest.approx(1 - 1000 / 4095, abs=1e-6)


def test_raw_shifts_signed_values_and_refuses_rescaled_ones(tmp_path: Path) -> None:
    spec = _spec(window="raw", mean=[0.0], std=[1.0], resize="stretch")
    image = decode(dicom_file(tmp_path, np.full((64, 64), 100, dtype=np.uint16)))
    signed = dataclasses.replace(
        image, pixels=np.full((1, 64, 64), -2048, dtype=np.float32), signed=True
    )
    assert float(prepare(signed, spec).tensor.max()) == pytest.approx(0.0)
    rescaled = dataclasses.replace(image, pixels=np.full((1, 64, 64), 5000, dtype=np.float32))
    with pytest.raises(InputError, match=r"value 5000 is outside the range of 12-bit"):
        prepare(rescaled, spec)


# --- one finding from a two-logit softmax ---------------------------------------------------------


def _binary_manifest(**label_changes: Any) -> dict[str, Any]:
    manifest = classifier_manifest(explanation={"method": "occlusion", "patch": 16, "stride": 8})
    manifest["input"] = {**manifest["input"], "window": "file"}
    output = {**manifest["outputs"][0], "activation": "softmax"}
    negative = {"name": "normal", "display": "Normal", "negative": True, **label_changes}
    output["labels"] = [
        {**output["labels"][0], "threshold": 0.5},  # bright: the finding
        negative,
    ]
    manifest["outputs"] = [output]
    return manifest


def test_the_negative_class_is_never_a_finding(tmp_path: Path) -> None:
    folder = write_package(tmp_path / "p", _binary_manifest())
    flat = np.full((64, 64), 0.5, dtype=np.float32)  # display 0.5, normalised 0: a tie
    with Model.open(folder, CPU) as model:
        tie, bright = model.infer([flat, np.full((64, 64), 0.9, dtype=np.float32)])
        assert [f.label for f in tie.labels] == ["bright"]
        assert tie.labels[0].score == pytest.approx(0.5)
        assert tie.positives == ("bright",)  # normal is not positive beside it
        assert bright.labels[0].score > 0.5
        assert [h.label for h in explain(model, bright, "all")] == ["bright"]  # none for normal


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": 0.5}, r"is negative \(never a finding\): remove its threshold"),
        ({"priority": "routine"}, r"is negative \(never a finding\): remove its priority"),
    ],
)
def test_a_negative_label_takes_nothing_a_finding_uses(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(yaml.safe_dump(_binary_manifest(**changes)), "m.yaml")


def test_only_one_negative_label_and_never_all() -> None:
    manifest = _binary_manifest()
    manifest["outputs"][0]["labels"][0] = {"name": "other", "display": "O", "negative": True}
    with pytest.raises(ManifestError) as error:
        parse_manifest(yaml.safe_dump(manifest), "m.yaml")
    assert "already has a negative label ('other')" in str(error.value)
    assert "every label is negative" in str(error.value)


# --- scores outside [0, 1] ------------------------------------------------------------------


def _logits_as_probabilities(tmp_path: Path) -> tuple[Path, Path]:
    manifest = classifier_manifest()
    manifest["outputs"][0]["activation"] = "none"
    onnx_file = classifier_onnx(tmp_path / "model.onnx")
    manifest_file = tmp_path / "m.yaml"
    manifest_file.write_text(yaml.safe_dump(manifest))
    return onnx_file, manifest_file


def test_import_refuses_logits_declared_as_probabilities(tmp_path: Path) -> None:
    onnx_file, manifest_file = _logits_as_probabilities(tmp_path)
    with pytest.raises(PackageError) as error:
        import_model(onnx_file, manifest_file, tmp_path / "out")
    assert "outputs.0 gives scores outside [0, 1] (" in str(error.value)
    assert "set activation: sigmoid or softmax" in str(error.value)
    assert str(error.value).startswith(f"{manifest_file} (fp32, ")  # not the hidden stage
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out*")) == []


def test_at_run_time_such_a_result_fails_with_the_reason(tmp_path: Path) -> None:
    manifest = classifier_manifest()
    manifest["outputs"][0]["activation"] = "none"
    folder = write_package(tmp_path / "p", manifest)
    expected = r"outputs\.0 gives scores outside \[0, 1\] \(-?\d"
    with (
        Model.open(load_package(folder), CPU) as model,
        pytest.raises(InferenceError, match=expected),
    ):
        model.infer([blob_image(64, 64, (32, 32), 8)])


def test_out_of_range_names_the_worst_value_and_catches_nan() -> None:
    spec = parse_manifest(yaml.safe_dump(classifier_manifest())).outputs[0]
    assert out_of_range(0, spec, np.array([0.0, 0.5, 1.0], dtype=np.float32)) is None
    assert out_of_range(0, spec, np.zeros(0, dtype=np.float32)) is None
    problem = out_of_range(3, spec, np.array([0.2, 1.5, -7.0], dtype=np.float32))
    assert problem is not None and problem.startswith("outputs.3 gives scores outside [0, 1] (-7)")
    nan = out_of_range(0, spec, np.array([0.2, np.nan], dtype=np.float32))
    assert nan is not None and "(nan)" in nan
