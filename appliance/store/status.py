"""What the roles tell the admin through the store: which models the worker loaded, whether each
role is up, and the store-side facts the health and audit pages show.

The UI must not import the runtime or talk to the other roles (DESIGN.md), so each role writes
its own state here when it starts (`record_models`, `RoleBeat`) and the UI only reads it. A role
that dies cannot say so: its heartbeat goes stale, and a stale heartbeat reads as not running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from appliance.store.db import transaction, utc_now
from appliance.store.store import Store

log = logging.getLogger(__name__)

BEAT_S = 30.0  # how often a running role refreshes its heartbeat
STALE_AFTER_S = 3 * BEAT_S  # a heartbeat older than this: the role is not running
ERROR_SUFFIXES = (".failed", ".refused", ".rejected")  # audit actions that report a problem
MODEL_STATES = ("loaded", "refused", "disabled")


# --- model packages ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRow:
    """One model package as the worker saw it at start-up (a row of installed_models)."""

    name: str
    state: str  # one of MODEL_STATES
    reason: str = ""
    version: str = ""
    model_sha256: str = ""
    backend: str = ""
    precision: str = ""
    folder: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    updated_at: str = ""  # when the worker reported it (set by the store)

    def __post_init__(self) -> None:
        if self.state not in MODEL_STATES:
            raise ValueError(f"model state {self.state!r} is not one of {', '.join(MODEL_STATES)}")


def record_models(conn: sqlite3.Connection, rows: Iterable[ModelRow]) -> None:
    """Replace the table's content with `rows`, in one transaction: the UI never sees a
    half-written list. Names repeat when two folders hold the same package name (one of them
    is refused); the later row then takes its folder into its name, so none is lost."""
    now = utc_now()
    with transaction(conn):
        conn.execute("DELETE FROM installed_models")
        for name, row in _unique_names(rows):
            conn.execute(
                "INSERT INTO installed_models (name, version, model_sha256, state, reason,"
                " backend, precision, folder, manifest, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    row.version,
                    row.model_sha256,
                    row.state,
                    row.reason,
                    row.backend,
                    row.precision,
                    row.folder,
                    json.dumps(row.manifest, sort_keys=True, default=str),
                    now,
                ),
            )


def _unique_names(rows: Iterable[ModelRow]) -> Iterator[tuple[str, ModelRow]]:
    seen: set[str] = set()
    for row in rows:
        name = row.name
        if name in seen:
            name = f"{row.name} ({row.folder or len(seen)})"
        seen.add(name)
        yield name, row


def installed_models(conn: sqlite3.Connection) -> list[ModelRow]:
    """The packages the worker last reported: loaded first, then refused, then disabled."""
    rows = conn.execute(
        "SELECT name, version, model_sha256, state, reason, backend, precision, folder, manifest,"
        " updated_at FROM installed_models ORDER BY CASE state WHEN 'loaded' THEN 0"
        " WHEN 'refused' THEN 1 ELSE 2 END, name"
    ).fetchall()
    return [
        ModelRow(
            name=row["name"],
            state=row["state"],
            reason=row["reason"],
            version=row["version"],
            model_sha256=row["model_sha256"],
            backend=row["backend"],
            precision=row["precision"],
            folder=row["folder"],
            manifest=json.loads(row["manifest"] or "{}"),
            updated_at=row["updated_at"],
        )
        for row in rows
    ]


# --- roles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleState:
    """One role's row, judged against the clock."""

    role: str
    pid: int
    started_at: str
    heartbeat_at: str
    detail: dict[str, Any]
    running: bool
    uptime_s: float | None  # None when not running


def record_start(conn: sqlite3.Connection, role: str, **detail: Any) -> None:
    """A role has started: its pid, start time and what it wants the admin to know."""
    now = utc_now()
    conn.execute(
        "INSERT INTO role_status (role, pid, started_at, heartbeat_at, detail)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (role) DO UPDATE SET pid = excluded.pid,"
        " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
        " detail = excluded.detail",
        (role, os.getpid(), now, now, json.dumps(detail, sort_keys=True, default=str)),
    )


def beat(conn: sqlite3.Connection, role: str) -> None:
    """Refresh this process's heartbeat (a row another process took over is left alone)."""
    conn.execute(
        "UPDATE role_status SET heartbeat_at = ? WHERE role = ? AND pid = ?",
        (utc_now(), role, os.getpid()),
    )


def record_stop(conn: sqlite3.Connection, role: str) -> None:
    """A clean stop: the row stays (with its start time) but reads as not running at once."""
    row = conn.execute(
        "SELECT detail FROM role_status WHERE role = ? AND pid = ?", (role, os.getpid())
    ).fetchone()
    if row is None:
        return
    detail = {**json.loads(row["detail"]), "stopped_at": utc_now()}
    conn.execute(
        "UPDATE role_status SET detail = ? WHERE role = ? AND pid = ?",
        (json.dumps(detail, sort_keys=True), role, os.getpid()),
    )


def role_states(conn: sqlite3.Connection, now: datetime | None = None) -> list[RoleState]:
    """Every role that has ever reported, running or not, by name."""
    now = now or datetime.now(timezone.utc)
    rows = conn.execute(
        "SELECT role, pid, started_at, heartbeat_at, detail FROM role_status ORDER BY role"
    ).fetchall()
    return [_judge(row, now) for row in rows]


def _judge(row: sqlite3.Row, now: datetime) -> RoleState:
    detail: dict[str, Any] = json.loads(row["detail"] or "{}")
    age = (now - datetime.fromisoformat(row["heartbeat_at"])).total_seconds()
    running = age <= STALE_AFTER_S and "stopped_at" not in detail
    uptime = (now - datetime.fromisoformat(row["started_at"])).total_seconds()
    return RoleState(
        role=row["role"],
        pid=int(row["pid"]),
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
        detail=detail,
        running=running,
        uptime_s=max(0.0, uptime) if running else None,
    )


class RoleBeat:
    """Records a role's start and refreshes its heartbeat from a small thread until `stop()`.

    The thread has its own connection (Store.conn is per thread) and closes it when it ends.
    """

    def __init__(self, store: Store, role: str, every_s: float = BEAT_S, **detail: Any) -> None:
        self.store = store
        self.role = role
        self.every_s = every_s
        self.detail = detail
        self._started = _tolerant(self._record_start, role)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{role}-beat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stopped.wait(self.every_s):
                if not self._started:  # the store could not be written at start
                    self._started = _tolerant(self._record_start, self.role)
                else:
                    _tolerant(self._beat, self.role)
        finally:
            self.store.close_thread_connection()

    def _record_start(self) -> None:
        record_start(self.store.conn, self.role, **self.detail)

    def _beat(self) -> None:
        beat(self.store.conn, self.role)

    def stop(self) -> None:
        """Stop beating and mark the role stopped (call before the store is closed)."""
        self._stopped.set()
        self._thread.join(timeout=10)
        _tolerant(lambda: record_stop(self.store.conn, self.role), self.role)


def _tolerant(write: Callable[[], object], role: str) -> bool:
    """Run a status write; a store that cannot be written now (a full disk) is logged and
    tried again at the next beat, rather than stopping the role that only reports."""
    try:
        write()
    except sqlite3.OperationalError as exc:
        log.warning("%s: could not record its status in the store: %s", role, exc)
        return False
    return True


# --- health ------------------------------------------------------------------------------------


def last_association_at(conn: sqlite3.Connection) -> str | None:
    """When a modality last stored an image (ingest.* audit rows by an AE, not an import)."""
    row = conn.execute(
        "SELECT at FROM audit WHERE action >= 'ingest.' AND action < 'ingest/'"
        " AND actor LIKE 'ae:%' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else str(row["at"])


PROBE_KEY = "health.probe"  # kv: rewritten by every write probe
PROBE_TIMEOUT_S = 5.0  # a store locked for longer than this counts as not writable
RATE_WINDOW_DAYS = 7.0
MIN_RATE_SPAN_S = 3600.0  # less history than this says nothing about a daily rate


def write_problem(conn: sqlite3.Connection, data_dir: Path) -> str | None:
    """Why the store cannot be written now, or None when a tiny transaction commits.

    A commit is the only honest test: a full disk, a file system remounted read-only after an
    error, or a store locked by a stuck process all show here, where reading still works."""
    read_only = read_only_problem(data_dir)
    if read_only:
        return read_only
    try:
        conn.execute(f"PRAGMA busy_timeout={int(PROBE_TIMEOUT_S * 1000)}")
        with transaction(conn):
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                " SET value = excluded.value",
                (PROBE_KEY, utc_now()),
            )
    except sqlite3.Error as exc:
        return f"the store cannot be written: {exc}"
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA busy_timeout=30000")
    return None


def read_only_problem(data_dir: Path) -> str | None:
    """Why nothing can be written in the data folder's file system (mounted or remounted
    read-only, as the kernel does after an I/O error), or None."""
    try:
        read_only = bool(os.statvfs(data_dir).f_flag & os.ST_RDONLY)
    except OSError:
        return None  # the store's own error says what is wrong
    return f"the file system of the data folder {data_dir} is read-only" if read_only else None


@dataclass(frozen=True)
class DiskOutlook:
    """How long the disk lasts at the rate images (and the objects made of them) arrived."""

    free_bytes: int
    floor_bytes: int
    bytes_per_day: float | None  # None: too little history to tell
    days_left: float | None  # until free space reaches the floor; None: no rate, or none used
    window_days: float


def disk_outlook(
    conn: sqlite3.Connection, free_bytes: int, floor_bytes: int, now: datetime | None = None
) -> DiskOutlook:
    """Bytes received per day over the last week (or since the first image, if sooner),
    against the free space left above the floor."""
    now = now or datetime.now(timezone.utc)
    since = now - timedelta(days=RATE_WINDOW_DAYS)
    first = conn.execute("SELECT MIN(received_at) FROM instances").fetchone()[0]
    rate: float | None = None
    days: float | None = None
    if first is not None:
        start = max(since, datetime.fromisoformat(first))
        span_s = (now - start).total_seconds()
        stamp = start.isoformat(timespec="microseconds")
        received = conn.execute(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM instances WHERE received_at >= ?", (stamp,)
        ).fetchone()[0]
        made = conn.execute(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM outputs WHERE made_at >= ?", (stamp,)
        ).fetchone()[0]
        if span_s >= MIN_RATE_SPAN_S:
            rate = (int(received) + int(made)) * 86400.0 / span_s
            days = max(0, free_bytes - floor_bytes) / rate if rate > 0 else None
    return DiskOutlook(free_bytes, floor_bytes, rate, days, RATE_WINDOW_DAYS)


def removed_images(conn: sqlite3.Connection) -> int:
    """Images removed to free disk (retention), as the audit trail records them."""
    row = conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'retention.removed'").fetchone()
    return int(row[0])


def failed_jobs(conn: sqlite3.Connection, limit: int = 20) -> list[sqlite3.Row]:
    """The newest jobs that ended failed, with their reason and image."""
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT j.id, j.kind, j.error, j.attempts, j.updated_at, i.sop_instance_uid"
        " FROM jobs j JOIN instances i ON i.id = j.instance_ref"
        " WHERE j.state = 'failed' ORDER BY j.updated_at DESC, j.id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return rows


def audit_problems(conn: sqlite3.Connection, limit: int = 20) -> list[sqlite3.Row]:
    """The newest audit rows that report something going wrong (see ERROR_SUFFIXES)."""
    where = " OR ".join("action LIKE ?" for _ in ERROR_SUFFIXES)
    rows: list[sqlite3.Row] = conn.execute(
        f"SELECT id, at, actor, action, subject, detail FROM audit WHERE {where}"  # noqa: S608
        " ORDER BY id DESC LIMIT ?",
        (*(f"%{suffix}" for suffix in ERROR_SUFFIXES), limit),
    ).fetchall()
    return rows


# --- the audit trail, filtered -----------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    """What the admin searches the audit trail by; empty fields match everything.

    `action` matches exactly, or as a prefix when it ends in '*' ("ingest.*"); `actor` and
    `subject` match anywhere in the text, ignoring case; `since`/`until` are UTC ISO times
    (from inclusive, until exclusive), compared as text like the stored times.
    """

    action: str = ""
    actor: str = ""
    subject: str = ""
    since: str = ""
    until: str = ""

    def where(self) -> tuple[str, list[str]]:
        """The WHERE clause (placeholders only, never values) and its parameters."""
        clauses: list[str] = []
        params: list[str] = []
        if self.action.endswith("*"):
            clauses.append("action LIKE ? ESCAPE '\\'")
            params.append(_like_escape(self.action[:-1]) + "%")
        elif self.action:
            clauses.append("action = ?")
            params.append(self.action)
        for column, text in (("actor", self.actor), ("subject", self.subject)):
            if text:
                clauses.append(f"{column} LIKE ? ESCAPE '\\'")
                params.append(f"%{_like_escape(text)}%")
        if self.since:
            clauses.append("at >= ?")
            params.append(self.since)
        if self.until:
            clauses.append("at < ?")
            params.append(self.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_AUDIT_COLUMNS = "SELECT id, at, actor, action, subject, detail FROM audit"


def audit_page(
    conn: sqlite3.Connection, search: AuditFilter, limit: int, offset: int
) -> tuple[list[sqlite3.Row], int]:
    """One page of matching rows, newest first, and how many match in all."""
    where, params = search.where()
    count = f"SELECT COUNT(*) FROM audit{where}"  # noqa: S608 (placeholders only)
    total = int(conn.execute(count, params).fetchone()[0])
    rows: list[sqlite3.Row] = conn.execute(
        f"{_AUDIT_COLUMNS}{where} ORDER BY id DESC LIMIT ? OFFSET ?",
        (*params, limit, offset),
    ).fetchall()
    return rows, total


def audit_rows(
    conn_of: Callable[[], sqlite3.Connection], search: AuditFilter, batch: int = 1000
) -> Iterator[sqlite3.Row]:
    """Every matching row, newest first, fetched in batches (for a CSV export of any size).

    `conn_of` is called for each batch, so a streamed response uses the connection of the
    thread that happens to be sending it.
    """
    where, params = search.where()
    joiner = " AND " if where else " WHERE "
    clause = where
    values: list[str | int] = list(params)
    while True:
        sql = f"{_AUDIT_COLUMNS}{clause} ORDER BY id DESC LIMIT ?"
        rows = conn_of().execute(sql, (*values, batch)).fetchall()
        yield from rows
        if len(rows) < batch:
            return
        clause, values = f"{where}{joiner}id < ?", [*params, int(rows[-1]["id"])]


def audit_actions(conn: sqlite3.Connection) -> list[str]:
    """The actions the trail holds, for the filter's suggestions."""
    return [str(row[0]) for row in conn.execute("SELECT DISTINCT action FROM audit ORDER BY 1")]
