"""A study as a DICOM File-set (PS3.10 media: a DICOMDIR and its files) on a USB stick.

Where no network reaches the clinic's record, a study leaves the box on a stick that any DICOM
viewer or PACS import opens: pydicom's `FileSet` writes the files under conformant names
(PT000000/ST000000/SE000000/IM000000) with the DICOMDIR that indexes them.

Each export goes to a new sub-folder of the destination, so an earlier export (or another
file-set already on the stick) is never overwritten; the files and folders are fsync'd before
the export counts as done, since a stick is pulled out as soon as the screen says so. The
DICOMDIR gets its name last, once every file it lists is on the stick: a stick pulled out
half-way holds no DICOMDIR that a viewer would open as a whole study. What an export that fails
wrote is removed, where the stick is still there to remove it from.

The directory records need a few values that received images often leave empty (Study ID,
Series and Instance Number, a date): those records get stand-ins, while the files themselves
are copied as they are.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import DIRECTORY_RECORDERS, FileSet, RecordNode
from pydicom.uid import UID

from appliance.errors import ApplianceError
from appliance.paths import fsync_dir

FILESET_ID = re.compile(r"^[A-Z0-9_ ]{1,16}\Z")  # a CS value of at most 16 characters
_HEADROOM_BYTES = 4 * 2**20  # the DICOMDIR and the file system's own bookkeeping
_MAX_FOLDERS = 1000  # EXPORT, EXPORT_2 ... before giving up on a crowded stick
_BULK = {0x7FE00010, 0x00420011}  # Pixel Data, Encapsulated Document: never in a record
_PENDING_DICOMDIR = "DICOMDIR.PART"  # the DICOMDIR's name until the files it lists are synced


class ExportError(ApplianceError):
    """An export that cannot be done; the message says why in words for logs and the CLI,
    `key` and `values` let the UI say it from its strings catalogue."""

    def __init__(self, message: str, key: str = "", **values: object) -> None:
        super().__init__(message)
        self.key = key
        self.values = values


@dataclass(frozen=True)
class ExportResult:
    """A written File-set: its root folder (holding the DICOMDIR) and what it holds."""

    folder: Path
    dicomdir: Path
    files: int
    size_bytes: int


def fileset_id_for(label: str) -> str:
    """A File-set ID made of a study's label (accession number, study id): upper case
    letters, digits and underscores, at most 16 characters."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", label) if not unicodedata.combining(c))
    cleaned = re.sub(r"[^A-Z0-9_]", "_", plain.upper())[:16].strip("_")
    return cleaned or "EXPORT"


def export_study(files: Sequence[Path], dest: Path, fileset_id: str) -> ExportResult:
    """Write `files` as a File-set with its DICOMDIR into a new sub-folder of `dest`."""
    if not FILESET_ID.match(fileset_id):
        raise ExportError(f"File-set ID {fileset_id!r}: use 1-16 of A-Z, 0-9, space or _", "bad_id")
    if not files:
        raise ExportError("there are no files to export", "no_files")
    if not dest.is_dir():
        raise ExportError(f"{dest} is not a folder", "not_folder", folder=str(dest))
    root = _new_folder(dest, fileset_id.replace(" ", "_"))  # refuses a folder we cannot write
    try:
        _check_space(dest, files)
        _write_fileset(files, root, fileset_id)
        pending = root / _PENDING_DICOMDIR
        os.replace(root / "DICOMDIR", pending)
        count, size = _sync_tree(root)
        os.replace(pending, root / "DICOMDIR")
        fsync_dir(root)
        fsync_dir(dest)
    except BaseException as exc:
        shutil.rmtree(root, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _write_error(dest, exc) from exc
        raise
    return ExportResult(root, root / "DICOMDIR", count, size)


def _check_space(dest: Path, files: Sequence[Path]) -> None:
    """Room for the files, before any is copied (a stick filled half-way helps nobody)."""
    try:
        need = sum(path.stat().st_size for path in files) + _HEADROOM_BYTES
        free = shutil.disk_usage(dest).free
    except OSError as exc:
        name = Path(str(exc.filename)).name
        raise ExportError(f"cannot read {name}: {exc.strerror}", "unreadable", name=name) from exc
    if free < need:
        raise ExportError(
            f"{dest} has {free // 2**20} MiB free; the export needs {need // 2**20} MiB",
            "no_space",
            folder=str(dest),
            free=free // 2**20,
            need=need // 2**20,
        )


def _new_folder(dest: Path, name: str) -> Path:
    """Make (and so reserve) a sub-folder no earlier export uses: NAME, NAME_2, NAME_3..."""
    for number in range(1, _MAX_FOLDERS + 1):
        folder = dest / (name if number == 1 else f"{name}_{number}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise _write_error(dest, exc) from exc
        return folder
    raise ExportError(f"{dest} already holds {_MAX_FOLDERS} exports of {name}", "crowded")


def _write_error(dest: Path, exc: OSError) -> ExportError:
    reason = exc.strerror or str(exc)
    return ExportError(
        f"cannot write to {dest}: {reason}", "not_writable", folder=str(dest), reason=reason
    )


def _write_fileset(files: Sequence[Path], root: Path, fileset_id: str) -> None:
    fileset = FileSet()
    try:
        fileset.ID = fileset_id
        for number, path in enumerate(files, start=1):
            ds = _read(path)
            try:
                fileset.add_custom(ds, _records(ds, path, number))
            except (ValueError, AttributeError, KeyError) as exc:  # no UIDs or file meta
                raise ExportError(
                    f"{path.name} cannot be put in a File-set: {exc}", "unreadable", name=path.name
                ) from exc
        fileset.write(root)
    finally:
        _discard_stage(fileset)


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ExportError(
            f"{path.name} cannot be read as DICOM: {exc}", "unreadable", name=path.name
        ) from exc


def _discard_stage(fileset: FileSet) -> None:
    """pydicom keeps a copy of every added file in a temporary folder until the FileSet is
    collected: patient data must not linger there, so it goes now. (`clear()` would make a
    new temporary folder in its place.)"""
    stage = getattr(fileset, "_stage", {}).get("t")
    if isinstance(stage, TemporaryDirectory):
        stage.cleanup()


def _sync_tree(root: Path) -> tuple[int, int]:
    """fsync every file and folder under `root`, deepest first; return (DICOM files, bytes)."""
    count = size = 0
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            path = Path(folder) / name
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            size += path.stat().st_size
            count += name not in ("DICOMDIR", _PENDING_DICOMDIR)
        fsync_dir(Path(folder))
    return count, size


# --- directory records ---------------------------------------------------------------------


def _records(ds: Dataset, path: Path, number: int) -> RecordNode:
    """PATIENT -> STUDY -> SERIES -> leaf records for `ds`, from a copy of its header with
    stand-ins for empty Type 1 values; returns the leaf."""
    source = _record_source(ds, number)
    leaf = _leaf_type(ds)
    parent: RecordNode | None = None
    for kind in ("PATIENT", "STUDY", "SERIES", leaf):
        try:
            record = DIRECTORY_RECORDERS[kind](source)
        except (ValueError, KeyError, AttributeError) as exc:
            raise ExportError(
                f"{path.name}: no {kind} record can be made: {exc}", "unreadable", name=path.name
            ) from exc
        record.DirectoryRecordType = kind
        if "SpecificCharacterSet" in ds:
            record.SpecificCharacterSet = ds.SpecificCharacterSet
        if kind == "SR DOCUMENT":
            _keep_concept_modifiers(record)
        if kind == leaf:  # what the record points at (the File ID is set when written)
            record.ReferencedFileID = None
            record.ReferencedSOPClassUIDInFile = ds.SOPClassUID
            record.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
            record.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
        node = RecordNode(record)
        if parent is not None:
            node.parent = parent
        parent = node
    assert parent is not None
    return parent


def _keep_concept_modifiers(record: Dataset) -> None:
    """An SR DOCUMENT record carries only the document title's modifiers (PS3.3 F.5.24:
    the items with Relationship Type HAS CONCEPT MOD), not the report's whole content tree,
    which pydicom's record copies."""
    items = [
        item
        for item in record.get("ContentSequence", [])
        if item.get("RelationshipType") == "HAS CONCEPT MOD"
    ]
    if items:
        record.ContentSequence = items
    elif "ContentSequence" in record:
        del record.ContentSequence


def _leaf_type(ds: Dataset) -> str:
    """The record type of the instance itself (PS3.3 F.5): a document, a report or an image."""
    if "EncapsulatedDocument" in ds:
        return "ENCAP DOC"
    name = UID(str(ds.get("SOPClassUID", ""))).name
    if "SR Storage" in name:
        return "SR DOCUMENT"
    if "Key Object Selection" in name:
        return "KEY OBJECT DOC"
    if "Presentation State" in name:
        return "PRESENTATION"
    return "IMAGE"


def _record_source(ds: Dataset, number: int) -> Dataset:
    """The header without bulk data, with stand-ins where a record needs a value. The file's
    own elements are shared, never changed: a stand-in is a new element of the copy."""
    source = Dataset()
    for element in ds:
        if element.tag not in _BULK:
            source[element.tag] = element
    for keyword, (vr, stand_in) in _STAND_INS.items():
        if _empty(source, keyword):
            source.add_new(keyword, vr, stand_in(ds, number))
    verified = _verified_at(ds)
    if verified and _empty(source, "VerificationDateTime"):
        source.add_new("VerificationDateTime", "DT", verified)
    return source


def _verified_at(ds: Dataset) -> str:
    """When a VERIFIED SR was last verified: its SR DOCUMENT record must say it (Type 1C,
    PS3.3 F.5.24), while the document keeps it in each Verifying Observer's item."""
    if str(ds.get("VerificationFlag", "")).upper() != "VERIFIED":
        return ""
    times = [
        str(item.get("VerificationDateTime") or "")
        for item in ds.get("VerifyingObserverSequence", [])
    ]
    return max((t for t in times if t), default="")


def _empty(ds: Dataset, keyword: str) -> bool:
    return keyword not in ds or ds[keyword].VM == 0 or ds[keyword].value in ("", None)


def _first_date(ds: Dataset, _: int) -> str:
    for keyword in ("SeriesDate", "ContentDate", "AcquisitionDate", "InstanceCreationDate"):
        if not _empty(ds, keyword):
            return str(ds[keyword].value)
    return datetime.now(timezone.utc).strftime("%Y%m%d")


def _first_time(ds: Dataset, _: int) -> str:
    for keyword in ("SeriesTime", "ContentTime", "AcquisitionTime", "InstanceCreationTime"):
        if not _empty(ds, keyword):
            return str(ds[keyword].value)
    return "000000"


def _study_id(ds: Dataset, _: int) -> str:
    accession = str(ds.get("AccessionNumber", "") or "").strip()
    return accession[:16] or "1"


_STAND_INS: dict[str, tuple[str, Callable[[Dataset, int], Any]]] = {
    "PatientID": ("LO", lambda ds, n: "UNKNOWN"),
    "StudyDate": ("DA", _first_date),
    "StudyTime": ("TM", _first_time),
    "StudyID": ("SH", _study_id),
    "Modality": ("CS", lambda ds, n: "OT"),
    "SeriesNumber": ("IS", lambda ds, n: 1),
    "InstanceNumber": ("IS", lambda ds, n: n),
    "ContentDate": ("DA", _first_date),
    "ContentTime": ("TM", _first_time),
}


# --- where a stick is ------------------------------------------------------------------------


def export_targets(folders: Sequence[Path]) -> list[Path]:
    """Where an export may go now: each configured folder that is writable, and the writable
    mount points one or two levels under it (a USB stick mounts as /media/<label> or
    /media/<user>/<label>). Symbolic links are never followed out of a configured folder."""
    found: list[Path] = []
    for folder in folders:
        for candidate in (folder, *_mounts_under(folder)):
            if candidate not in found and writable_folder(candidate):
                found.append(candidate)
    return found


def _mounts_under(folder: Path) -> list[Path]:
    mounts: list[Path] = []
    for child in _subfolders(folder):
        if os.path.ismount(child):
            mounts.append(child)
        else:
            mounts += [
                grandchild for grandchild in _subfolders(child) if os.path.ismount(grandchild)
            ]
    return mounts


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:  # missing, or not ours to list
        return []


def writable_folder(path: Path) -> bool:
    """A real folder this process may write in, on a file system not mounted read-only."""
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
    return not read_only and os.access(path, os.W_OK | os.X_OK)
