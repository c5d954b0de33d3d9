"""Start-up repair of the spool and the database after a crash or power cut.

A file without a row (crash between rename and commit) is indexed as recovered; a row without a
file (disk fault, manual deletion) is marked missing and its queued jobs fail with that reason.
Every repair is audited.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.domain import InstanceHeader, Origin, Source
from appliance.paths import fsync_file
from appliance.store import audit
from appliance.store.ingest import index_file
from appliance.store.spool import CommittedFile, Spool, file_digest

log = logging.getLogger(__name__)

HeaderReader = Callable[[Path], InstanceHeader]


@dataclass
class ReconcileReport:
    indexed: list[str] = field(default_factory=list)
    removed_stale: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    tmp_removed: int = 0

    @property
    def repairs(self) -> int:
        return (
            len(self.indexed) + len(self.removed_stale) + len(self.quarantined) + len(self.missing)
        )


def reconcile(
    conn: sqlite3.Connection,
    spool: Spool,
    read_header: HeaderReader,
    max_attempts: int,
    tmp_age_s: float = 60.0,
) -> ReconcileReport:
    """Bring spool and database back into agreement; return what was repaired."""
    report = ReconcileReport(tmp_removed=len(spool.sweep_tmp(tmp_age_s)))
    known = {row[0] for row in conn.execute("SELECT file_name FROM instances")}
    for name in sorted(spool.committed_names() - known):
        _adopt_orphan(conn, spool, name, read_header, max_attempts, report)
    _mark_missing(conn, spool, report)
    if report.repairs:
        log.warning(
            "reconciled store: %d indexed, %d stale removed, %d quarantined, %d missing",
            len(report.indexed),
            len(report.removed_stale),
            len(report.quarantined),
            len(report.missing),
        )
    return report


def _adopt_orphan(
    conn: sqlite3.Connection,
    spool: Spool,
    name: str,
    read_header: HeaderReader,
    max_attempts: int,
    report: ReconcileReport,
) -> None:
    path = spool.path_of(name)
    try:
        header = read_header(path)
    except Exception as exc:
        target = spool.quarantine(name)
        audit.append(
            conn,
            "system",
            "reconcile.quarantined",
            f"file:{name}",
            reason=str(exc),
            moved_to=target,
        )
        report.quarantined.append(name)
        return
    owner = conn.execute(
        "SELECT id FROM instances WHERE sop_instance_uid = ? AND state = 'present'",
        (header.sop_instance_uid,),
    ).fetchone()
    if owner is not None:
        # A file replaced by a newer copy, or a duplicate whose row rolled back.
        spool.remove(name)
        audit.append(conn, "system", "reconcile.removed_stale", f"file:{name}", instance=owner[0])
        report.removed_stale.append(name)
        return
    fsync_file(path)  # the crash may have come before its data reached the disk
    size, digest = file_digest(path)
    stored = CommittedFile(name=name, size=size, sha256=digest)
    result, _ = index_file(conn, header, Origin(Source.RECOVERED), stored, max_attempts)
    audit.append(conn, "system", "reconcile.indexed", f"file:{name}", instance=result.instance_id)
    report.indexed.append(name)


def _mark_missing(conn: sqlite3.Connection, spool: Spool, report: ReconcileReport) -> None:
    present = spool.committed_names()
    rows = conn.execute("SELECT id, file_name FROM instances WHERE state = 'present'").fetchall()
    for row in rows:
        if row["file_name"] in present:
            continue
        conn.execute("UPDATE instances SET state = 'missing' WHERE id = ?", (row["id"],))
        conn.execute(
            "UPDATE jobs SET state = 'failed', error = 'the image file is missing from the spool',"
            " lease_owner = NULL WHERE instance_ref = ? AND state IN ('queued', 'running')",
            (row["id"],),
        )
        audit.append(
            conn, "system", "reconcile.missing", f"instance:{row['id']}", file=row["file_name"]
        )
        report.missing.append(row["id"])
