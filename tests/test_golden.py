"""Golden inputs: made and sealed by the package tools, checked on the configured precision, and
a package whose goldens it does not reproduce is refused with the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ruamel.yaml.comments import CommentedMap

from appliance.config import ModelSettings
from appliance.runtime.backends import BackendOptions
from appliance.runtime.engine import Model
from appliance.runtime.errors import PackageError
from appliance.runtime.golden import (
    GOLDEN_NAME,
    check_goldens,
    read_goldens,
    verify_goldens,
    write_goldens,
)
from appliance.runtime.importing import import_model
from appliance.runtime.manifest import MANIFEST_NAME
from appliance.runtime.manifest_edit import edit_manifest
from appliance.runtime.package import DEFAULT_MODELS_DIR, load_package, read_sums, seal_package
from appliance.worker.models import ModelSet

CHEST = DEFAULT_MODELS_DIR / "demo-chest-xray"
ULTRASOUND = DEFAULT_MODELS_DIR / "demo-ultrasound-fluid"


def shifted_goldens(folder: Path, by: float = 0.5) -> Path:
    """Change the package's golden outputs by `by` and re-seal it: the checksums are right,
    the values are not what the model gives."""
    path = folder / GOLDEN_NAME
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays = {k: (v + by if k.startswith("output.") else v) for k, v in arrays.items()}
    np.savez_compressed(path, **arrays)
    seal_package(folder)
    return folder


@pytest.mark.parametrize("folder", [CHEST, ULTRASOUND], ids=["chest", "ultrasound"])
def test_the_demo_packages_carry_sealed_goldens_that_pass_at_fp32_and_int8(folder: Path) -> None:
    package = load_package(folder)
    assert package.manifest.golden is not None
    assert GOLDEN_NAME in read_sums(folder / "SHA256SUMS")
    goldens = read_goldens(package)
    assert goldens is not None
    assert goldens.inputs.shape == (3, 1, 256, 256)
    assert set(goldens.outputs) == {o.name for o in package.manifest.outputs if o.kind != "cam"}
    checks = verify_goldens(package)
    assert [c.precision for c in checks] == ["fp32", "int8"]
    assert all(c.passed and c.reason == "" for c in checks)
    assert checks[0].largest <= 0.002  # FP32 on ONNX Runtime CPU: only the file's rounding
    assert 0 < checks[1].largest <= checks[1].tolerance  # INT8 really differs, within bounds


def test_goldens_are_made_again_the_same_and_sealed(tmp_path: Path) -> None:
    folder = shutil.copytree(CHEST, tmp_path / "chest")
    (folder / GOLDEN_NAME).unlink()
    edit_manifest(folder / MANIFEST_NAME, lambda data: data.pop("golden"))
    seal_package(folder)
    assert load_package(folder).manifest.golden is None

    package, measured = write_goldens(folder)

    assert package.manifest.golden is not None and package.manifest.golden.file == GOLDEN_NAME
    assert GOLDEN_NAME in package.checksums
    assert 0 < measured["int8"] <= package.manifest.golden.tolerance.int8 / 2
    made, committed = read_goldens(package), read_goldens(load_package(CHEST))
    assert made is not None and committed is not None
    np.testing.assert_array_equal(made.inputs, committed.inputs)  # deterministic inputs
    np.testing.assert_allclose(
        made.outputs["probabilities"], committed.outputs["probabilities"], atol=2e-3
    )


def test_changed_golden_values_fail_with_the_reason(tmp_path: Path) -> None:
    package = load_package(shifted_goldens(shutil.copytree(CHEST, tmp_path / "chest")))
    with Model.open(package, BackendOptions(precision="int8", threads=1)) as model:
        check = check_goldens(model)
    assert check is not None and not check.passed
    assert check.largest > 0.4
    assert check.reason.startswith(
        "self-test failed: output 'probabilities' differs from its golden value by 0."
    )
    assert check.reason.endswith("more than 0.1 allowed for int8")


def test_the_worker_refuses_a_failing_package_and_loads_the_others(tmp_path: Path) -> None:
    shifted_goldens(shutil.copytree(CHEST, tmp_path / "models" / "chest"))
    shutil.copytree(ULTRASOUND, tmp_path / "models" / "ultrasound")
    untested = shutil.copytree(ULTRASOUND, tmp_path / "models" / "untested")

    def without_goldens(data: CommentedMap) -> None:
        data["name"] = "untested-fluid"
        del data["golden"]

    edit_manifest(untested / MANIFEST_NAME, without_goldens)
    seal_package(untested)
    settings = ModelSettings(dirs=[tmp_path / "models"], precision="fp32", threads=1)

    models = ModelSet.load(settings, tmp_path / "cache")
    try:
        loaded = [m.package.name for m in models.models]
        assert loaded == ["demo-ultrasound-fluid", "untested-fluid"]
        (refused,) = models.refused
        assert refused.folder.name == "chest"
        assert "differs from its golden value" in refused.reason
        assert refused.reason.endswith("allowed for fp32")
        assert models.notes == {"untested-fluid": "no golden inputs to check"}
        outcomes = {c.name: c.outcome for c in models.checks}
        assert outcomes == {
            "demo-chest-xray": "failed",
            "demo-ultrasound-fluid": "passed",
            "untested-fluid": "untested",
        }
    finally:
        models.close()


def test_a_golden_file_that_does_not_fit_the_manifest_is_named(tmp_path: Path) -> None:
    folder = shutil.copytree(CHEST, tmp_path / "chest")
    np.savez_compressed(folder / GOLDEN_NAME, input=np.zeros((2, 3, 8, 8), np.float16))
    package = seal_package(folder)
    with pytest.raises(PackageError, match=r"'input' must be N x 1 x 256 x 256 .* got shape"):
        read_goldens(package)
    settings = ModelSettings(dirs=[folder], precision="fp32", threads=1)
    models = ModelSet.load(settings, tmp_path / "cache")
    assert not models.models
    assert models.refused[0].reason.startswith("self-test failed: ")


def test_import_makes_goldens_when_the_manifest_has_none(tmp_path: Path) -> None:
    manifest = tmp_path / "given.yaml"
    shutil.copyfile(CHEST / MANIFEST_NAME, manifest)
    edit_manifest(manifest, lambda data: data.pop("golden"))

    package = import_model(
        CHEST / "model.onnx", manifest, tmp_path / "out", CHEST / "model.int8.onnx"
    )

    assert package.manifest.golden is not None
    assert GOLDEN_NAME in package.checksums
    assert [c.passed for c in verify_goldens(package)] == [True, True]


def test_import_checks_the_goldens_the_maker_gave(tmp_path: Path) -> None:
    given = shutil.copytree(CHEST, tmp_path / "given")
    shifted_goldens(given)
    files = (given / "model.onnx", given / MANIFEST_NAME, tmp_path / "out")
    int8 = given / "model.int8.onnx"
    with pytest.raises(PackageError, match="differs from its golden value") as refused:
        import_model(*files, int8)
    assert f"{given}: self-test failed" in str(refused.value)  # not the hidden stage folder
    assert not (tmp_path / "out").exists()
    (given / GOLDEN_NAME).unlink()
    with pytest.raises(PackageError, match="golden inputs must lie beside the manifest"):
        import_model(*files, int8)
