"""Import from a USB stick or a file: DICOM, PNG or JPEG, several files at once, for any
signed-in user.

DICOM takes the same path as a C-STORE (spool tmp file, `check_dataset`, `Store.ingest`), so an
imported image is stored, deduplicated, queued and audited exactly like a received one. PNG and
JPEG carry no patient or study, so the user enters them and the picture is wrapped as a DICOM
Secondary Capture first (`dicomout.secondary`). A file's kind comes from its first bytes, never
from its name; a name is only ever shown, never used as a path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from flask import Blueprint, g, render_template, request
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from werkzeug.datastructures import FileStorage

from appliance.dicomout.secondary import (
    MODALITIES,
    DetailsError,
    PictureDetails,
    build_secondary_capture,
    decode_picture,
    picture_kind,
    write_secondary_capture,
)
from appliance.domain import Origin, Source
from appliance.errors import OutOfSpaceError, RejectedInput
from appliance.imaging.limits import Limits, check_dataset
from appliance.store import Store
from appliance.web import reasons
from appliance.web.db import get_settings, get_store
from appliance.web.i18n import t
from appliance.web.security import ViewResult

log = logging.getLogger(__name__)
bp = Blueprint("imports", __name__)
# Every page may show stored reasons in plain words (templates/_reason.html); registered with
# this always-present area so that the app factory needs no change.
bp.record_once(lambda state: reasons.init_app(state.app))

BODY_PARTS = (
    "CHEST",
    "ABDOMEN",
    "PELVIS",
    "SKULL",
    "SPINE",
    "SHOULDER",
    "ARM",
    "HAND",
    "HIP",
    "KNEE",
    "LEG",
    "FOOT",
    "HEART",
    "BREAST",
)
VIEWS = ("PA", "AP", "LL", "RL")
DETAIL_FIELDS = ("patient_name", "patient_id", "modality", "body_part", "view", "study_description")
_DICM_OFFSET = 128
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
Kind = Literal["dicom", "png", "jpeg"]


@dataclass(frozen=True)
class FileResult:
    """What became of one uploaded file, for the result page and the audit."""

    name: str
    outcome: str  # "stored", "replaced", "duplicate" or "refused"
    reason: str = ""


@bp.route("/import", methods=["GET"])
def form() -> str:
    return _render_form({"modality": "DX"}, {})


@bp.route("/import", methods=["POST"])
def upload() -> ViewResult:
    """Store each uploaded file; the result page says what became of every one."""
    files = [f for f in request.files.getlist("files") if f.filename or f.content_length]
    if not files:
        return _render_form(request.form, {"files": t("imports.no_files")}), 400
    kinds = [_kind_of(f) for f in files]
    details: PictureDetails | None = None
    if any(kind in ("png", "jpeg") for kind in kinds):
        try:
            details = _details_from(request.form)
        except DetailsError as exc:
            message = t(f"imports.detail_{exc.key}", **exc.values)
            chosen = [(f.filename or t("imports.unnamed"))[:200] for f in files]
            return _render_form(request.form, {exc.field: message}, chosen), 400
    origin = Origin(Source.IMPORT, user=g.user.username)
    results = [_import_one(f, kind, details, origin) for f, kind in zip(files, kinds, strict=True)]
    _audit(results, origin)
    return render_template("imports/result.html", results=results)


def _render_form(
    values: Mapping[str, str], errors: dict[str, str], chosen: list[str] | None = None
) -> str:
    """The form; after a refusal, what was typed is kept and the errors are listed at the top
    (the page opens on them), with the names of the files that must be chosen again: a browser
    never lets a page fill in a file field."""
    return render_template(
        "imports/form.html",
        values=values,
        errors=errors,
        chosen=chosen or [],
        modalities=MODALITIES,
        body_parts=BODY_PARTS,
        views=VIEWS,
    )


def _kind_of(upload: FileStorage) -> Kind | None:
    """DICOM (Part 10: 'DICM' after the preamble), PNG or JPEG, from the first bytes."""
    head = upload.stream.read(_DICM_OFFSET + 4)
    upload.stream.seek(0)
    if head[_DICM_OFFSET:] == b"DICM":
        return "dicom"
    return picture_kind(head)


def _details_from(form: Mapping[str, str]) -> PictureDetails:
    """The entered patient and study, validated; dated today (the day of the import)."""
    values = {name: str(form.get(name, ""))[:256] for name in DETAIL_FIELDS}
    return PictureDetails(study_date=date.today(), **values)


def _import_one(
    upload: FileStorage, kind: Kind | None, details: PictureDetails | None, origin: Origin
) -> FileResult:
    name = (upload.filename or t("imports.unnamed"))[:200]
    if kind is None:
        return FileResult(name, "refused", t("imports.not_an_image"))
    store = get_store()
    tmp = store.spool.new_tmp_path()
    try:
        store.spool.check_space(_size_of(upload))
        if kind == "dicom":
            upload.save(tmp)
        else:
            assert details is not None  # required by upload() when a picture is present
            picture = decode_picture(upload.read())
            write_secondary_capture(build_secondary_capture(picture, details), tmp)
        return FileResult(name, _ingest(store, tmp, origin))
    except OutOfSpaceError as exc:
        return FileResult(name, "refused", t("imports.no_space", reason=str(exc)))
    except RejectedInput as exc:
        return FileResult(name, "refused", str(exc))
    except OSError as exc:
        log.exception("importing a file failed")
        return FileResult(name, "refused", t("imports.write_failed", reason=exc.strerror or exc))
    except Exception:  # a bug must not lose the report on the files already stored
        log.exception("importing a file failed unexpectedly")
        return FileResult(name, "refused", t("imports.unexpected"))
    finally:
        tmp.unlink(missing_ok=True)  # moved into the spool when stored; else not wanted


def _ingest(store: Store, path: Path, origin: Origin) -> str:
    """The C-STORE path: parse the header (RejectedInput says why not), then ingest."""
    if _is_dicomdir(path):
        raise RejectedInput(t("imports.dicomdir"))
    header = check_dataset(path, Limits.from_settings(get_settings().receiver))  # sizes too
    return store.ingest(path, header, origin).outcome.value


def _is_dicomdir(path: Path) -> bool:
    """A stick's index file: it names images but holds none (and has no study UID)."""
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return False  # read_header says what is wrong with it
    return str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS


def _size_of(upload: FileStorage) -> int:
    stream = upload.stream
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    return size


def _audit(results: list[FileResult], origin: Origin) -> None:
    """One row for the import as a whole and one per refused file (stored files already have
    their ingest.* rows, written by the store)."""
    store = get_store()
    for result in results:
        if result.outcome == "refused":
            store.audit(
                origin.actor, "import.refused", "file", name=result.name, reason=result.reason
            )
    counts = {o: sum(r.outcome == o for r in results) for o in ("stored", "replaced", "duplicate")}
    refused = sum(r.outcome == "refused" for r in results)
    store.audit(
        origin.actor, "import", f"user:{origin.user}", files=len(results), refused=refused, **counts
    )
