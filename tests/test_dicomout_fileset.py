"""A study as a DICOM File-set on a USB stick: every file listed in the DICOMDIR and readable,
the originals copied as they are, each export in a new folder, dciodvfy content with the
DICOMDIR, and places that cannot take an export refused with a reason, leaving nothing behind.

The objects exported are real files: a chest phantom as received, and the three kinds the box
makes of it (an SR, a heatmap Secondary Capture, an Encapsulated PDF around a PDF from fpdf2).
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fpdf import FPDF
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    EncapsulatedPDFStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from appliance.dicomout import fileset as fileset_module
from appliance.dicomout.fileset import (
    ExportError,
    export_study,
    export_targets,
    fileset_id_for,
    writable_folder,
)
from appliance.dicomout.meta import file_meta_for
from appliance.dicomout.sr import build_sr
from appliance.dicomout.uids import output_uids
from appliance.phantoms import chest_dataset, make_chest

from report_samples import content

PATIENT_ID, PATIENT_NAME = "EXP-001", "PÉREZ^ANA"


# --- the objects: an original and what the box makes of it ---------------------------------------


def original_chest(seed: int = 3, accession: str = "ACC-42") -> Dataset:
    ds = chest_dataset(
        make_chest(seed, rows=128),
        modality="DX",
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        study_key=f"export-{seed}",
    )
    ds.SpecificCharacterSet = "ISO_IR 192"  # the patient's name is not ASCII
    ds.AccessionNumber = accession
    return ds


def _derived(original: Dataset, sop_class: str, modality: str, number: int) -> Dataset:
    """A new object in the original's study, in a series of its own."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime"):
        setattr(ds, keyword, original.get(keyword, ""))
    ds.AccessionNumber = original.get("AccessionNumber", "")
    ds.StudyID = original.get("StudyID", "")
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesNumber = 900 + number
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20261101", "094500"
    return ds


def heatmap_sc(original: Dataset) -> Dataset:
    ds = _derived(original, SecondaryCaptureImageStorage, "OT", 1)
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 64, 64, 3
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(1).integers(0, 256, 64 * 64 * 3, np.uint8).tobytes()
    ds.file_meta = file_meta_for(ds)
    return ds


def text_sr(original: Dataset, text: str = "Pleural effusion: score 0.91") -> Dataset:
    ds = _derived(original, BasicTextSRStorage, "SR", 2)
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
    item.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    language = Dataset()
    language.RelationshipType, language.ValueType = "HAS CONCEPT MOD", "CODE"
    language.ConceptNameCodeSequence = Sequence(
        [_code("121049", "DCM", "Language of Content Item and Descendants")]
    )
    language.ConceptCodeSequence = Sequence([_code("en", "RFC5646", "English")])
    ds.ContentSequence = Sequence([language, item])
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    ds.PerformedProcedureCodeSequence = Sequence([])
    ds.file_meta = file_meta_for(ds)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def small_pdf(*lines: str) -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    for line in lines or ("Findings report",):
        pdf.cell(text=line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def encapsulated_pdf(original: Dataset, document: bytes) -> Dataset:
    ds = _derived(original, EncapsulatedPDFStorage, "DOC", 3)
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Findings report"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + b"\0" * (len(document) % 2)  # even length
    ds.file_meta = file_meta_for(ds)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def study_files(folder: Path, seed: int = 3) -> list[Path]:
    """An original and its three objects, written as files under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    original = original_chest(seed)
    return [
        write(original, folder / "original.dcm"),
        write(heatmap_sc(original), folder / "heatmap.dcm"),
        write(text_sr(original), folder / "sr.dcm"),
        write(encapsulated_pdf(original, small_pdf()), folder / "report.dcm"),
    ]


@contextmanager
def read_fileset(dicomdir: Path) -> Iterator[FileSet]:
    """A written File-set, read back as a viewer would; pydicom's scratch folder for changes
    (none here) goes at the end rather than whenever the object is collected."""
    fileset = FileSet(dcmread(dicomdir))
    try:
        yield fileset
    finally:
        fileset._stage["t"].cleanup()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def uids_of(files: list[Path]) -> set[str]:
    return {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files}


# --- the File-set ------------------------------------------------------------------------------


def test_every_file_is_listed_in_the_dicomdir_and_readable(tmp_path: Path) -> None:
    files = study_files(tmp_path / "in")
    stick = tmp_path / "stick"
    stick.mkdir()
    result = export_study(files, stick, "ACC_42")
    assert result.folder == stick / "ACC_42" and result.dicomdir == result.folder / "DICOMDIR"
    assert result.files == 4 and result.size_bytes > sum(p.stat().st_size for p in files)
    with read_fileset(result.dicomdir) as fileset:
        assert fileset.ID == "ACC_42"
        assert {str(instance.SOPInstanceUID) for instance in fileset} == uids_of(files)
        types = sorted(instance.node.record_type for instance in fileset)
        assert types == ["ENCAP DOC", "IMAGE", "IMAGE", "SR DOCUMENT"]
        for instance in fileset:
            assert Path(instance.path).is_relative_to(result.folder)
            loaded = instance.load()
            assert loaded.PatientID == PATIENT_ID and str(loaded.PatientName) == PATIENT_NAME
        assert fileset.find_values("PatientID") == [PATIENT_ID]
        [sr] = [i for i in fileset if i.node.record_type == "SR DOCUMENT"]
        # The record holds the title's modifier (the language), not the report's content.
        [modifier] = sr.node._record.ContentSequence
        assert modifier.RelationshipType == "HAS CONCEPT MOD"
        assert len(sr.load().ContentSequence) == 2


def test_the_originals_are_copied_as_they_are(tmp_path: Path) -> None:
    files = study_files(tmp_path / "in")
    stick = tmp_path / "stick"
    stick.mkdir()
    result = export_study(files, stick, "ACC_42")
    with read_fileset(result.dicomdir) as fileset:
        copies = {str(i.SOPInstanceUID): Path(i.path) for i in fileset}
        report_path = next(Path(i.path) for i in fileset if i.node.record_type == "ENCAP DOC")
    for source in files:
        ds = dcmread(source)
        again = dcmread(copies[str(ds.SOPInstanceUID)])
        assert again == ds
        if "PixelData" in ds:
            assert again.PixelData == ds.PixelData
    assert bytes(dcmread(report_path).EncapsulatedDocument).startswith(b"%PDF-")


def test_dciodvfy_and_dcmdump_read_the_dicomdir(tmp_path: Path) -> None:
    files = study_files(tmp_path / "in")
    stick = tmp_path / "stick"
    stick.mkdir()
    result = export_study(files, stick, "ACC_42")
    checked = subprocess.run(
        ["dciodvfy", str(result.dicomdir)], capture_output=True, text=True, timeout=60, check=False
    )
    report = checked.stdout + checked.stderr
    assert "BasicDirectory" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    dumped = subprocess.run(
        ["dcmdump", str(result.dicomdir)], capture_output=True, text=True, timeout=60, check=True
    )
    assert dumped.stdout.count("(0004,1430) CS [IMAGE") == 2
    assert "SR DOCUMENT" in dumped.stdout and "ENCAP DOC" in dumped.stdout


def test_an_export_never_overwrites_an_earlier_one(tmp_path: Path) -> None:
    files = study_files(tmp_path / "in")
    stick = tmp_path / "stick"
    stick.mkdir()
    first = export_study(files, stick, "ACC_42")
    before = {p: digest(p) for p in first.folder.rglob("*") if p.is_file()}
    second = export_study(files, stick, "ACC_42")
    third = export_study(files, stick, "ACC_42")
    assert (second.folder.name, third.folder.name) == ("ACC_42_2", "ACC_42_3")
    assert {p: digest(p) for p in first.folder.rglob("*") if p.is_file()} == before
    with read_fileset(third.dicomdir) as fileset:
        assert len(fileset) == 4


def test_empty_values_a_record_needs_get_stand_ins_and_the_file_stays_as_it_was(
    tmp_path: Path,
) -> None:
    original = original_chest(5)
    original.StudyID = ""
    for keyword in ("SeriesNumber", "InstanceNumber"):
        if keyword in original:
            delattr(original, keyword)
    source = write(original, tmp_path / "bare.dcm")
    stick = tmp_path / "stick"
    stick.mkdir()
    result = export_study([source], stick, "BARE")
    with read_fileset(result.dicomdir) as fileset:
        [copied] = fileset
        assert copied.StudyID == "ACC-42" and copied.InstanceNumber == 1  # from the records
        again = dcmread(copied.path)
    assert again.StudyID == "" and "InstanceNumber" not in again
    assert again == dcmread(source)


def test_a_signed_sr_the_box_made_is_listed_with_when_it_was_verified(tmp_path: Path) -> None:
    """An SR DOCUMENT record of a VERIFIED report must say when it was verified (Type 1C),
    which the report itself says only in its Verifying Observer Sequence."""
    folder = tmp_path / "in"
    folder.mkdir()
    original = write(original_chest(), folder / "original.dcm")
    source = dcmread(original, stop_before_pixels=True)
    sr = build_sr(
        content(),
        source,
        output_uids("sr", source.StudyInstanceUID, source.SOPInstanceUID, "fingerprint-1"),
        instance_number=1,
    )
    assert sr.VerificationFlag == "VERIFIED" and "VerificationDateTime" not in sr
    files = [original, write(sr, folder / "sr.dcm")]
    stick = tmp_path / "stick"
    stick.mkdir()
    result = export_study(files, stick, "SIGNED")
    checked = subprocess.run(
        ["dciodvfy", str(result.dicomdir)], capture_output=True, text=True, timeout=60, check=False
    )
    report = checked.stdout + checked.stderr
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    with read_fileset(result.dicomdir) as fileset:
        [record] = [i.node._record for i in fileset if i.node.record_type == "SR DOCUMENT"]
    assert record.VerificationDateTime == "20260304110000+0000"  # the impression's signing


def test_the_dicomdir_is_named_only_once_the_files_it_lists_are_on_the_stick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stick pulled out while the files are synced must not hold a DICOMDIR that a viewer
    opens as the whole study: until then it has another name. The sync failing (the stick
    gone) fails the export, and what was written is removed where it still can be."""
    files = study_files(tmp_path / "in")
    stick = tmp_path / "stick"
    stick.mkdir()
    seen: list[list[str]] = []

    def pulled_out(root: Path) -> tuple[int, int]:
        seen.append(sorted(p.name for p in root.iterdir() if p.is_file()))
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fileset_module, "_sync_tree", pulled_out)
    with pytest.raises(ExportError, match="Input/output error") as failed:
        export_study(files, stick, "ACC_42")
    assert failed.value.key == "not_writable"
    assert seen == [["DICOMDIR.PART"]]
    assert list(stick.iterdir()) == []
    monkeypatch.undo()
    done = export_study(files, stick, "ACC_42")
    assert sorted(p.name for p in done.folder.iterdir() if p.is_file()) == ["DICOMDIR"]
    assert done.files == 4


def test_no_copy_of_patient_data_is_left_in_the_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    files = study_files(tmp_path / "in")
    stick = tmp_path / "stick"
    stick.mkdir()
    export_study(files, stick, "ACC_42")
    assert list(scratch.iterdir()) == []


# --- places that cannot take an export ---------------------------------------------------------


def test_a_file_or_a_missing_folder_is_refused(tmp_path: Path) -> None:
    files = study_files(tmp_path / "in")
    for dest in (files[0], tmp_path / "nowhere"):
        with pytest.raises(ExportError, match="is not a folder") as refused:
            export_study(files, dest, "ACC_42")
        assert refused.value.key == "not_folder"
    assert not (tmp_path / "nowhere").exists()


def test_a_folder_nobody_can_write_to_is_refused() -> None:
    """/proc takes no new folder, even from root (the tests may run as root, for whom a
    folder's permission bits mean nothing)."""
    files = [Path(__file__)]  # never read: the folder is refused first
    with pytest.raises(ExportError, match="cannot write to /proc") as refused:
        export_study(files, Path("/proc"), "ACC_42")
    assert refused.value.key == "not_writable"
    assert not Path("/proc/ACC_42").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    files = study_files(tmp_path / "in")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert not writable_folder(locked)
        with pytest.raises(ExportError) as refused:
            export_study(files, locked, "ACC_42")
        assert refused.value.key == "not_writable"
    finally:
        locked.chmod(0o700)


def test_a_file_that_is_not_dicom_stops_the_export_and_leaves_nothing(tmp_path: Path) -> None:
    files = study_files(tmp_path / "in")
    bad = tmp_path / "in" / "notes.txt"
    bad.write_text("not an image")
    stick = tmp_path / "stick"
    stick.mkdir()
    with pytest.raises(ExportError, match=r"notes\.txt cannot be read as DICOM") as refused:
        export_study([*files, bad], stick, "ACC_42")
    assert refused.value.key == "unreadable"
    assert list(stick.iterdir()) == []


def test_bad_fileset_ids_and_no_files_are_refused(tmp_path: Path) -> None:
    files = study_files(tmp_path / "in")
    for bad in ("", "acc 42", "A" * 17, "../ACC", "ACC\\42"):
        with pytest.raises(ExportError) as refused:
            export_study(files, tmp_path, bad)
        assert refused.value.key == "bad_id"
    with pytest.raises(ExportError) as refused:
        export_study([], tmp_path, "ACC_42")
    assert refused.value.key == "no_files"


def test_fileset_ids_made_of_labels() -> None:
    assert fileset_id_for("acc-42") == "ACC_42"
    assert fileset_id_for("../../etc/passwd") == "ETC_PASSWD"
    assert fileset_id_for("Ñandú 2026 — 000123456789") == "NANDU_2026___000"
    assert fileset_id_for("---") == "EXPORT"
    assert len(fileset_id_for("X" * 40)) == 16


# --- where a stick is --------------------------------------------------------------------------


def test_export_targets_are_writable_configured_folders_and_mounts_under_them(
    tmp_path: Path,
) -> None:
    media = tmp_path / "media"
    (media / "user" / "NOT_MOUNTED").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (media / "link").symlink_to(tmp_path / "elsewhere")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    found = export_targets([media, tmp_path / "missing", a_file, media])
    assert found == [media]  # a plain sub-folder or a link is no stick; listed once
    assert export_targets([media / "link"]) == []


@pytest.mark.skipif(not os.path.ismount("/dev/shm"), reason="/dev/shm is not a mount here")
def test_a_mount_point_under_a_configured_folder_is_listed() -> None:
    """/dev/shm is a real mount (tmpfs) under /dev, as a stick is under /media."""
    assert Path("/dev/shm") in export_targets([Path("/dev")])
