"""`appliance demo-data`: valid, deterministic DICOM files whose truth the demo models can see."""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import validate_value

from appliance.cli import build_parser, main
from appliance.errors import ApplianceError
from appliance.imaging import decode
from appliance.phantoms import CHEST_FINDINGS, demo
from appliance.phantoms.demo import DemoItem, write_demo_data
from appliance.receiver import Receiver
from appliance.runtime import Model
from appliance.runtime.backends import BackendOptions
from appliance.runtime.routing import dicom_tags, route
from appliance.samples import CR, DX_PRESENTATION, US, US_MULTIFRAME, make_dataset
from appliance.store import Store

from conftest import REPO

ROWS = 512  # fast; the default 2048 differs only in pixel count
CLEAR = ("pleural_effusion", "pneumothorax", "cardiomegaly")
CPU = BackendOptions(threads=1)
BINARY_VRS = {
    "OB",
    "OW",
    "OD",
    "OF",
    "OL",
    "OV",
    "UN",
    "SQ",
    "AT",
    "US",
    "UL",
    "SS",
    "SL",
    "SV",
    "UV",
    "FL",
    "FD",
}


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[DemoItem]:
    """The default set (seed 1), built with pydicom refusing any invalid value.

    pydicom checks a value assigned to a dataset in its *reading* validation mode, and values
    it writes in its writing mode: both raise here.
    """
    folder = tmp_path_factory.mktemp("demo") / "images"
    before = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.RAISE
    try:
        with config.strict_reading():
            return write_demo_data(folder, chest_rows=ROWS)
    finally:
        config.settings.writing_validation_mode = before


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, Model]]:
    opened = {name: Model.open(REPO / "models" / name, CPU) for name in demo_models()}
    yield opened
    for model in opened.values():
        model.close()


def demo_models() -> tuple[str, str]:
    return (demo.CHEST_MODEL, demo.ULTRASOUND_MODEL)


def by_kind(items: list[DemoItem], kind: str) -> DemoItem:
    (found,) = (item for item in items if item.kind == kind)
    return found


def read(item: DemoItem) -> pydicom.Dataset:
    """Read as a DICOM file (preamble, 'DICM', meta); `dcmread` without force refuses others.

    (`enforce_file_format` is the writing side's switch; reading has none beyond `force`.)
    """
    assert item.path.read_bytes()[128:132] == b"DICM", item.path.name
    return dcmread(item.path, force=False)


# --- the files -------------------------------------------------------------------------------


def invalid_values(ds: pydicom.Dataset) -> list[str]:
    """Every text or number-as-text value checked against its VR, as read back from the file.

    pydicom's strict reading mode does not re-check values it converts while reading, so the
    check is done here on the text as stored.
    """
    problems = []
    for elem in [*ds.file_meta.iterall(), *ds.iterall()]:
        if elem.VR in BINARY_VRS or elem.value is None:
            continue
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        for value in values:
            text = getattr(value, "original_string", None) or str(value)
            try:
                validate_value(elem.VR, text, config.RAISE)
            except ValueError as exc:
                problems.append(f"{elem.keyword}: {exc}")
    return problems


def test_the_value_check_finds_a_bad_value(tmp_path: Path) -> None:
    ds = make_dataset("cr")
    tag = Tag("BodyPartExamined")
    ds[tag] = DataElement(tag, "CS", "lower case!", validation_mode=config.IGNORE)
    with config.disable_value_validation():
        ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
        found = invalid_values(dcmread(tmp_path / "bad.dcm"))
    assert [problem.split(":")[0] for problem in found] == ["BodyPartExamined"]


def test_every_file_reads_back_valid_and_decodes(items: list[DemoItem]) -> None:
    for item in items:
        ds = read(item)
        assert invalid_values(ds) == [], item.path.name
        pixels = ds.pixel_array
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, item.path.name
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.Modality == item.modality
        frames = int(ds.get("NumberOfFrames", 1))
        assert pixels.shape[: 3 if frames > 1 else 2][-2:] == (ds.Rows, ds.Columns)
        assert decode(item.path).frame_count == frames


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="DCMTK's dcmdump is not installed")
def test_dcmtk_parses_every_file_without_a_warning(items: list[DemoItem]) -> None:
    dcmdump = shutil.which("dcmdump")
    assert dcmdump is not None
    for item in items:
        done = subprocess.run(
            [dcmdump, "--log-level", "warn", "-M", str(item.path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and done.stderr == "", (item.path.name, done.stderr)
        assert "Little Endian Explicit" in done.stdout


def test_the_set_mixes_what_a_clinic_sends(items: list[DemoItem]) -> None:
    datasets = {item.kind: read(item) for item in items}
    chests = [ds for ds in datasets.values() if ds.get("BodyPartExamined") == "CHEST"]
    assert 6 <= len(chests) <= 8
    assert {ds.SOPClassUID for ds in chests} == {CR, DX_PRESENTATION}
    assert {ds.PhotometricInterpretation for ds in chests} == {"MONOCHROME1", "MONOCHROME2"}
    frames = [ds for ds in datasets.values() if ds.SOPClassUID == US]
    assert 2 <= len(frames) <= 3
    clip = datasets["us-cine-fluid"]
    assert clip.SOPClassUID == US_MULTIFRAME and clip.NumberOfFrames == demo.CLIP_FRAMES
    hand = datasets["cr-hand-no-model"]
    assert (hand.Modality, hand.BodyPartExamined) == ("CR", "HAND")


def test_every_file_is_its_own_synthetic_patient_and_study(items: list[DemoItem]) -> None:
    datasets = [read(item) for item in items]
    assert len({ds.PatientID for ds in datasets}) == len(items)
    assert len({ds.StudyInstanceUID for ds in datasets}) == len(items)
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(items)
    for number, (item, ds) in enumerate(zip(items, datasets, strict=True), start=1):
        assert ds.PatientID == f"DEMO{number:04d}"
        assert str(ds.PatientName).startswith("DEMO^")
        assert "SYNTHETIC" in ds.StudyDescription
        assert re.fullmatch(rf"{number:02d}-[a-z0-9-]+\.dcm", item.path.name)


def test_chest_truth_forces_each_finding_and_two_normals(items: list[DemoItem]) -> None:
    chests = [item for item in items if item.expected_model == demo.CHEST_MODEL]
    normals = [item for item in chests if not any(item.truth[n] for n in CHEST_FINDINGS)]
    assert len(normals) >= 2
    for name in CHEST_FINDINGS:
        (shown,) = (item for item in chests if item.truth[name])
        assert [n for n in CHEST_FINDINGS if shown.truth[n]] == [name], shown.kind


def test_ultrasound_truth_is_the_phantoms_fluid_area(items: list[DemoItem]) -> None:
    scans = [item for item in items if item.expected_model == demo.ULTRASOUND_MODEL]
    with_fluid = [item for item in scans if item.truth["fluid"]]
    assert len(with_fluid) >= 2 and all(item.truth["fluid_area_mm2"] > 50 for item in with_fluid)
    assert by_kind(items, "us-no-fluid").truth == {"fluid": False, "fluid_area_mm2": 0.0}


# --- index and README ------------------------------------------------------------------------


def test_index_lists_every_file_with_its_truth(items: list[DemoItem]) -> None:
    folder = items[0].path.parent
    with (folder / "index.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == [item.path.name for item in items]
    assert sorted(p.name for p in folder.glob("*.dcm")) == [row["file"] for row in rows]
    for row, item in zip(rows, items, strict=True):
        assert row["modality"] == item.modality and row["shows"] == item.description
        assert row["expected_model"] == item.expected_model and row["truth"]
        if "fluid_area_mm2" in item.truth:
            area = float(row["truth"].removeprefix("fluid_area_mm2="))
            assert area == pytest.approx(item.truth["fluid_area_mm2"], abs=0.05)
        elif item.expected_model == demo.CHEST_MODEL:
            present = {n for n in CHEST_FINDINGS if item.truth[n]}
            assert present == {n for n in CHEST_FINDINGS if n in row["truth"]}, row


def test_readme_says_synthetic_and_how_to_send(items: list[DemoItem]) -> None:
    folder = items[0].path.parent
    text = (folder / "README.txt").read_text(encoding="utf-8")
    assert "SYNTHETIC" in text and "not patient data" in text
    assert f"appliance send {folder} --to 127.0.0.1:11112" in text


# --- determinism and the folder --------------------------------------------------------------


def test_the_same_seed_writes_byte_identical_files(tmp_path: Path) -> None:
    first = write_demo_data(tmp_path / "a", chest_rows=256, seed=3)
    second = write_demo_data(tmp_path / "b", chest_rows=256, seed=3)
    for a, b in zip(first, second, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes(), a.path.name
        assert a.truth == b.truth
    for name in ("index.csv",):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_another_seed_makes_other_images_and_uids(tmp_path: Path) -> None:
    one = write_demo_data(tmp_path / "a", chest_rows=256, seed=3)
    other = write_demo_data(tmp_path / "b", chest_rows=256, seed=4)
    for a, b in zip(one, other, strict=True):
        assert a.path.name == b.path.name
        assert dcmread(a.path).SOPInstanceUID != dcmread(b.path).SOPInstanceUID
        assert not np.array_equal(dcmread(a.path).pixel_array, dcmread(b.path).pixel_array)


def test_a_non_empty_folder_is_refused_unless_overwriting(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ApplianceError, match=r"not empty.*--force"):
        write_demo_data(folder, chest_rows=256)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    written = write_demo_data(folder, chest_rows=256, overwrite=True)
    assert all(item.path.is_file() for item in written)
    assert (folder / "notes.txt").read_text() == "keep me"
    again = write_demo_data(folder, chest_rows=256, overwrite=True)
    assert [item.path for item in again] == [item.path for item in written]


def test_bad_places_and_options_are_clear_errors(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ApplianceError, match="not a folder"):
        write_demo_data(a_file)
    with pytest.raises(ApplianceError, match="chest rows"):
        write_demo_data(tmp_path / "x", chest_rows=10)
    with pytest.raises(ApplianceError, match="seed"):
        write_demo_data(tmp_path / "x", seed=-1)
    assert not (tmp_path / "x").exists()


# --- the command -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_the_command_writes_prints_and_hints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "demo"
    args = parser().parse_args(["demo-data", str(folder), "--chest-rows", "256", "--seed", "2"])
    assert (args.chest_rows, args.seed, args.force) == (256, 2, False)
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    files = sorted(folder.glob("*.dcm"))
    assert [line.split()[0] for line in lines[: len(files)]] == [str(f) for f in files]
    assert lines[-1].strip() == f"appliance send {folder} --to 127.0.0.1:11112"
    with pytest.raises(ApplianceError, match="not empty"):
        args.func(args)
    forced = parser().parse_args(["demo-data", str(folder), "--chest-rows", "256", "--force"])
    assert forced.func(forced) == 0


def test_the_hint_survives_a_folder_name_with_spaces() -> None:
    assert demo.send_hint(Path("my demo")) == "appliance send 'my demo' --to 127.0.0.1:11112"


def test_the_command_defaults_to_full_size_radiographs() -> None:
    args = parser().parse_args(["demo-data", "somewhere"])
    assert (args.folder, args.chest_rows, args.seed, args.force) == (
        Path("somewhere"),
        2048,
        1,
        False,
    )


# --- what the appliance will make of them ----------------------------------------------------


def test_each_file_routes_to_its_expected_model_only(
    items: list[DemoItem], models: dict[str, Model]
) -> None:
    for item in items:
        tags = dicom_tags(item.path)
        applies = {name for name, m in models.items() if route(m.manifest.applies_to, tags).applies}
        expected = set() if item.expected_model == demo.NO_MODEL else {item.expected_model}
        assert applies == expected, item.path.name


def routed_to(items: list[DemoItem], model: str) -> list[DemoItem]:
    return [item for item in items if item.expected_model == model]


def test_the_chest_model_sees_the_clear_findings(
    items: list[DemoItem], models: dict[str, Model]
) -> None:
    chest = models[demo.CHEST_MODEL]
    for item in routed_to(items, demo.CHEST_MODEL):
        scores = {f.label: f for f in chest.infer([decode(item.path)])[0].labels}
        for name in CLEAR:
            assert scores[name].positive == item.truth[name], (item.kind, name, scores[name])


def test_the_ultrasound_model_measures_the_fluid(
    items: list[DemoItem], models: dict[str, Model]
) -> None:
    model = models[demo.ULTRASOUND_MODEL]
    for item in routed_to(items, demo.ULTRASOUND_MODEL):
        (mask,) = model.infer([decode(item.path, index=0)])[0].masks
        truth = float(item.truth["fluid_area_mm2"])
        assert mask.positive == item.truth["fluid"], item.kind
        if item.truth["fluid"]:
            assert mask.area_mm2 == pytest.approx(truth, rel=0.15), item.kind


def test_the_files_can_be_pushed_as_the_readme_says(
    tmp_path: Path, receiver: tuple[Receiver, Store], capsys: pytest.CaptureFixture[str]
) -> None:
    rx, store = receiver
    host, port = rx.address
    written = write_demo_data(tmp_path / "demo", chest_rows=256)
    # The folder as the hint gives it: its index and README are not DICOM and are skipped.
    assert main(["send", "--to", f"{host}:{port}", str(tmp_path / "demo")]) == 0
    assert f"sent {len(written)} of {len(written)}" in capsys.readouterr().out
    assert store.summary().instances == len(written)
