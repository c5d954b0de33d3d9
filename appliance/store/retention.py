"""Freeing disk when it fills: the oldest images nobody waits for any more are removed.

When free space in the data folder falls under `retention.free_below_mb` (0: never), images
are removed oldest first until `retention.free_target_mb` is free again. An image may go when:

- it is older than `retention.min_age_days`;
- its findings are complete: it has an analysis and no analysis, pictures or outputs job is
  queued or running;
- nothing is on its way to a destination: no delivery of it or of the objects made of it is
  waiting or being sent (never, whatever the settings: the sender reads the file when it
  sends), and, unless `allow_undelivered`, none failed either (every destination has
  acknowledged what it was sent);
- unless `allow_unreviewed`, a clinician reviewed it: feedback on one of its findings, or a
  final impression on its study.

Removing an image deletes its spool file and the objects made of it (`outputs/`), marks the
instance `missing` (the worklist, export and "send again" then leave it out; the same image
sent again is stored anew), and writes one audit row (`retention.removed`) saying what went
and why. Findings, feedback, impressions and pictures stay. The database is changed first and
the files removed after the commit: a crash in between leaves files nobody names, never a row
whose file is gone unannounced.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from appliance.config import RetentionSettings, Settings
from appliance.store import audit, outbox
from appliance.store.backup import BackupError, files_lock
from appliance.store.db import transaction
from appliance.store.store import Store

log = logging.getLogger(__name__)

MIB = 2**20
EVERY_S = 300.0  # how often the worker looks (one statvfs while the disk has room)
ACTION = "retention.removed"
_BATCH = 200

_CANDIDATES = """
SELECT i.id, i.sop_instance_uid, i.file_name, i.size_bytes, i.received_at, s.study_ref,
    st.study_uid,
    EXISTS (SELECT 1 FROM feedback fb JOIN findings f ON f.id = fb.finding_ref
            WHERE f.instance_ref = i.id)
    OR EXISTS (SELECT 1 FROM impressions im WHERE im.study_ref = s.study_ref AND im.final = 1)
        AS reviewed
FROM instances i JOIN series s ON s.id = i.series_ref JOIN studies st ON st.id = s.study_ref
WHERE i.state = 'present' AND i.received_at < ? AND (i.received_at, i.id) > (?, ?)
    AND EXISTS (SELECT 1 FROM analyses a WHERE a.instance_ref = i.id)
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.instance_ref = i.id
                    AND j.state IN ('queued', 'running'))
"""

# Images with a delivery (of the original or of an object made of it) in the given states.
_IN_FLIGHT = """
SELECT DISTINCT COALESCE(o.instance_ref, d.original_ref) FROM deliveries d
LEFT JOIN outputs o ON o.id = d.output_ref WHERE d.state IN ({states})
"""


@dataclass(frozen=True)
class Removal:
    """One image removed (or, in a dry run, that would be)."""

    instance_id: int
    sop_instance_uid: str
    study_uid: str
    received_at: str
    file_name: str  # its spool file
    outputs: tuple[str, ...]  # the object files made of it
    size_bytes: int  # the image's file and its objects
    reviewed: bool

    def why(self, free: int, settings: RetentionSettings) -> str:
        review = "reviewed" if self.reviewed else "not reviewed (retention.allow_unreviewed)"
        return (
            f"free disk {free // MIB} MiB was under retention.free_below_mb "
            f"{settings.free_below_mb} MiB; oldest image older than {settings.min_age_days:g} "
            f"days with its findings complete, nothing waiting to be sent, {review}"
        )


def enforce(
    store: Store,
    settings: Settings,
    free_bytes: Callable[[], int] | None = None,
    *,
    dry_run: bool = False,
    actor: str = "worker",
    now: datetime | None = None,
) -> list[Removal]:
    """Remove images as the retention settings allow while free space is under the
    watermark; return what was removed (a dry run removes nothing and returns what would go,
    counting each image's size as freed). `free_bytes` measures the data folder's free
    space (default: statvfs of the spool)."""
    rules = settings.retention
    measure = free_bytes or store.spool.free_bytes
    free = measure()
    if rules.free_below_mb == 0 or free >= rules.free_below_mb * MIB:
        return []
    try:
        with files_lock(store.paths, exclusive=True, wait=False):
            return _free_up(store, rules, measure, free, dry_run, actor, now)
    except BackupError:
        log.info("retention waits: a backup or a restore is using the data folder's files")
        return []


def _free_up(
    store: Store,
    rules: RetentionSettings,
    measure: Callable[[], int],
    free: int,
    dry_run: bool,
    actor: str,
    now: datetime | None,
) -> list[Removal]:
    target = max(rules.free_target_mb, rules.free_below_mb) * MIB
    removed: list[Removal] = []
    for candidate in candidates(store.conn, rules, now):
        if free >= target:
            break
        if dry_run:
            removed.append(candidate)
            free += candidate.size_bytes
            continue
        if _remove(store, candidate, rules, free, actor):
            removed.append(candidate)
            free = measure()
    if removed and not dry_run:
        log.warning(
            "retention removed %d image(s) to free disk; %d MiB free now", len(removed), free // MIB
        )
    return removed


def candidates(
    conn: sqlite3.Connection, rules: RetentionSettings, now: datetime | None = None
) -> Iterator[Removal]:
    """The images the rules allow removing, oldest first."""
    now = now or datetime.now(timezone.utc)
    cutoff = (now - timedelta(days=rules.min_age_days)).isoformat(timespec="microseconds")
    blocked = _blocked(conn, rules)
    after: tuple[str, int] = ("", 0)
    while True:
        rows = conn.execute(
            f"{_CANDIDATES} ORDER BY i.received_at, i.id LIMIT ?", (cutoff, *after, _BATCH)
        ).fetchall()
        for row in rows:
            if row["id"] in blocked or not (row["reviewed"] or rules.allow_unreviewed):
                continue
            yield _removal(conn, row)
        if len(rows) < _BATCH:
            return
        after = (str(rows[-1]["received_at"]), int(rows[-1]["id"]))


def _blocked(conn: sqlite3.Connection, rules: RetentionSettings) -> set[int]:
    states = ("waiting", "sending") if rules.allow_undelivered else ("waiting", "sending", "failed")
    sql = _IN_FLIGHT.format(states=", ".join("?" for _ in states))
    return {int(row[0]) for row in conn.execute(sql, states) if row[0] is not None}


def _removal(conn: sqlite3.Connection, row: sqlite3.Row) -> Removal:
    objects = conn.execute(
        "SELECT file_name, size_bytes FROM outputs WHERE instance_ref = ?", (row["id"],)
    ).fetchall()
    return Removal(
        instance_id=int(row["id"]),
        sop_instance_uid=row["sop_instance_uid"],
        study_uid=row["study_uid"],
        received_at=row["received_at"],
        file_name=row["file_name"],
        outputs=tuple(o["file_name"] for o in objects),
        size_bytes=int(row["size_bytes"]) + sum(int(o["size_bytes"]) for o in objects),
        reviewed=bool(row["reviewed"]),
    )


def _remove(
    store: Store, removal: Removal, rules: RetentionSettings, free: int, actor: str
) -> bool:
    """Mark one image removed and audit it, then delete its files; False when it may no
    longer go (a job or a delivery came meanwhile, or it was sent again)."""
    conn = store.conn
    with transaction(conn):
        if not _still_removable(conn, removal, rules):
            return False
        conn.execute(
            "UPDATE instances SET state = 'missing' WHERE id = ? AND file_name = ?",
            (removal.instance_id, removal.file_name),
        )
        audit.append(
            conn,
            actor,
            ACTION,
            f"instance:{removal.instance_id}",
            sop_instance_uid=removal.sop_instance_uid,
            study_uid=removal.study_uid,
            received_at=removal.received_at,
            file=removal.file_name,
            outputs=list(removal.outputs),
            size_bytes=removal.size_bytes,
            reviewed=removal.reviewed,
            reason=removal.why(free, rules),
        )
    store.spool.remove(removal.file_name)
    store.outputs.remove_all(removal.outputs)
    return True


def _still_removable(conn: sqlite3.Connection, removal: Removal, rules: RetentionSettings) -> bool:
    row = conn.execute(
        "SELECT state, file_name FROM instances WHERE id = ?", (removal.instance_id,)
    ).fetchone()
    if row is None or row["state"] != "present" or row["file_name"] != removal.file_name:
        return False
    pending = conn.execute(
        "SELECT 1 FROM jobs WHERE instance_ref = ? AND state IN ('queued', 'running') LIMIT 1",
        (removal.instance_id,),
    ).fetchone()
    if pending is not None or removal.instance_id in _blocked(conn, rules):
        return False
    # What a destination still waits for is never removed (belt and braces: see _blocked).
    return not set(removal.outputs) & outbox.undelivered_files(conn)


class Periodic:
    """`enforce` at most every `every_s` seconds, for a role's loop. A store or disk error is
    logged and tried again next time: freeing disk must never stop the role."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        self.every_s = every_s
        self._next = 0.0

    def run(self, store: Store, settings: Settings) -> list[Removal]:
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.every_s
        try:
            return enforce(store, settings)
        except (sqlite3.Error, OSError) as exc:
            log.error("retention could not free disk now: %s", exc)
            return []
