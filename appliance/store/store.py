"""One handle on the store for a role: the database file, the spool and settings they need."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from appliance.config import Settings
from appliance.domain import (
    Analysis,
    AnalysisState,
    ArtifactRecord,
    IngestResult,
    InstanceHeader,
    Origin,
)
from appliance.errors import StoreError
from appliance.paths import Paths, resolve_paths
from appliance.store import analyses, audit, jobs, outbox
from appliance.store.db import connect, migrate, rollback
from appliance.store.doorbell import Doorbell
from appliance.store.ingest import ingest
from appliance.store.reconcile import HeaderReader, ReconcileReport, reconcile
from appliance.store.results import ResultFiles
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
            self.results = ResultFiles(paths.results)
            self.outputs = ResultFiles(paths.outputs, suffix=".dcm")
            self.doorbell = Doorbell(paths.doorbell)
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
        result = ingest(
            self.conn, self.spool, tmp_path, header, origin, self.settings.jobs.max_attempts
        )
        if result.job_id is not None:
            self.doorbell.ring()
        return result

    def audit(self, actor: str, action: str, subject: str, **detail: object) -> None:
        audit.append(self.conn, actor, action, subject, **detail)

    def reconcile(self, read_header: HeaderReader) -> ReconcileReport:
        """Repair spool/database disagreements and requeue expired job leases (start-up)."""
        report = reconcile(self.conn, self.spool, read_header, self.settings.jobs.max_attempts)
        jobs.reap_stale(self.conn, on_failed=self.record_failure)
        return report

    @property
    def record_failure(self) -> analyses.FailureRecorder:
        """Records a job's final failure as its image's analysis (triage from settings)."""
        return analyses.failure_recorder(self.settings.triage.failed)

    def complete(
        self,
        job: jobs.Job,
        owner: str,
        analysis: Analysis,
        actor: str,
        then_pictures: bool = False,
    ) -> bool:
        """End a leased job with its analysis (and queue its pictures, or its outputs when it
        has none), in one transaction.

        False (and nothing written) when the lease was lost meanwhile: another worker has
        the job now, so its result, not ours, is the one that counts. A failed analysis
        fails the job with the analysis's reason.
        """
        error = analysis.reason if analysis.state is AnalysisState.FAILED else ""

        def save(conn: sqlite3.Connection) -> None:
            analyses.save_analysis(conn, job.id, job.instance_id, analysis, actor)
            # The objects for the clinic's record follow the pictures, or come at once.
            kind = jobs.PICTURES if then_pictures else jobs.OUTPUTS
            purpose = "" if then_pictures else "findings"
            jobs.enqueue(conn, job.instance_id, job.max_attempts, kind=kind, purpose=purpose)

        return self.finish_job(job, owner, error, save)

    def attach_pictures(
        self,
        job: jobs.Job,
        owner: str,
        artifacts: dict[int, list[ArtifactRecord]],
        actor: str,
        notes: list[str],
    ) -> bool:
        """End a pictures job with the pictures of each finding id, in one transaction."""

        def save(conn: sqlite3.Connection) -> None:
            for finding_id, records in artifacts.items():
                for record in records:
                    analyses.insert_artifact(conn, finding_id, record)
            subject = f"instance:{job.instance_id}"
            pictures = sum(len(records) for records in artifacts.values())
            audit.append(
                conn, actor, "pictures", subject, job=job.id, pictures=pictures, notes=notes
            )
            jobs.enqueue(
                conn, job.instance_id, job.max_attempts, kind=jobs.OUTPUTS, purpose="findings"
            )

        return self.finish_job(job, owner, "", save)

    def finish_job(
        self,
        job: jobs.Job,
        owner: str,
        error: str,
        save: Callable[[sqlite3.Connection], None],
    ) -> bool:
        """End a leased job (failed with `error` when given) and run `save` in the same
        transaction; False (nothing written) when the lease was lost meanwhile."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not jobs.finish(conn, job.id, owner, error):
                conn.execute("ROLLBACK")
                return False
            save(conn)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return True

    def sweep_results(self) -> int:
        """Remove picture and output files no row refers to (left by a crash before their
        commit)."""
        rows = self.conn.execute("SELECT file_name FROM artifacts").fetchall()
        swept = self.results.sweep_unreferenced({row[0] for row in rows})
        return swept + self.outputs.sweep_unreferenced(outbox.output_files(self.conn))

    def pending_pictures(self, instance_id: int) -> list[sqlite3.Row]:
        return analyses.pending_pictures(self.conn, instance_id)

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

    def instance_row(self, instance_id: int) -> sqlite3.Row:
        """What the worker needs to analyse an instance: file, state and routing tags."""
        row = self.conn.execute(
            "SELECT i.id, i.file_name, i.state, i.sop_class_uid, i.photometric,"
            " i.view_position, s.modality, s.body_part FROM instances i"
            " JOIN series s ON s.id = i.series_ref WHERE i.id = ?",
            (instance_id,),
        ).fetchone()
        if not isinstance(row, sqlite3.Row):
            raise KeyError(f"no instance {instance_id}")
        return row

    def close(self) -> None:
        self.doorbell.close()
        self.close_thread_connection()

    def close_thread_connection(self) -> None:
        """Close the calling thread's connection (a thread that ends should call this)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def open_store(settings: Settings, paths: Paths | None = None) -> Store:
    """Open (creating and migrating as needed) the store these settings point at."""
    return Store(paths or resolve_paths(settings), settings)
