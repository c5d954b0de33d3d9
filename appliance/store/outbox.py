"""Results for the clinic's record: the objects the box made, and the sender's durable outbox.

`outputs` holds one row per object built of an analysed image (SR, heatmap, PDF report) and
revision; a later revision references the one it replaces. `deliveries` holds one row per
object (or received original) and destination: waiting -> sending -> sent | failed, with its
attempts, next try and last reason in plain words. A delivery left `sending` by a sender that
died is waiting again at the sender's next start (`reset_interrupted`), and is sent again with
the same SOP Instance UID: the peer sees a duplicate, never a second copy.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from appliance.store import audit, jobs
from appliance.store.db import transaction, utc_now

WAITING, SENDING, SENT, FAILED = "waiting", "sending", "sent", "failed"


@dataclass(frozen=True)
class NewOutput:
    """An object built and written to the outputs folder, to be recorded."""

    kind: str  # sr | heatmap | report
    label: str  # the heatmap's label; empty for the others
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    file_name: str  # relative to the outputs folder
    size_bytes: int


@dataclass(frozen=True)
class Delivery:
    """One object claimed for sending to one destination."""

    id: int
    destination: str
    sop_instance_uid: str
    source: str  # "output" (outputs folder) or "original" (spool)
    file_name: str
    attempts: int


# ---- the objects ----------------------------------------------------------------------------


def latest_revision(conn: sqlite3.Connection, instance_id: int) -> sqlite3.Row | None:
    """The newest revision of an image's objects: (revision, fingerprint), or None."""
    row = conn.execute(
        "SELECT revision, fingerprint FROM outputs WHERE instance_ref = ?"
        " ORDER BY revision DESC LIMIT 1",
        (instance_id,),
    ).fetchone()
    return row if isinstance(row, sqlite3.Row) else None


def latest_outputs(conn: sqlite3.Connection, instance_id: int) -> list[sqlite3.Row]:
    """The objects of the image's newest revision."""
    return conn.execute(
        "SELECT * FROM outputs WHERE instance_ref = ? AND revision ="
        " (SELECT MAX(revision) FROM outputs WHERE instance_ref = ?) ORDER BY id",
        (instance_id, instance_id),
    ).fetchall()


def record_outputs(
    conn: sqlite3.Connection,
    instance_id: int,
    study_id: int,
    revision: int,
    fingerprint: str,
    purpose: str,
    objects: Sequence[NewOutput],
) -> list[int]:
    """Record a revision's objects inside the caller's transaction; return their ids.

    Each object references the previous revision's object of the same kind and label."""
    previous = {(r["kind"], r["label"]): r["id"] for r in latest_outputs(conn, instance_id)}
    ids = []
    now = utc_now()
    for o in objects:
        cur = conn.execute(
            "INSERT INTO outputs (instance_ref, study_ref, kind, label, sop_class_uid,"
            " sop_instance_uid, series_instance_uid, file_name, size_bytes, revision,"
            " replaces_ref, fingerprint, purpose, made_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                instance_id,
                study_id,
                o.kind,
                o.label,
                o.sop_class_uid,
                o.sop_instance_uid,
                o.series_instance_uid,
                o.file_name,
                o.size_bytes,
                revision,
                previous.get((o.kind, o.label)),
                fingerprint,
                purpose,
                now,
            ),
        )
        ids.append(int(cur.lastrowid or 0))
    return ids


def output_files(conn: sqlite3.Connection) -> set[str]:
    """Every file name the outputs table refers to (the sweep keeps these)."""
    return {row[0] for row in conn.execute("SELECT file_name FROM outputs")}


def recorded_files(conn: sqlite3.Connection, names: Iterable[str]) -> set[str]:
    """Those of `names` that the outputs table refers to."""
    found = set()
    for name in names:
        row = conn.execute("SELECT 1 FROM outputs WHERE file_name = ?", (name,)).fetchone()
        if row is not None:
            found.add(name)
    return found


def study_outputs(conn: sqlite3.Connection, study_id: int) -> list[sqlite3.Row]:
    """The newest revision of every analysed image's objects in a study, for export and the
    study page (with the source image's SOP Instance UID)."""
    return conn.execute(
        "SELECT o.*, i.sop_instance_uid AS source_uid FROM outputs o"
        " JOIN instances i ON i.id = o.instance_ref WHERE o.study_ref = ? AND o.revision ="
        " (SELECT MAX(revision) FROM outputs WHERE instance_ref = o.instance_ref)"
        " ORDER BY o.instance_ref, o.id",
        (study_id,),
    ).fetchall()


def output_by_id(conn: sqlite3.Connection, output_id: int) -> sqlite3.Row | None:
    row = conn.execute("SELECT * FROM outputs WHERE id = ?", (output_id,)).fetchone()
    return row if isinstance(row, sqlite3.Row) else None


# ---- asking for objects and deliveries --------------------------------------------------------


def request_outputs(
    conn: sqlite3.Connection, study_id: int, purpose: str, max_attempts: int
) -> int:
    """Queue an outputs job for every analysed image of a study (final impression, send
    again), inside the caller's transaction; an identical queued job is not repeated.
    Returns how many were queued."""
    rows = conn.execute(
        "SELECT i.id FROM instances i JOIN series s ON s.id = i.series_ref"
        " JOIN analyses a ON a.instance_ref = i.id"
        " WHERE s.study_ref = ? AND i.state = 'present' AND NOT EXISTS"
        " (SELECT 1 FROM jobs j WHERE j.instance_ref = i.id AND j.kind = ?"
        "  AND j.state = 'queued' AND j.purpose = ?) ORDER BY i.id",
        (study_id, jobs.OUTPUTS, purpose),
    ).fetchall()
    for row in rows:
        jobs.enqueue(conn, row["id"], max_attempts, kind=jobs.OUTPUTS, purpose=purpose)
    return len(rows)


def queue_deliveries(
    conn: sqlite3.Connection,
    destination: str,
    study_id: int,
    items: Iterable[tuple[int | None, int | None, str]],
    again: bool = False,
) -> int:
    """Queue (output id, original instance id, SOP Instance UID) items for a destination,
    inside the caller's transaction. An item already queued there is left as it is, unless
    `again` (somebody asked to send again): then a sent or failed one waits once more.
    Returns how many now wait."""
    now = utc_now()
    queued = 0
    for output_id, original_id, uid in items:
        cur = conn.execute(
            "INSERT INTO deliveries (destination, output_ref, original_ref, study_ref,"
            " sop_instance_uid, state, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 'waiting', ?, ?)"
            " ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET state = 'waiting',"
            " attempts = 0, next_try = 0, last_reason = '', updated_at = excluded.updated_at"
            " WHERE ? AND state IN ('sent', 'failed')",
            (destination, output_id, original_id, study_id, uid, now, now, int(again)),
        )
        queued += cur.rowcount
    return queued


# ---- the sender's side ------------------------------------------------------------------------


def reset_interrupted(
    conn: sqlite3.Connection, actor: str = "sender", destination: str | None = None
) -> int:
    """At the sender's start (or of one destination's, after the store could not be
    written), inside the caller's transaction: deliveries left `sending` wait again, due at
    once, with an audit row saying how many."""
    sql = "UPDATE deliveries SET state = 'waiting', updated_at = ? WHERE state = 'sending'"
    params: tuple[str, ...] = (utc_now(),)
    if destination is not None:
        sql += " AND destination = ?"
        params += (destination,)
    cur = conn.execute(sql, params)
    if cur.rowcount:
        subject = "outbox" if destination is None else f"destination:{destination}"
        audit.append(conn, actor, "send.interrupted", subject, objects=cur.rowcount)
    return cur.rowcount


def due_destinations(conn: sqlite3.Connection, now: float | None = None) -> list[str]:
    """Destinations with at least one delivery due now."""
    now = time.time() if now is None else now
    rows = conn.execute(
        "SELECT DISTINCT destination FROM deliveries WHERE state = 'waiting' AND next_try <= ?",
        (now,),
    ).fetchall()
    return [row[0] for row in rows]


def next_due(conn: sqlite3.Connection, destination: str | None = None) -> float | None:
    """When the earliest waiting delivery (of one destination, or of any) may be tried (epoch
    seconds), or None."""
    sql = "SELECT MIN(next_try) FROM deliveries WHERE state = 'waiting'"
    params: tuple[str, ...] = ()
    if destination is not None:
        sql += " AND destination = ?"
        params = (destination,)
    row = conn.execute(sql, params).fetchone()
    return None if row[0] is None else float(row[0])


# The sender asks this at every poll, and `deliveries` keeps every sent row for years: the
# destinations are found by hopping from one to the next on the `deliveries_due` index (a few
# look-ups per destination), never by reading the whole table.
_KNOWN_DESTINATIONS = """
WITH RECURSIVE names(name) AS (
    SELECT MIN(destination) FROM deliveries
    UNION ALL
    SELECT (SELECT MIN(destination) FROM deliveries WHERE destination > name)
    FROM names WHERE name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL AND EXISTS
    (SELECT 1 FROM deliveries WHERE destination = name AND state IN ('waiting', 'sending'))
UNION SELECT name FROM destination_status
"""


def known_destinations(conn: sqlite3.Connection) -> set[str]:
    """Every destination that has deliveries waiting or being sent, or a status row."""
    return {row[0] for row in conn.execute(_KNOWN_DESTINATIONS)}


def claim(
    conn: sqlite3.Connection, destination: str, limit: int, now: float | None = None
) -> list[Delivery]:
    """Mark up to `limit` due deliveries of a destination `sending` (oldest first)."""
    now = time.time() if now is None else now
    due = conn.execute(
        "SELECT 1 FROM deliveries WHERE destination = ? AND state = 'waiting' AND next_try <= ?"
        " LIMIT 1",
        (destination, now),
    ).fetchone()
    if due is None:  # the usual case at a poll, without taking the write lock
        return []
    with transaction(conn):
        rows = conn.execute(
            "SELECT d.id, d.destination, d.sop_instance_uid, d.attempts,"
            " COALESCE(o.file_name, i.file_name) AS file_name,"
            " CASE WHEN d.output_ref IS NULL THEN 'original' ELSE 'output' END AS source"
            " FROM deliveries d LEFT JOIN outputs o ON o.id = d.output_ref"
            " LEFT JOIN instances i ON i.id = d.original_ref"
            " WHERE d.destination = ? AND d.state = 'waiting' AND d.next_try <= ?"
            " ORDER BY d.id LIMIT ?",
            (destination, now, limit),
        ).fetchall()
        conn.executemany(
            "UPDATE deliveries SET state = 'sending', updated_at = ? WHERE id = ?",
            [(utc_now(), row["id"]) for row in rows],
        )
    return [
        Delivery(
            r["id"],
            r["destination"],
            r["sop_instance_uid"],
            r["source"],
            r["file_name"],
            r["attempts"],
        )
        for r in rows
    ]


def mark_sent(conn: sqlite3.Connection, delivery: Delivery, actor: str, detail: str = "") -> None:
    """The destination acknowledged the object (success or warning status); inside the
    caller's transaction, like the other writes of the sender's side."""
    now = utc_now()
    conn.execute(
        "UPDATE deliveries SET state = 'sent', attempts = attempts + 1, sent_at = ?,"
        " last_reason = ?, updated_at = ? WHERE id = ?",
        (now, detail, now, delivery.id),
    )
    audit.append(
        conn,
        actor,
        "send.sent",
        f"object:{delivery.sop_instance_uid}",
        destination=delivery.destination,
        attempts=delivery.attempts + 1,
        detail=detail,
    )


def mark_failed(conn: sqlite3.Connection, delivery: Delivery, actor: str, reason: str) -> None:
    """The destination refused the object itself: trying again would give the same answer
    (a person may still ask to send again)."""
    conn.execute(
        "UPDATE deliveries SET state = 'failed', attempts = attempts + 1, last_reason = ?,"
        " updated_at = ? WHERE id = ?",
        (reason, utc_now(), delivery.id),
    )
    audit.append(
        conn,
        actor,
        "send.failed",
        f"object:{delivery.sop_instance_uid}",
        destination=delivery.destination,
        attempts=delivery.attempts + 1,
        reason=reason,
    )


def put_back(
    conn: sqlite3.Connection,
    deliveries: Sequence[Delivery],
    actor: str,
    reason: str,
    next_try: float,
    tried: bool = True,
) -> None:
    """Deliveries that could not be sent now (destination unreachable, association refused
    or lost) wait again until `next_try`; `tried` counts the attempt."""
    conn.executemany(
        "UPDATE deliveries SET state = 'waiting', attempts = attempts + ?, next_try = ?,"
        " last_reason = ?, updated_at = ? WHERE id = ?",
        [(int(tried), next_try, reason, utc_now(), d.id) for d in deliveries],
    )
    if deliveries:
        audit.append(
            conn,
            actor,
            "send.retry",
            f"destination:{deliveries[0].destination}",
            objects=len(deliveries),
            reason=reason,
            next_try=next_try,
        )


def record_destination(
    conn: sqlite3.Connection,
    name: str,
    reachable: bool | None,
    detail: str,
    failures: int = 0,
    next_try: float = 0.0,
) -> None:
    """What the sender last saw of a destination, for the health page and its back-off."""
    conn.execute(
        "INSERT INTO destination_status (name, reachable, failures, next_try, detail,"
        " checked_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
        " reachable = excluded.reachable, failures = excluded.failures,"
        " next_try = excluded.next_try, detail = excluded.detail,"
        " checked_at = excluded.checked_at",
        (
            name,
            None if reachable is None else int(reachable),
            failures,
            next_try,
            detail,
            utc_now(),
        ),
    )


def destination_status(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    row = conn.execute("SELECT * FROM destination_status WHERE name = ?", (name,)).fetchone()
    return row if isinstance(row, sqlite3.Row) else None


# ---- what people see --------------------------------------------------------------------------


def queue_summary(conn: sqlite3.Connection) -> dict[str, dict[str, object]]:
    """Per destination named in the outbox or the status table: counts by state, the oldest
    waiting delivery's time, and what the sender last saw."""
    summary: dict[str, dict[str, object]] = {}
    for row in conn.execute(
        "SELECT destination, state, COUNT(*) AS n, MIN(created_at) AS oldest"
        " FROM deliveries GROUP BY destination, state"
    ):
        entry = summary.setdefault(row["destination"], _empty_summary())
        entry[row["state"]] = row["n"]
        if row["state"] in (WAITING, SENDING):
            old = entry["oldest_waiting"]
            entry["oldest_waiting"] = row["oldest"] if old is None else min(str(old), row["oldest"])
    for row in conn.execute("SELECT * FROM destination_status"):
        entry = summary.setdefault(row["name"], _empty_summary())
        entry.update(
            reachable=None if row["reachable"] is None else bool(row["reachable"]),
            detail=row["detail"],
            checked_at=row["checked_at"],
            next_try=row["next_try"],
        )
    return summary


def _empty_summary() -> dict[str, object]:
    return {
        WAITING: 0,
        SENDING: 0,
        SENT: 0,
        FAILED: 0,
        "oldest_waiting": None,
        "reachable": None,
        "detail": "",
        "checked_at": None,
        "next_try": 0.0,
    }


def study_deliveries(conn: sqlite3.Connection, study_id: int) -> list[sqlite3.Row]:
    """Every delivery of a study's objects and originals, newest revision first."""
    return conn.execute(
        "SELECT d.destination, d.state, d.attempts, d.next_try, d.last_reason, d.sent_at,"
        " d.created_at, d.updated_at, d.sop_instance_uid, COALESCE(o.kind, 'image') AS kind,"
        " COALESCE(o.label, '') AS label, o.revision FROM deliveries d"
        " LEFT JOIN outputs o ON o.id = d.output_ref WHERE d.study_ref = ?"
        " ORDER BY d.destination, o.revision DESC, d.id",
        (study_id,),
    ).fetchall()


def undelivered_files(conn: sqlite3.Connection) -> set[str]:
    """Output files some destination still waits for: never to be removed to free disk."""
    rows = conn.execute(
        "SELECT DISTINCT o.file_name FROM deliveries d JOIN outputs o ON o.id = d.output_ref"
        " WHERE d.state IN ('waiting', 'sending')"
    )
    return {row[0] for row in rows}


def failed_outputs(conn: sqlite3.Connection, study_id: int) -> list[str]:
    """Why the objects of a study's images could not be made: the error of each image whose
    newest outputs job failed (a full disk, an unreadable source); empty when none did."""
    rows = conn.execute(
        "SELECT j.error FROM jobs j JOIN instances i ON i.id = j.instance_ref"
        " JOIN series s ON s.id = i.series_ref WHERE s.study_ref = ? AND j.kind = ?"
        " AND j.state = 'failed' AND j.id = (SELECT MAX(id) FROM jobs"
        "  WHERE instance_ref = j.instance_ref AND kind = j.kind) ORDER BY j.id",
        (study_id, jobs.OUTPUTS),
    ).fetchall()
    return [row[0] for row in rows]
