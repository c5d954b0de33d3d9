"""The one way into the store, whatever the source (DICOM push, capture, import).

Order matters for durability: the file is fsync'd and renamed into the spool (and the folder
fsync'd) before the row that points at it is committed. A crash between the two leaves a file
without a row, which start-up reconciliation indexes; never a row without its file.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from appliance.domain import IngestOutcome, IngestResult, InstanceHeader, Origin
from appliance.errors import OutOfSpaceError
from appliance.store import analyses, audit, jobs
from appliance.store.db import transaction, utc_now
from appliance.store.spool import CommittedFile, Spool, file_digest

log = logging.getLogger(__name__)


def ingest(
    conn: sqlite3.Connection,
    spool: Spool,
    tmp_path: Path,
    header: InstanceHeader,
    origin: Origin,
    max_attempts: int,
) -> IngestResult:
    """Store the file at `tmp_path` (in the spool's tmp folder) and index it; queue a job.

    Idempotent per SOP Instance UID: identical bytes again are a duplicate (no new row, no new
    job); different bytes replace the earlier file and are audited as such.
    """
    digest = file_digest(tmp_path)
    duplicate = _same_copy(conn, header.sop_instance_uid, digest.sha256)
    if duplicate is not None:
        # A re-send of what we hold (modalities often re-send whole studies): nothing to write.
        tmp_path.unlink()
        _audit_duplicate(conn, origin, header, duplicate)
        return IngestResult(IngestOutcome.DUPLICATE, duplicate, None)
    stored = spool.commit(tmp_path, digest)
    try:
        result, old_file = index_file(conn, header, origin, stored, max_attempts)
    except sqlite3.OperationalError as exc:
        spool.remove(stored.name)
        if "full" in str(exc):
            raise OutOfSpaceError(f"the database could not grow: {exc}") from exc
        raise
    except BaseException:
        spool.remove(stored.name)
        raise
    if old_file is not None:
        spool.remove(old_file)
    log.debug(
        "ingest %s instance %d (%s)", result.outcome.value, result.instance_id, origin.source.value
    )
    return result


def _same_copy(conn: sqlite3.Connection, sop_instance_uid: str, sha256: str) -> int | None:
    """The id of a present instance with these exact bytes, if the store holds one."""
    row = conn.execute(
        "SELECT id FROM instances WHERE sop_instance_uid = ? AND sha256 = ? AND state = 'present'",
        (sop_instance_uid, sha256),
    ).fetchone()
    return None if row is None else int(row["id"])


def _audit_duplicate(
    conn: sqlite3.Connection, origin: Origin, header: InstanceHeader, instance_id: int
) -> None:
    subject = f"instance:{header.sop_instance_uid}"
    audit.append(conn, origin.actor, "ingest.duplicate", subject, instance=instance_id)


def index_file(
    conn: sqlite3.Connection,
    header: InstanceHeader,
    origin: Origin,
    stored: CommittedFile,
    max_attempts: int,
) -> tuple[IngestResult, str | None]:
    """Write the rows in one transaction; return the result and a file that is no longer used."""
    with transaction(conn):
        existing = conn.execute(
            "SELECT i.id, i.sha256, i.file_name, i.state, i.series_ref, se.study_ref"
            " FROM instances i JOIN series se ON se.id = i.series_ref"
            " WHERE i.sop_instance_uid = ?",
            (header.sop_instance_uid,),
        ).fetchone()
        if _holds_these_bytes(existing, stored):
            # The same bytes arrived on another association meanwhile.
            _audit_duplicate(conn, origin, header, existing["id"])
            return IngestResult(IngestOutcome.DUPLICATE, existing["id"], None), stored.name
        instance_id, outcome, unused = _place_instance(conn, header, origin, stored, existing)
        result = IngestResult(outcome, instance_id, jobs.enqueue(conn, instance_id, max_attempts))
        _audit_stored(conn, header, origin, stored, result)
        return result, unused


def _holds_these_bytes(existing: sqlite3.Row | None, stored: CommittedFile) -> bool:
    return (
        existing is not None
        and existing["sha256"] == stored.sha256
        and existing["state"] == "present"
    )


def _place_instance(
    conn: sqlite3.Connection,
    header: InstanceHeader,
    origin: Origin,
    stored: CommittedFile,
    existing: sqlite3.Row | None,
) -> tuple[int, IngestOutcome, str | None]:
    """Insert the instance, or point the existing row at the new file (and tidy the series
    and study it leaves); return its id, the outcome and the file no longer used."""
    series_id = _upsert_hierarchy(conn, header)
    if existing is None:
        return _insert_instance(conn, header, origin, stored, series_id), IngestOutcome.STORED, None
    instance_id = existing["id"]
    _update_instance(conn, instance_id, header, origin, stored, series_id)
    _tidy_after_move(conn, existing["series_ref"], existing["study_ref"])
    return instance_id, IngestOutcome.REPLACED, existing["file_name"]


def _audit_stored(
    conn: sqlite3.Connection, h: InstanceHeader, origin: Origin, f: CommittedFile, r: IngestResult
) -> None:
    audit.append(
        conn,
        origin.actor,
        f"ingest.{r.outcome.value}",
        f"instance:{h.sop_instance_uid}",
        instance=r.instance_id,
        job=r.job_id,
        size=f.size,
        sha256=f.sha256,
        sop_class=h.sop_class_uid,
        transfer_syntax=h.transfer_syntax_uid,
    )


def _upsert_hierarchy(conn: sqlite3.Connection, h: InstanceHeader) -> int:
    """Create or refresh the patient, study and series rows; return the series id.

    The newest file's values win, so a corrected re-send (the right patient, an added body
    part) corrects the study and series, and the worker routes by them; an empty value does not
    erase a known one. A study that changes patient is audited.
    """
    now = utc_now()
    key = h.patient_id or f"name:{h.patient_name}"
    patient = conn.execute(
        "INSERT INTO patients (patient_key, patient_id, patient_name, birth_date, sex)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(patient_key) DO UPDATE SET"
        " patient_name = excluded.patient_name, birth_date = excluded.birth_date,"
        " sex = excluded.sex RETURNING id",
        (key, h.patient_id, h.patient_name, h.patient_birth_date, h.patient_sex),
    ).fetchone()["id"]
    before = conn.execute(
        "SELECT st.patient_ref, p.patient_key FROM studies st"
        " JOIN patients p ON p.id = st.patient_ref WHERE st.study_uid = ?",
        (h.study_uid,),
    ).fetchone()
    study = conn.execute(_UPSERT_STUDY, (h.study_uid, patient, *_study_values(h), now, now))
    study_id = study.fetchone()["id"]
    if before is not None and before["patient_ref"] != patient:
        audit.append(
            conn,
            "system",
            "study.patient_changed",
            f"study:{h.study_uid}",
            before=before["patient_key"],
            after=key,
        )
    series: int = conn.execute(
        _UPSERT_SERIES,
        (h.series_uid, study_id, h.modality, h.body_part, h.series_number, h.series_description),
    ).fetchone()["id"]
    return series


def _study_values(h: InstanceHeader) -> tuple[str, str, str, str]:
    return (h.accession_number, h.study_date, h.study_time, h.study_description)


# "Keep the known value unless the new one says something": COALESCE(NULLIF(new, ''), old).
_UPSERT_STUDY = """
INSERT INTO studies (study_uid, patient_ref, accession_number, study_date, study_time,
                     description, first_received_at, last_received_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(study_uid) DO UPDATE SET
    patient_ref = excluded.patient_ref,
    accession_number = COALESCE(NULLIF(excluded.accession_number, ''), accession_number),
    study_date = COALESCE(NULLIF(excluded.study_date, ''), study_date),
    study_time = COALESCE(NULLIF(excluded.study_time, ''), study_time),
    description = COALESCE(NULLIF(excluded.description, ''), description),
    last_received_at = excluded.last_received_at
RETURNING id
"""
_UPSERT_SERIES = """
INSERT INTO series (series_uid, study_ref, modality, body_part, series_number, description)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT(series_uid) DO UPDATE SET
    study_ref = excluded.study_ref,
    modality = COALESCE(NULLIF(excluded.modality, ''), modality),
    body_part = COALESCE(NULLIF(excluded.body_part, ''), body_part),
    series_number = COALESCE(excluded.series_number, series_number),
    description = COALESCE(NULLIF(excluded.description, ''), description)
RETURNING id
"""


def _tidy_after_move(conn: sqlite3.Connection, series_id: int, study_id: int) -> None:
    """After a re-send replaced an image, wherever it went: remove the series and the study
    it may have left empty (no empty study on the worklist), else give the study it was in
    its triage again from the images it still holds. A study with impressions or capture
    requests stays, since those are never deleted."""
    conn.execute(
        "DELETE FROM series WHERE id = ? AND NOT EXISTS"
        " (SELECT 1 FROM instances WHERE series_ref = ?)",
        (series_id, series_id),
    )
    if conn.execute(_STUDY_IN_USE, (study_id,) * 5).fetchone() is not None:
        analyses.update_triage(conn, study_id)
        return
    uid = conn.execute("DELETE FROM studies WHERE id = ? RETURNING study_uid", (study_id,))
    audit.append(
        conn, "system", "study.removed", f"study:{uid.fetchone()[0]}", reason="no images left"
    )


_STUDY_IN_USE = """
SELECT 1 WHERE EXISTS (SELECT 1 FROM series WHERE study_ref = ?)
    OR EXISTS (SELECT 1 FROM impressions WHERE study_ref = ?)
    OR EXISTS (SELECT 1 FROM capture_requests WHERE study_ref = ?)
    OR EXISTS (SELECT 1 FROM outputs WHERE study_ref = ?)
    OR EXISTS (SELECT 1 FROM deliveries WHERE study_ref = ?)
"""


_INSTANCE_COLUMNS = (
    "series_ref, sop_class_uid, transfer_syntax_uid, view_position, photometric, rows, columns,"
    " frames, instance_number, file_name, size_bytes, sha256, source, calling_aet, peer_address,"
    " received_at, state"
)


def _instance_values(
    h: InstanceHeader, origin: Origin, stored: CommittedFile, series_id: int
) -> tuple[object, ...]:
    return (
        series_id,
        h.sop_class_uid,
        h.transfer_syntax_uid,
        h.view_position,
        h.photometric,
        h.rows,
        h.columns,
        h.frames,
        h.instance_number,
        stored.name,
        stored.size,
        stored.sha256,
        origin.source.value,
        origin.calling_aet,
        origin.peer_address,
        utc_now(),
        "present",
    )


def _insert_instance(
    conn: sqlite3.Connection,
    h: InstanceHeader,
    origin: Origin,
    stored: CommittedFile,
    series_id: int,
) -> int:
    cur = conn.execute(
        f"INSERT INTO instances (sop_instance_uid, {_INSTANCE_COLUMNS})"  # noqa: S608
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (h.sop_instance_uid, *_instance_values(h, origin, stored, series_id)),
    )
    return int(cur.lastrowid or 0)


def _update_instance(
    conn: sqlite3.Connection,
    instance_id: int,
    h: InstanceHeader,
    origin: Origin,
    stored: CommittedFile,
    series_id: int,
) -> None:
    assignments = ", ".join(f"{c.strip()} = ?" for c in _INSTANCE_COLUMNS.split(","))
    conn.execute(
        f"UPDATE instances SET {assignments} WHERE id = ?",  # noqa: S608
        (*_instance_values(h, origin, stored, series_id), instance_id),
    )
