"""Live capture in the store: what the UI asks of the worker's capture loop, and calibration.

The UI never talks to the capture device: it queues a request row (freeze, resume, save a
frame or a clip) and the worker's capture loop, polling these rows, carries it out and records
the result in the same row, which the UI reads back. Every request, its outcome and every
change of a device's scan region or calibration is in the audit trail.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from typing import Any, NamedTuple

from appliance.store import audit
from appliance.store.db import transaction, utc_now

KINDS = ("freeze", "resume", "save_frame", "save_clip")
SAVES = ("save_frame", "save_clip")
MAX_PATIENT_ID = 64  # DICOM LO
MAX_PATIENT_NAME = 64  # one PN component group
MAX_RESULT = 2000


class CaptureRequestError(ValueError):
    """A capture request or calibration that cannot be accepted; the message says why."""


class Calibration(NamedTuple):
    """A device's scan region inside the grabbed frame, and its pixel size when known; also a
    plain tuple (x, y, width, height, mm_per_pixel), as the UI may unpack it."""

    x: int
    y: int
    width: int
    height: int
    mm_per_pixel: float | None


class StudyForCapture(NamedTuple):
    """What a saved capture needs to join an existing study (same UID, same patient)."""

    study_uid: str
    patient_id: str
    patient_name: str
    accession: str


def queue_request(
    conn: sqlite3.Connection,
    kind: str,
    requested_by: str,
    study_id: int | None = None,
    patient_id: str = "",
    patient_name: str = "",
) -> int:
    """Queue a request for the capture loop; return its id.

    `requested_by` is the user name (the saved image's Origin user). A save joins the study
    `study_id`, or starts a new study for `patient_id`/`patient_name` (at least one of them);
    freeze and resume ignore the study fields.
    """
    patient_id, patient_name = patient_id.strip(), patient_name.strip()
    _check_request(kind, requested_by, study_id, patient_id, patient_name)
    if kind not in SAVES:
        study_id, patient_id, patient_name = None, "", ""
    now = utc_now()
    with transaction(conn):
        if study_id is not None and not _study_exists(conn, study_id):
            raise CaptureRequestError(f"there is no study {study_id}")
        cur = conn.execute(
            "INSERT INTO capture_requests (kind, study_ref, patient_id, patient_name,"
            " requested_by, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
            (kind, study_id, patient_id, patient_name, requested_by, now, now),
        )
        request_id = int(cur.lastrowid or 0)
        detail: dict[str, Any] = {"kind": kind}
        if study_id is not None:
            detail["study"] = study_id
        audit.append(
            conn, f"ui:{requested_by}", "capture.requested", f"capture:{request_id}", **detail
        )
    return request_id


def _check_request(
    kind: str, requested_by: str, study_id: int | None, patient_id: str, patient_name: str
) -> None:
    if kind not in KINDS:
        raise CaptureRequestError(f"capture request kind {kind!r} is not one of {', '.join(KINDS)}")
    if not requested_by.strip():
        raise CaptureRequestError("a capture request needs the user who asked for it")
    if kind not in SAVES:
        return
    if study_id is None and not (patient_id or patient_name):
        raise CaptureRequestError("a save needs a study, or a patient ID or name for a new one")
    if len(patient_id) > MAX_PATIENT_ID or len(patient_name) > MAX_PATIENT_NAME:
        raise CaptureRequestError(
            f"a patient ID and name have at most {MAX_PATIENT_ID} characters each"
        )
    if any(c in patient_id + patient_name for c in "\\\r\n\x00"):
        raise CaptureRequestError("a patient ID or name cannot hold a backslash or line break")


def _study_exists(conn: sqlite3.Connection, study_id: int) -> bool:
    return conn.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is not None


def next_request(conn: sqlite3.Connection) -> sqlite3.Row | None:
    """The oldest queued request (one capture loop per appliance takes them in order)."""
    row = conn.execute(
        "SELECT * FROM capture_requests WHERE state = 'queued' ORDER BY id LIMIT 1"
    ).fetchone()
    return row if isinstance(row, sqlite3.Row) else None


def expire_requests(conn: sqlite3.Connection) -> int:
    """Fail every request still queued when a capture loop starts: it was asked of a loop that
    has gone (a worker restart), and carried out now it would freeze or save a scene the user
    no longer looks at. Returns how many; each is audited as failed."""
    ids = [row[0] for row in conn.execute("SELECT id FROM capture_requests WHERE state = 'queued'")]
    for request_id in ids:
        with contextlib.suppress(CaptureRequestError):  # finished meanwhile
            finish_request(
                conn, request_id, None, error="expired: live capture restarted before it ran"
            )
    return len(ids)


def request_row(conn: sqlite3.Connection, request_id: int) -> sqlite3.Row | None:
    """One request as stored (the UI polls it for its state and result)."""
    row = conn.execute("SELECT * FROM capture_requests WHERE id = ?", (request_id,)).fetchone()
    return row if isinstance(row, sqlite3.Row) else None


def finish_request(
    conn: sqlite3.Connection, request_id: int, result: dict[str, Any] | None, error: str = ""
) -> None:
    """Record a request's end: done with `result` (JSON), or failed with `error` (the reason).

    Only a queued request is finished, so a request is carried out and audited once.
    """
    state = "failed" if error else "done"
    text = error[:MAX_RESULT] if error else json.dumps(result or {}, sort_keys=True)
    with transaction(conn):
        row = conn.execute(
            "UPDATE capture_requests SET state = ?, result = ?, updated_at = ?"
            " WHERE id = ? AND state = 'queued' RETURNING kind, requested_by",
            (state, text, utc_now(), request_id),
        ).fetchone()
        if row is None:
            raise CaptureRequestError(f"capture request {request_id} is not queued")
        detail: dict[str, Any] = {"reason": error} if error else dict(result or {})
        actor = f"capture:{row['requested_by']}"
        action = f"capture.{row['kind']}" + (".failed" if error else "")
        audit.append(conn, actor, action, f"capture:{request_id}", **detail)


def calibration(conn: sqlite3.Connection, device: str) -> Calibration | None:
    """The scan region and pixel size an admin set for `device` (the source's name)."""
    row = conn.execute(
        "SELECT x, y, width, height, mm_per_pixel FROM capture_calibration WHERE device = ?",
        (device,),
    ).fetchone()
    if row is None:
        return None
    mm = row["mm_per_pixel"]
    return Calibration(row["x"], row["y"], row["width"], row["height"], _float_or_none(mm))


def clear_calibration(conn: sqlite3.Connection, device: str, user: str) -> bool:
    """Forget `device`'s calibration (the loop goes back to the settings' region or to finding
    the scan area itself); audited with the old values. False when there was none."""
    with transaction(conn):
        old = calibration(conn, device)
        if old is None:
            return False
        conn.execute("DELETE FROM capture_calibration WHERE device = ?", (device,))
        _audit_calibration(conn, user, "capture.calibration_cleared", device, old)
    return True


def set_calibration(
    conn: sqlite3.Connection,
    device: str,
    x: int,
    y: int,
    width: int,
    height: int,
    mm_per_pixel: float | None,
    user: str,
) -> Calibration:
    """Set (or replace) `device`'s scan region and pixel size; audited with the old values.

    `user` is the admin's user name. A region is in grabbed-frame pixels; `mm_per_pixel`
    None means the region is known but not its scale (areas are then given in pixels only).
    """
    new = Calibration(int(x), int(y), int(width), int(height), _float_or_none(mm_per_pixel))
    _check_calibration(device, new)
    with transaction(conn):
        old = calibration(conn, device)
        conn.execute(
            "INSERT INTO capture_calibration (device, x, y, width, height, mm_per_pixel, set_by,"
            " set_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET"
            " x = excluded.x, y = excluded.y, width = excluded.width, height = excluded.height,"
            " mm_per_pixel = excluded.mm_per_pixel, set_by = excluded.set_by,"
            " set_at = excluded.set_at",
            (device, new.x, new.y, new.width, new.height, new.mm_per_pixel, user, utc_now()),
        )
        _audit_calibration(
            conn,
            user,
            "capture.calibrated",
            device,
            old,
            region=[new.x, new.y, new.width, new.height],
            mm_per_pixel=new.mm_per_pixel,
        )
    return new


def _audit_calibration(
    conn: sqlite3.Connection,
    user: str,
    action: str,
    device: str,
    old: Calibration | None,
    **detail: Any,
) -> None:
    """Audit a change of `device`'s calibration by an admin, with the values it replaced."""
    audit.append(
        conn,
        f"ui:{user}",
        action,
        f"device:{device}",
        **detail,
        previous=None if old is None else [old.x, old.y, old.width, old.height],
        previous_mm_per_pixel=None if old is None else old.mm_per_pixel,
    )


def _check_calibration(device: str, c: Calibration) -> None:
    if not device.strip():
        raise CaptureRequestError("a calibration needs the capture device's name")
    if c.x < 0 or c.y < 0 or c.width < 1 or c.height < 1:
        raise CaptureRequestError(
            f"region [{c.x}, {c.y}, {c.width}, {c.height}] needs x, y >= 0 and a positive size"
        )
    if c.mm_per_pixel is not None and not 0 < c.mm_per_pixel <= 10:
        raise CaptureRequestError(
            f"mm per pixel must be above 0 and at most 10, got {c.mm_per_pixel}"
        )


def study_for_capture(conn: sqlite3.Connection, study_id: int) -> StudyForCapture | None:
    """The UID, patient and accession of an existing study a capture is saved into."""
    row = conn.execute(
        "SELECT s.study_uid, s.accession_number, p.patient_id, p.patient_name FROM studies s"
        " JOIN patients p ON p.id = s.patient_ref WHERE s.id = ?",
        (study_id,),
    ).fetchone()
    if row is None:
        return None
    return StudyForCapture(
        row["study_uid"], row["patient_id"], row["patient_name"], row["accession_number"]
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
