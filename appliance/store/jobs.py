"""The worker's job queue: queued -> running (leased, heartbeat) -> done | failed.

A lease expires if its worker stops heart-beating; `reap_stale` puts such jobs back in the queue
(or fails them once they have used all their attempts), so a killed worker loses nothing.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from appliance.domain import JobState
from appliance.store import audit
from appliance.store.db import utc_now


@dataclass(frozen=True)
class Job:
    id: int
    instance_id: int
    kind: str
    attempts: int
    max_attempts: int


def enqueue(
    conn: sqlite3.Connection, instance_id: int, max_attempts: int, kind: str = "analyse"
) -> int:
    """Queue a job for an instance inside the caller's transaction; return its id."""
    now = utc_now()
    cur = conn.execute(
        "INSERT INTO jobs (instance_ref, kind, state, max_attempts, created_at, updated_at)"
        " VALUES (?, ?, 'queued', ?, ?, ?)",
        (instance_id, kind, max_attempts, now, now),
    )
    return int(cur.lastrowid or 0)


def claim(conn: sqlite3.Connection, owner: str, lease_s: float) -> Job | None:
    """Lease the oldest queued job to `owner`, or return None when the queue is empty."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT id, instance_ref, kind, attempts, max_attempts FROM jobs"
            " WHERE state = 'queued' ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            conn.execute("COMMIT")
            return None
        conn.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?,"
            " lease_expires = ?, heartbeat_at = ?, updated_at = ? WHERE id = ?",
            (owner, time.time() + lease_s, utc_now(), utc_now(), row["id"]),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return Job(
        row["id"], row["instance_ref"], row["kind"], row["attempts"] + 1, row["max_attempts"]
    )


def heartbeat(conn: sqlite3.Connection, job_id: int, owner: str, lease_s: float) -> bool:
    """Extend the lease; False means the job is no longer ours (it was reaped)."""
    cur = conn.execute(
        "UPDATE jobs SET lease_expires = ?, heartbeat_at = ? "
        "WHERE id = ? AND lease_owner = ? AND state = 'running'",
        (time.time() + lease_s, utc_now(), job_id, owner),
    )
    return cur.rowcount == 1


def finish(conn: sqlite3.Connection, job_id: int, owner: str, error: str = "") -> bool:
    """Mark a leased job done, or failed with `error`; False if the lease was lost."""
    state = JobState.FAILED if error else JobState.DONE
    cur = conn.execute(
        "UPDATE jobs SET state = ?, error = ?, lease_owner = NULL, lease_expires = NULL,"
        " updated_at = ? WHERE id = ? AND lease_owner = ? AND state = 'running'",
        (state.value, error, utc_now(), job_id, owner),
    )
    return cur.rowcount == 1


def reap_stale(conn: sqlite3.Connection, now: float | None = None) -> int:
    """Requeue running jobs whose lease expired; fail those out of attempts. Returns the count."""
    now = time.time() if now is None else now
    conn.execute("BEGIN IMMEDIATE")
    try:
        stale = conn.execute(
            "SELECT id, attempts, max_attempts, lease_owner FROM jobs"
            " WHERE state = 'running' AND lease_expires < ?",
            (now,),
        ).fetchall()
        for row in stale:
            _requeue_or_fail(conn, row)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(stale)


def _requeue_or_fail(conn: sqlite3.Connection, row: sqlite3.Row) -> None:
    exhausted = row["attempts"] >= row["max_attempts"]
    state = "failed" if exhausted else "queued"
    error = f"worker stopped during {row['attempts']} attempt(s)" if exhausted else ""
    conn.execute(
        "UPDATE jobs SET state = ?, error = ?, lease_owner = NULL, lease_expires = NULL,"
        " updated_at = ? WHERE id = ?",
        (state, error, utc_now(), row["id"]),
    )
    audit.append(
        conn,
        "system",
        "job.reaped",
        f"job:{row['id']}",
        previous_owner=row["lease_owner"],
        outcome=state,
        attempts=row["attempts"],
    )
