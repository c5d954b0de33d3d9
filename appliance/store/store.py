"""One handle on the store for a role: the database file, the spool and settings they need."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from appliance.config import Settings
from appliance.domain import IngestResult, InstanceHeader, Origin
from appliance.errors import StoreError
from appliance.paths import Paths, resolve_paths
from appliance.store import audit, jobs
from appliance.store.db import connect, migrate
from appliance.store.ingest import ingest
from appliance.store.reconcile import HeaderReader, ReconcileReport, reconcile
from appliance.store.spool import Spool
from appliance.store.summary import StoreSummary, summarize


class Store:
    """Thread-safe access to the store: each thread gets its own SQLite connection."""

    def __init__(self, paths: Paths, settings: Settings) -> None:
        self.paths = paths
        self.settings = settings
        self._local = threading.local()
        floor = settings.storage.free_space_floor_mb * 2**20
        try:
            paths.data_dir.mkdir(parents=True, exist_ok=True)
            self.spool = Spool(paths.spool, free_space_floor_bytes=floor)
            self.schema_version = migrate(self.conn, paths.data_dir / ".migrate.lock")
        except (OSError, sqlite3.OperationalError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise StoreError(
                f"cannot use the data folder {paths.data_dir} (storage.data_dir): {reason}"
            ) from exc

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.paths.database)
            self._local.conn = conn
        return conn

    def ingest(self, tmp_path: Path, header: InstanceHeader, origin: Origin) -> IngestResult:
        """Store and index one file from the spool's tmp folder (see store.ingest)."""
        return ingest(
            self.conn, self.spool, tmp_path, header, origin, self.settings.jobs.max_attempts
        )

    def audit(self, actor: str, action: str, subject: str, **detail: object) -> None:
        audit.append(self.conn, actor, action, subject, **detail)

    def reconcile(self, read_header: HeaderReader) -> ReconcileReport:
        """Repair spool/database disagreements and requeue expired job leases (start-up)."""
        report = reconcile(self.conn, self.spool, read_header, self.settings.jobs.max_attempts)
        jobs.reap_stale(self.conn)
        return report

    def summary(self) -> StoreSummary:
        return summarize(self.conn)

    def file_of(self, instance_id: int) -> Path:
        """The spool path of an instance's file."""
        row = self.conn.execute(
            "SELECT file_name FROM instances WHERE id = ?", (instance_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no instance {instance_id}")
        return self.spool.path_of(row["file_name"])

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def open_store(settings: Settings, paths: Paths | None = None) -> Store:
    """Open (creating and migrating as needed) the store these settings point at."""
    return Store(paths or resolve_paths(settings), settings)
