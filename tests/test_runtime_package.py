"""Model packages: checksums, refusals that name the file, find/list, import and seal."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml

from appliance.cli import main
from appliance.config import ModelSettings
from appliance.runtime import (
    BackendError,
    Model,
    PackageError,
    find_packages,
    load_package,
    seal_package,
)
from appliance.runtime.backends import BackendOptions
from appliance.runtime.importing import import_model
from appliance.worker.models import ModelSet

from runtime_models import (
    classifier_manifest,
    classifier_onnx,
    segmenter_manifest,
    segmenter_onnx,
    sha256,
    write_package,
    write_sums,
)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return write_package(tmp_path / "models" / "classifier", classifier_manifest())


def refusal(folder: Path) -> str:
    with pytest.raises(PackageError) as info:
        load_package(folder)
    return str(info.value)


def test_a_good_package_loads_with_the_onnx_hash(package: Path) -> None:
    loaded = load_package(package)
    assert loaded.manifest.identity == "test-classifier 0.1.0"
    assert loaded.model_hash() == sha256(package / "model.onnx")
    assert loaded.precisions == ("fp32",)
    assert loaded.model_file() == package / "model.onnx"


def test_a_changed_file_is_refused_naming_it(package: Path) -> None:
    with (package / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    message = refusal(package)
    assert f"{package / 'model.onnx'}: checksum mismatch" in message


def test_a_changed_manifest_is_refused_naming_it(package: Path) -> None:
    text = (package / "manifest.yaml").read_text().replace("0.1.0", "0.2.0")
    (package / "manifest.yaml").write_text(text)
    assert f"{package / 'manifest.yaml'}: checksum mismatch" in refusal(package)


def test_a_listed_file_that_is_missing_is_named(package: Path) -> None:
    (package / "model.onnx").unlink()
    assert f"{package / 'model.onnx'}: listed in SHA256SUMS but missing" in refusal(package)


def test_missing_checksums_are_refused(package: Path) -> None:
    (package / "SHA256SUMS").unlink()
    assert "SHA256SUMS: missing" in refusal(package)


def test_the_manifest_must_be_listed(package: Path) -> None:
    write_sums(package, ["model.onnx"])
    assert "does not list manifest.yaml" in refusal(package)


def test_every_file_of_the_manifest_must_be_listed(package: Path) -> None:
    write_sums(package, ["manifest.yaml"])
    assert "files.fp32: 'model.onnx' is not listed in SHA256SUMS" in refusal(package)


def test_checksum_lines_must_name_plain_files(package: Path) -> None:
    line = f"{sha256(package / 'model.onnx')}  ../model.onnx\n"
    (package / "SHA256SUMS").write_text(line)
    assert "SHA256SUMS:1: '../model.onnx' is not a plain file name" in refusal(package)


def test_a_bad_manifest_is_refused_naming_the_field(package: Path) -> None:
    manifest = classifier_manifest(explanation={"method": "cam", "patch": 0})
    (package / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    write_sums(package, ["manifest.yaml", "model.onnx"])
    assert "explanation.patch: Input should be greater than or equal to 1" in refusal(package)


def test_a_corrupt_onnx_with_matching_checksum_fails_to_load_naming_it(package: Path) -> None:
    (package / "model.onnx").write_bytes(b"not a protobuf at all")
    write_sums(package, ["manifest.yaml", "model.onnx"])
    loaded = load_package(package)  # checksums say this is the file the author shipped
    with pytest.raises(BackendError, match=r"cannot load .*model\.onnx"):
        Model.open(loaded, BackendOptions(threads=1))


def test_verify_refuses_a_corrupt_onnx_naming_it(
    package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (package / "model.onnx").write_bytes(b"\x08\x07garbage")
    write_sums(package, ["manifest.yaml", "model.onnx"])
    assert main(["model", "verify", str(package)]) == 1
    error = capsys.readouterr().err
    assert f"REFUSED {package}" in error
    assert f"{package / 'model.onnx'}: " in error


def test_verify_checks_the_graph_against_the_manifest(
    package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = classifier_manifest()
    manifest["outputs"][0]["name"] = "scores"
    manifest["outputs"][1]["for"] = "scores"
    (package / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    write_sums(package, ["manifest.yaml", "model.onnx"])
    assert main(["model", "verify", str(package)]) == 1
    error = capsys.readouterr().err
    assert "outputs.0.name: 'scores' is not an output of the graph" in error


def test_verify_passes_a_good_package(package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "verify", str(package)]) == 0
    out = capsys.readouterr().out
    assert f"OK {package}: test-classifier 0.1.0 (fp32 sha256 " in out


def test_find_packages_reports_bad_ones_without_raising(package: Path) -> None:
    models = package.parent
    broken = write_package(models / "broken", segmenter_manifest(), segmenter_onnx)
    (broken / "model.onnx").write_bytes(b"changed")
    twin = models / "twin"
    shutil.copytree(package, twin)
    found = {entry.folder.name: entry for entry in find_packages([models, models / "absent"])}
    assert found["classifier"].package is not None
    assert found["broken"].package is None
    assert "checksum mismatch" in str(found["broken"].error)
    assert "test-classifier 0.1.0 is already in" in str(found["twin"].error)
    assert "no such folder" in str(found["absent"].error)


def test_model_list_prints_packages_and_refusals(
    package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (package.parent / "empty").mkdir()
    (package.parent / "empty" / "manifest.yaml").write_text("format: 1\n")
    assert main(["model", "list", "--models-dir", str(package.parent)]) == 1
    out = capsys.readouterr().out
    assert "test-classifier 0.1.0  classification  [fp32]" in out
    assert "NOT FOR CLINICAL USE" in out
    assert f"REFUSED {package.parent / 'empty'}" in out


def test_import_copies_checks_and_seals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_file = classifier_onnx(tmp_path / "exported.onnx")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(classifier_manifest(), sort_keys=False))
    out = tmp_path / "site" / "classifier"
    argv = ["model", "import", str(onnx_file), "--manifest", str(manifest), "--out", str(out)]
    assert main(argv) == 0
    assert "imported test-classifier 0.1.0" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS",
        "golden.npz",
        "manifest.yaml",
        "model.onnx",
    ]
    assert load_package(out).model_hash() == sha256(onnx_file)
    assert main(argv) == 2  # never over an existing package
    assert "already exists and is not empty" in capsys.readouterr().err


def test_import_refuses_a_graph_that_does_not_fit_the_manifest(tmp_path: Path) -> None:
    onnx_file = classifier_onnx(tmp_path / "exported.onnx", size=32)
    manifest = tmp_path / "m.yaml"
    changed = classifier_manifest()
    changed["input"]["name"] = "pixels"
    manifest.write_text(yaml.safe_dump(changed, sort_keys=False))
    with pytest.raises(PackageError) as info:
        import_model(onnx_file, manifest, tmp_path / "out")
    message = str(info.value)
    assert "input.name: 'pixels' is not an input of the graph (it has 'image')" in message
    changed["input"]["name"] = "image"
    manifest.write_text(yaml.safe_dump(changed, sort_keys=False))
    with pytest.raises(PackageError, match=r"input: the graph's shape \(\?, 1, 32, 32\)"):
        import_model(onnx_file, manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def mistyped(path: Path, **options: Any) -> Path:
    """The test classifier declaring its float scores as INT64: the ONNX checker lets it pass,
    ONNX Runtime cannot load it (as with a graph edited or exported by a faulty tool)."""
    classifier_onnx(path, **options)
    model = onnx.load(str(path))
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    onnx.save(model, str(path))
    return path


def test_import_refuses_a_graph_onnx_runtime_cannot_load(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(classifier_manifest(), sort_keys=False))
    with pytest.raises(PackageError, match="ONNX Runtime cannot load it"):
        import_model(mistyped(tmp_path / "new.onnx"), manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_worker_refuses_only_the_package_whose_graph_cannot_load(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_package(models / "good", classifier_manifest(name="test-good"))
    write_package(models / "future", classifier_manifest(name="test-future"), mistyped)
    loaded = ModelSet.load(ModelSettings(dirs=[models], precision="fp32"), tmp_path / "cache")
    try:
        assert [m.package.name for m in loaded.models] == ["test-good"]
        [refused] = loaded.refused
        assert refused.folder.name == "future" and "ONNX Runtime cannot load" in refused.reason
    finally:
        loaded.close()


def test_import_refuses_a_fixed_batch_graph_declared_dynamic(tmp_path: Path) -> None:
    onnx_file = classifier_onnx(tmp_path / "exported.onnx", dynamic=False)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(classifier_manifest(), sort_keys=False))
    with pytest.raises(PackageError, match=r"input\.batch: 'dynamic' but the graph's batch size"):
        import_model(onnx_file, manifest, tmp_path / "out")


def test_an_int8_file_is_added_by_sealing(package: Path) -> None:
    shutil.copyfile(package / "model.onnx", package / "model.int8.onnx")
    manifest = classifier_manifest(files={"fp32": "model.onnx", "int8": "model.int8.onnx"})
    (package / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert "checksum mismatch" in refusal(package)  # until sealed
    sealed = seal_package(package)
    assert sealed.precisions == ("fp32", "int8")
    assert sealed.model_hash("int8") == sha256(package / "model.int8.onnx")
    with Model.open(sealed, BackendOptions(precision="int8", threads=1)) as model:
        assert model.provenance.precision == "int8"


def test_asking_for_a_missing_int8_file_names_the_field(package: Path) -> None:
    with pytest.raises(PackageError, match="has no int8 file"):
        Model.open(package, BackendOptions(precision="int8"))
