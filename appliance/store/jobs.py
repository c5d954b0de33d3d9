"""The worker's job queue: queued -> running (leased, heartbeat) -> done | failed.

A lease expires if its worker stops heart-beating; `reap_stale` puts such jobs back in the queue
(or fails them once they have used all their attempts), so a killed worker loses nothing. A
worker restarted on the same machine need not wait for the lease to run out: `reap_dead_owners`
takes back the jobs of worker processes that no longer exist.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from appliance.domain import JobState
from appliance.store import audit
from appliance.store.analyses import FailureRecorder
from appliance.store.db import rollback, transaction, utc_now

ANALYSE = "analyse"
PICTURES = "pictures"  # heatmaps and overlays of a saved analysis: after every analysis
PICTURES_MAX_WAIT_S = 30.0  # a stream of images that never pauses must not starve pictures
# The objects for the clinic's record (SR, heatmaps, PDF) and their deliveries: after the
# pictures of an analysis, and when a clinician finalises or asks to send again. `purpose` says
# which: findings, final, or manual:<destination>.
OUTPUTS = "outputs"
HUNG = "inference hung"  # the start of the reason `mark_hung` writes


@dataclass(frozen=True)
class Job:
    id: int
    instance_id: int
    kind: str
    attempts: int
    max_attempts: int
    skip_plausibility: bool = False  # "analyse anyway", asked for by a user (held_back.py)
    purpose: str = ""  # outputs jobs: findings | final | manual:<destination>


def enqueue(
    conn: sqlite3.Connection,
    instance_id: int,
    max_attempts: int,
    kind: str = ANALYSE,
    skip_plausibility: bool = False,
    purpose: str = "",
) -> int:
    """Queue a job for an instance inside the caller's transaction; return its id."""
    now = utc_now()
    cur = conn.execute(
        "INSERT INTO jobs (instance_ref, kind, state, max_attempts, created_at, updated_at,"
        " skip_plausibility, purpose) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
        (instance_id, kind, max_attempts, now, now, int(skip_plausibility), purpose),
    )
    return int(cur.lastrowid or 0)


# Due: queued and past its retry time. Pictures and outputs also wait until no image has
# arrived for a moment (or until they are old): in a burst, every image gets its findings, and
# the worklist its order, before any picture is drawn or any report made (an outputs job takes
# far longer than an analysis). Analyses go first, then outputs, then the oldest.
_ANY_DUE = (
    "SELECT 1 FROM jobs WHERE state = 'queued' AND run_after <= :now"
    " AND (kind NOT IN ('pictures', 'outputs') OR :quiet OR created_at <= :overdue) LIMIT 1"
)
_NEXT_DUE = (
    "SELECT id, instance_ref, kind, attempts, max_attempts, skip_plausibility, purpose FROM jobs"
    " WHERE state = 'queued' AND run_after <= :now"
    " AND (kind NOT IN ('pictures', 'outputs') OR :quiet OR created_at <= :overdue)"
    " ORDER BY kind = 'pictures', kind = 'outputs', id LIMIT 1"
)


def claim(conn: sqlite3.Connection, owner: str, lease_s: float, quiet_s: float = 0.0) -> Job | None:
    """Lease the next due job to `owner`, or None: analyses first, oldest first; pictures and
    outputs only once no analysis was queued for `quiet_s` seconds or they waited
    PICTURES_MAX_WAIT_S."""
    due = _due_params(conn, quiet_s)
    if conn.execute(_ANY_DUE, due).fetchone() is None:
        return None  # the common idle case, without taking the write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(_NEXT_DUE, due).fetchone()
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
        rollback(conn)
        raise
    return Job(
        row["id"],
        row["instance_ref"],
        row["kind"],
        row["attempts"] + 1,
        row["max_attempts"],
        bool(row["skip_plausibility"]),
        row["purpose"],
    )


def _due_params(conn: sqlite3.Connection, quiet_s: float) -> dict[str, object]:
    now = time.time()
    last = conn.execute(
        "SELECT created_at FROM jobs WHERE kind = 'analyse' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    quiet = last is None or last[0] <= _iso(now - quiet_s)
    return {"now": now, "quiet": quiet, "overdue": _iso(now - PICTURES_MAX_WAIT_S)}


def _iso(epoch: float) -> str:
    """An epoch time in the store's text form (see db.utc_now), for comparisons."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="microseconds")


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


def retry(conn: sqlite3.Connection, job_id: int, owner: str, error: str, delay_s: float) -> bool:
    """Put a leased job back in the queue to run again after `delay_s`; False if not ours.

    The caller decides whether attempts remain (`Job.attempts < Job.max_attempts`).
    """
    cur = conn.execute(
        "UPDATE jobs SET state = 'queued', error = ?, lease_owner = NULL, lease_expires = NULL,"
        " run_after = ?, updated_at = ? WHERE id = ? AND lease_owner = ? AND state = 'running'",
        (error, time.time() + delay_s, utc_now(), job_id, owner),
    )
    return cur.rowcount == 1


def give_back(
    conn: sqlite3.Connection,
    job_id: int,
    owner: str,
    reason: str,
    delay_s: float,
    refund: bool,
    on_failed: FailureRecorder | None = None,
) -> str | None:
    """Put our own leased job back after a failure of the store under it (run again after
    `delay_s`). `refund`: the attempt does not count (a full disk is waited out, however long);
    otherwise a job out of attempts fails with `reason`. Returns the job's new state, or None
    when the job is no longer ours. Raises what the store raises when it still cannot write."""
    with transaction(conn):
        row = conn.execute(
            "SELECT id, instance_ref, kind, attempts, max_attempts, lease_owner, error FROM jobs"
            " WHERE id = ? AND lease_owner = ? AND state = 'running'",
            (job_id, owner),
        ).fetchone()
        if row is None:
            return None
        if not refund:
            return _requeue_or_fail(conn, row, on_failed, reason, time.time() + delay_s)
        conn.execute(
            "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), error = ?,"
            " lease_owner = NULL, lease_expires = NULL, run_after = ?, updated_at = ?"
            " WHERE id = ?",
            (reason, time.time() + delay_s, utc_now(), job_id),
        )
        audit.append(conn, "system", "job.waiting", f"job:{job_id}", reason=reason, wait_s=delay_s)
    return "queued"


def mark_hung(conn: sqlite3.Connection, job_id: int, owner: str, reason: str) -> bool:
    """Write on our running job that its inference hung (`reason` begins with "inference
    hung"), before the watchdog stops: the worker taken back after its restart then retries
    the job, and fails it with this reason once it is out of attempts."""
    cur = conn.execute(
        "UPDATE jobs SET error = ?, updated_at = ? WHERE id = ? AND lease_owner = ?"
        " AND state = 'running'",
        (reason, utc_now(), job_id, owner),
    )
    return cur.rowcount == 1


def pictures_waiting(conn: sqlite3.Connection) -> bool:
    """Whether a pictures or outputs job is queued (it may be waiting for a quiet moment)."""
    row = conn.execute(
        "SELECT 1 FROM jobs WHERE state = 'queued' AND kind IN ('pictures', 'outputs') LIMIT 1"
    )
    return row.fetchone() is not None


def next_due(conn: sqlite3.Connection) -> float | None:
    """When the earliest queued job may run (epoch seconds), or None when none is queued."""
    row = conn.execute("SELECT MIN(run_after) FROM jobs WHERE state = 'queued'").fetchone()
    return None if row[0] is None else float(row[0])


def owner_name() -> str:
    """A lease owner that says which process on which machine holds the job."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def reap_stale(
    conn: sqlite3.Connection, now: float | None = None, on_failed: FailureRecorder | None = None
) -> int:
    """Requeue running jobs whose lease expired; fail those out of attempts. Returns the count."""
    now = time.time() if now is None else now
    with transaction(conn):
        stale = conn.execute(
            "SELECT id, instance_ref, kind, attempts, max_attempts, lease_owner, error FROM jobs"
            " WHERE state = 'running' AND lease_expires < ?",
            (now,),
        ).fetchall()
        for row in stale:
            _requeue_or_fail(conn, row, on_failed)
    return len(stale)


def reap_dead_owners(conn: sqlite3.Connection, on_failed: FailureRecorder | None = None) -> int:
    """Take back running jobs leased by processes of this machine that no longer exist."""
    host = socket.gethostname()
    with transaction(conn):
        running = conn.execute(
            "SELECT id, instance_ref, kind, attempts, max_attempts, lease_owner, error FROM jobs"
            " WHERE state = 'running'"
        ).fetchall()
        dead = [row for row in running if _dead_here(row["lease_owner"] or "", host)]
        for row in dead:
            _requeue_or_fail(conn, row, on_failed)
    return len(dead)


def _dead_here(owner: str, host: str) -> bool:
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False  # another machine's, or not ours to judge: wait for the lease
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # a process of another user has the number now
    return False


def _requeue_or_fail(
    conn: sqlite3.Connection,
    row: sqlite3.Row,
    on_failed: FailureRecorder | None,
    reason: str = "",
    run_after: float | None = None,
) -> str:
    """Requeue a running job taken from its owner, or fail it once out of attempts. The reason
    is `reason`, else the one written on the job when its inference hung (`mark_hung`), else
    "the worker stopped"."""
    exhausted = row["attempts"] >= row["max_attempts"]
    state = "failed" if exhausted else "queued"
    hung = row["error"] if (row["error"] or "").startswith(HUNG) else ""
    error = reason or hung
    if exhausted and not error:
        error = f"the worker stopped during each of {row['attempts']} attempt(s)"
    conn.execute(
        "UPDATE jobs SET state = ?, error = ?, lease_owner = NULL, lease_expires = NULL,"
        " run_after = COALESCE(?, run_after), updated_at = ? WHERE id = ?",
        (state, error, run_after, utc_now(), row["id"]),
    )
    audit.append(
        conn,
        "system",
        "job.reaped",
        f"job:{row['id']}",
        previous_owner=row["lease_owner"],
        outcome=state,
        attempts=row["attempts"],
        **({"reason": error} if error else {}),
    )
    if not exhausted:
        return state
    if row["kind"] in (PICTURES, OUTPUTS):  # the findings stand; only these are missing
        audit.append(conn, "system", f"{row['kind']}.failed", f"job:{row['id']}", reason=error)
    elif on_failed is not None:
        on_failed(conn, row["id"], row["instance_ref"], error)
    if row["kind"] != OUTPUTS:  # the report goes without its pictures, or says it failed
        enqueue(conn, row["instance_ref"], row["max_attempts"], kind=OUTPUTS, purpose="findings")
    return state
