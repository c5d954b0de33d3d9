"""`appliance model quantize`: a copied demo package quantized on phantom images, and refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import appliance.phantoms as phantoms
from appliance.cli import main
from appliance.runtime import quantize
from appliance.runtime.package import load_package, seal_package
from appliance.runtime.quantize import (
    STALE_NOTE,
    VARIANTS,
    Variant,
    candidate_variants,
    drop_int8_figures,
    int8_name,
    pick_variant,
)

REPO = Path(__file__).resolve().parent.parent
CHEST = REPO / "models" / "demo-chest-xray"


def fp32_only_chest(tmp_path: Path) -> Path:
    """The demo chest package copied without its INT8 file, as a site would receive it."""
    folder = tmp_path / "chest"
    shutil.copytree(CHEST, folder)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    del manifest["files"]["int8"]
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (folder / "model.int8.onnx").unlink()
    seal_package(folder)
    return folder


def chest_images(folder: Path, count: int, rows: int = 512, first_seed: int = 900_000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(first_seed, first_seed + count):
        ds = phantoms.chest_dataset(phantoms.make_chest(seed, rows=rows))
        ds.save_as(folder / f"chest{seed}.dcm", enforce_file_format=True)
    return folder


def test_quantize_writes_int8_updates_manifest_and_reseals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = fp32_only_chest(tmp_path)
    calibration = chest_images(tmp_path / "calibration", 20)
    (calibration / "notes.txt").write_text("not an image")  # skipped with a warning

    code = main(["model", "quantize", str(package), "--calibration", str(calibration)])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: skipped notes.txt" in captured.err
    for variant in VARIANTS:
        assert variant.slug in captured.out
    assert "<- chosen" in captured.out and "calibrated on 20 input(s)" in captured.out
    loaded = load_package(package)  # verifies every checksum again
    assert loaded.precisions == ("fp32", "int8")
    assert loaded.model_file("int8") == package / "model.int8.onnx"
    manifest = yaml.safe_load((package / "manifest.yaml").read_text())
    assert manifest["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    notes = manifest["validation"]["int8"]
    assert notes["format"] == "QDQ" and notes["per_channel"] is True
    assert notes["calibration"] == "20 site images, MinMax"
    assert 0.9 <= notes["decision_agreement"] <= 1.0
    assert manifest["validation"]["metrics"]["pleural_effusion"]["auc"] == 1.0  # kept
    # The copied manifest's INT8 figures described the demo's INT8 file, not this one.
    for figures in manifest["validation"]["metrics"].values():
        assert not [k for k in figures if "int8" in k], figures
    assert notes["note"] == STALE_NOTE
    assert not (package / ".quantize-partial").exists()


def test_int8_figures_are_dropped_and_the_rest_kept() -> None:
    validation = {
        "metrics": {
            "fluid": {"dice_mean": 0.98, "dice_mean_int8": 0.97, "int8_agreement": 0.99},
            "images": 600,
        },
        "latency_ms": {"threads": 1, "fp32": 5.3, "int8": 2.4},
    }
    assert drop_int8_figures(validation)
    assert validation == {
        "metrics": {"fluid": {"dice_mean": 0.98}, "images": 600},
        "latency_ms": {"threads": 1, "fp32": 5.3},
    }
    assert not drop_int8_figures(validation)  # nothing left to drop


def test_quantize_one_fixed_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = fp32_only_chest(tmp_path)
    calibration = chest_images(tmp_path / "calibration", 4)
    argv = ["model", "quantize", str(package), "--calibration", str(calibration)]
    code = main([*argv, "--variant", "qint8", "--reduce-range", "no", "--max-images", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "qint8-full" in out and "quint8" not in out.split("chosen:")[0]
    assert "calibrated on 3 input(s)" in out
    notes = yaml.safe_load((package / "manifest.yaml").read_text())["validation"]["int8"]
    assert notes["reduce_range"] is False


def test_the_int8_file_never_takes_the_fp32_files_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = fp32_only_chest(tmp_path)
    (package / "model.onnx").rename(package / "model.int8.onnx")  # a site's odd naming
    manifest = yaml.safe_load((package / "manifest.yaml").read_text())
    manifest["files"]["fp32"] = "model.int8.onnx"
    (package / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    seal_package(package)
    fp32_bytes = (package / "model.int8.onnx").read_bytes()
    calibration = chest_images(tmp_path / "calibration", 3)
    argv = ["model", "quantize", str(package), "--calibration", str(calibration)]
    assert main([*argv, "--variant", "qint8", "--reduce-range", "no"]) == 0, capsys.readouterr()
    loaded = load_package(package)
    assert loaded.manifest.files.int8 == "model.int8.q8.onnx"
    assert (package / "model.int8.onnx").read_bytes() == fp32_bytes  # the FP32 graph is intact


def test_a_failure_while_installing_puts_the_package_back(tmp_path: Path) -> None:
    package = fp32_only_chest(tmp_path)
    before = {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()}
    with pytest.raises(RuntimeError), quantize._restored_on_failure(package, "model.int8.onnx"):
        (package / "model.int8.onnx").write_bytes(b"half")
        (package / "manifest.yaml").write_text("files: broken\n")
        raise RuntimeError("sealing failed")
    assert {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()} == before
    assert load_package(package).precisions == ("fp32",)


def test_int8_names() -> None:
    assert int8_name("model.onnx", None) == "model.int8.onnx"
    assert int8_name("model.onnx", "site.int8.onnx") == "site.int8.onnx"
    assert int8_name("model.int8.onnx", "model.int8.onnx") == "model.int8.q8.onnx"


@pytest.mark.parametrize("count", ["0", "-3"])
def test_max_images_must_be_one_or_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], count: str
) -> None:
    package = fp32_only_chest(tmp_path)
    calibration = chest_images(tmp_path / "calibration", 1)
    argv = ["model", "quantize", str(package), "--calibration", str(calibration)]
    assert main([*argv, "--max-images", count]) == 2
    assert f"--max-images must be 1 or more, got {count}" in capsys.readouterr().err


def test_refuses_empty_calibration_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = fp32_only_chest(tmp_path)
    (tmp_path / "empty").mkdir()
    code = main(["model", "quantize", str(package), "--calibration", str(tmp_path / "empty")])
    assert code == 2
    assert "no calibration images" in capsys.readouterr().err
    assert load_package(package).precisions == ("fp32",)  # untouched


def test_refuses_when_no_image_is_usable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = fp32_only_chest(tmp_path)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(b"not a dicom file at all")
    (junk / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    code = main(["model", "quantize", str(package), "--calibration", str(junk)])
    err = capsys.readouterr().err
    assert code == 2
    assert "none of its 2 file(s) is a usable image" in err and "a.dcm" in err


def test_refuses_a_package_that_fails_verification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = fp32_only_chest(tmp_path)
    with (package / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    calibration = chest_images(tmp_path / "calibration", 1)
    code = main(["model", "quantize", str(package), "--calibration", str(calibration)])
    assert code == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (package / "model.int8.onnx").exists()


def test_pick_variant_prefers_reduce_range_within_tolerance() -> None:
    quint_rr, quint_full, qint_rr, qint_full = VARIANTS
    measured = {
        quint_rr: (0.990, 0.1),
        quint_full: (0.991, 0.05),  # better, but within the tolerance: not told apart
        qint_rr: (0.991, 0.2),
        qint_full: (0.980, 0.3),
    }
    assert pick_variant(measured) == qint_rr  # reduce_range first, then agreement
    measured[quint_full] = (1.0, 0.0)  # clearly better: wins even without reduce_range
    assert pick_variant(measured) == quint_full


def test_candidate_variants_follow_the_options() -> None:
    assert candidate_variants() == list(VARIANTS)
    assert candidate_variants("quint8", "yes") == [Variant("QUInt8", True)]
    assert [v.slug for v in candidate_variants("auto", "no")] == ["quint8-full", "qint8-full"]
