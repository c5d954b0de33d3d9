"""SQLite connection set-up and numbered, forward-only migrations.

WAL mode lets the UI and worker read while the receiver writes; synchronous=FULL makes every
commit durable before the C-STORE response that depends on it is sent.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from appliance.errors import StoreError

MIGRATIONS: list[str] = [
    # 1: the index of received images, the worker's job queue and the audit trail.
    """
    CREATE TABLE patients (
        id INTEGER PRIMARY KEY,
        patient_key TEXT NOT NULL UNIQUE,
        patient_id TEXT NOT NULL,
        patient_name TEXT NOT NULL,
        birth_date TEXT NOT NULL,
        sex TEXT NOT NULL
    );
    CREATE TABLE studies (
        id INTEGER PRIMARY KEY,
        study_uid TEXT NOT NULL UNIQUE,
        patient_ref INTEGER NOT NULL REFERENCES patients(id),
        accession_number TEXT NOT NULL,
        study_date TEXT NOT NULL,
        study_time TEXT NOT NULL,
        description TEXT NOT NULL,
        first_received_at TEXT NOT NULL,
        last_received_at TEXT NOT NULL
    );
    CREATE INDEX studies_by_patient ON studies(patient_ref);
    CREATE INDEX studies_by_received ON studies(last_received_at);
    CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        series_uid TEXT NOT NULL UNIQUE,
        study_ref INTEGER NOT NULL REFERENCES studies(id),
        modality TEXT NOT NULL,
        body_part TEXT NOT NULL,
        series_number INTEGER,
        description TEXT NOT NULL
    );
    CREATE INDEX series_by_study ON series(study_ref);
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL UNIQUE,
        series_ref INTEGER NOT NULL REFERENCES series(id),
        sop_class_uid TEXT NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        view_position TEXT NOT NULL,
        photometric TEXT NOT NULL,
        rows INTEGER,
        columns INTEGER,
        frames INTEGER NOT NULL,
        instance_number INTEGER,
        file_name TEXT NOT NULL UNIQUE,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        source TEXT NOT NULL,
        calling_aet TEXT NOT NULL,
        peer_address TEXT NOT NULL,
        received_at TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'present' CHECK (state IN ('present', 'missing'))
    );
    CREATE INDEX instances_by_series ON instances(series_ref);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        instance_ref INTEGER NOT NULL REFERENCES instances(id),
        kind TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        lease_owner TEXT,
        lease_expires REAL,
        heartbeat_at TEXT,
        error TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX jobs_by_state ON jobs(state, id);
    CREATE INDEX jobs_by_instance ON jobs(instance_ref);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_by_action ON audit(action, id);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    """,
    # 2: what the worker found: one analysis per image (its current outcome), the findings of
    # each model with their pictures, the study's triage priority, and job retry times.
    # Jobs of kind 'pictures' draw a finished analysis's heatmaps and overlays.
    """
    ALTER TABLE jobs ADD COLUMN run_after REAL NOT NULL DEFAULT 0;
    CREATE TABLE analyses (
        id INTEGER PRIMARY KEY,
        instance_ref INTEGER NOT NULL UNIQUE REFERENCES instances(id),
        job_ref INTEGER NOT NULL REFERENCES jobs(id),
        state TEXT NOT NULL
            CHECK (state IN ('findings', 'no_model', 'held_back', 'failed')),
        reason TEXT NOT NULL,
        priority TEXT NOT NULL CHECK (priority IN ('urgent', 'review', 'routine')),
        priority_rank INTEGER NOT NULL,
        summary TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE findings (
        id INTEGER PRIMARY KEY,
        job_ref INTEGER NOT NULL REFERENCES jobs(id),
        instance_ref INTEGER NOT NULL REFERENCES instances(id),
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        backend TEXT NOT NULL,
        precision TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('findings', 'held_back', 'failed')),
        reason TEXT NOT NULL,
        priority TEXT NOT NULL,
        summary TEXT NOT NULL,
        key_frame INTEGER NOT NULL,
        duration_ms REAL NOT NULL,
        result TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX findings_by_job ON findings(job_ref);
    CREATE INDEX findings_by_instance ON findings(instance_ref);
    CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY,
        finding_ref INTEGER NOT NULL REFERENCES findings(id),
        kind TEXT NOT NULL CHECK (kind IN ('heatmap', 'overlay', 'mask')),
        label TEXT NOT NULL,
        frame INTEGER NOT NULL,
        file_name TEXT NOT NULL UNIQUE,
        media_type TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX artifacts_by_finding ON artifacts(finding_ref);
    ALTER TABLE studies ADD COLUMN triage TEXT NOT NULL DEFAULT 'pending';
    ALTER TABLE studies ADD COLUMN triage_rank INTEGER NOT NULL DEFAULT 3;
    ALTER TABLE studies ADD COLUMN triage_reason TEXT NOT NULL DEFAULT '';
    CREATE INDEX studies_by_triage ON studies(triage_rank, first_received_at);
    """,
    # 3: the UI's users, what people say about findings (never changing them), and what the
    # roles tell the admin: which models are loaded, whether each role is up.
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('technologist', 'clinician', 'admin')),
        pin_hash TEXT NOT NULL,
        failed_attempts INTEGER NOT NULL DEFAULT 0,
        locked_until REAL NOT NULL DEFAULT 0,
        active INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL,
        last_sign_in TEXT
    );
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY,
        finding_ref INTEGER NOT NULL REFERENCES findings(id),
        label TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree', 'unsure')),
        comment TEXT NOT NULL,
        user_ref INTEGER NOT NULL REFERENCES users(id),
        at TEXT NOT NULL
    );
    CREATE INDEX feedback_by_finding ON feedback(finding_ref, id);
    CREATE TABLE impressions (
        id INTEGER PRIMARY KEY,
        study_ref INTEGER NOT NULL REFERENCES studies(id),
        user_ref INTEGER NOT NULL REFERENCES users(id),
        text TEXT NOT NULL,
        final INTEGER NOT NULL DEFAULT 0,
        at TEXT NOT NULL
    );
    CREATE INDEX impressions_by_study ON impressions(study_ref, id);
    CREATE TRIGGER feedback_no_update BEFORE UPDATE ON feedback
        BEGIN SELECT RAISE(ABORT, 'feedback is append-only: add a newer entry'); END;
    CREATE TRIGGER impressions_no_update BEFORE UPDATE ON impressions
        BEGIN SELECT RAISE(ABORT, 'impressions are append-only: add a newer entry'); END;
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE role_status (
        role TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        heartbeat_at TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE installed_models (
        name TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('loaded', 'refused', 'disabled')),
        reason TEXT NOT NULL,
        backend TEXT NOT NULL,
        precision TEXT NOT NULL,
        folder TEXT NOT NULL,
        manifest TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    # 4: live capture: what the UI asks of the worker's capture loop (freeze, save...), and the
    # scan region and calibration an admin set for each capture device.
    """
    CREATE TABLE capture_requests (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('freeze', 'resume', 'save_frame', 'save_clip')),
        study_ref INTEGER REFERENCES studies(id),
        patient_id TEXT NOT NULL DEFAULT '',
        patient_name TEXT NOT NULL DEFAULT '',
        requested_by TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'done', 'failed')),
        result TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX capture_requests_by_state ON capture_requests(state, id);
    CREATE TABLE capture_calibration (
        device TEXT PRIMARY KEY,
        x INTEGER NOT NULL,
        y INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        mm_per_pixel REAL,
        set_by TEXT NOT NULL,
        set_at TEXT NOT NULL
    );
    """,
    # 5: UI sessions. A signed session cookie is honoured only while its row exists, so
    # signing out (or timing out) ends the session on the box, not only in that browser.
    """
    CREATE TABLE ui_sessions (
        sid TEXT PRIMARY KEY,
        user_ref INTEGER NOT NULL REFERENCES users(id),
        started_at REAL NOT NULL
    );
    CREATE INDEX ui_sessions_started ON ui_sessions(started_at);
    """,
    # 6: "analyse anyway": an analysis job a user asked for on the study page for an image
    # the plausibility check held back. The worker skips the check for such a job and marks
    # the findings as outside the model's typical input.
    """
    ALTER TABLE jobs ADD COLUMN skip_plausibility INTEGER NOT NULL DEFAULT 0
        CHECK (skip_plausibility IN (0, 1));
    """,
    # 7: results for the clinic's record. `outputs` are the DICOM objects the box made of an
    # analysed image (SR, heatmap Secondary Captures, Encapsulated PDF), one row per object and
    # revision; a later revision (final impression, override, new model) references the one
    # it replaces. `deliveries` is the sender's durable outbox: one row per object (or received
    # original) and destination, with its state, attempts, next try and last reason.
    # `destination_status` is what the sender last saw of each destination. Jobs of kind
    # 'outputs' build the objects; `purpose` says why (findings, final, manual:<destination>).
    """
    ALTER TABLE jobs ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
    CREATE TABLE outputs (
        id INTEGER PRIMARY KEY,
        instance_ref INTEGER NOT NULL REFERENCES instances(id),
        study_ref INTEGER NOT NULL REFERENCES studies(id),
        kind TEXT NOT NULL CHECK (kind IN ('sr', 'heatmap', 'report')),
        label TEXT NOT NULL DEFAULT '',
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL UNIQUE,
        series_instance_uid TEXT NOT NULL,
        file_name TEXT NOT NULL UNIQUE,
        size_bytes INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        replaces_ref INTEGER REFERENCES outputs(id),
        fingerprint TEXT NOT NULL,
        purpose TEXT NOT NULL,
        made_at TEXT NOT NULL
    );
    CREATE INDEX outputs_by_instance ON outputs(instance_ref, revision);
    CREATE INDEX outputs_by_study ON outputs(study_ref);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        output_ref INTEGER REFERENCES outputs(id),
        original_ref INTEGER REFERENCES instances(id),
        study_ref INTEGER NOT NULL REFERENCES studies(id),
        sop_instance_uid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('waiting', 'sending', 'sent', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL DEFAULT 0,
        last_reason TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        sent_at TEXT,
        CHECK ((output_ref IS NULL) != (original_ref IS NULL)),
        UNIQUE (destination, sop_instance_uid)
    );
    CREATE INDEX deliveries_due ON deliveries(destination, state, next_try);
    CREATE INDEX deliveries_by_study ON deliveries(study_ref, destination);
    CREATE INDEX deliveries_by_age ON deliveries(destination, state, created_at);
    CREATE TABLE destination_status (
        name TEXT PRIMARY KEY,
        reachable INTEGER,
        failures INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL DEFAULT 0,
        detail TEXT NOT NULL DEFAULT '',
        checked_at TEXT NOT NULL
    );
    """,
    # 8: each user's language for the UI ('' = the screen's language, ui.language). No CHECK
    # on the codes: a language added later needs no table rebuild (preferences.py checks).
    """
    ALTER TABLE users ADD COLUMN language TEXT NOT NULL DEFAULT '';
    """,
]


def utc_now() -> str:
    """Time as stored: UTC, ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection, ROLLBACK on any error: the
    writes in the block (a change and its audit row) land together or not at all. IMMEDIATE
    takes the write lock at once, so a read-then-write inside cannot be raced."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK if a transaction is still open. SQLite ends one by itself on some errors
    (a full disk, I/O): a ROLLBACK then raises "no transaction is active" and would hide the
    error that matters."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def connect(path: Path) -> sqlite3.Connection:
    """Open the database with the durability and concurrency settings every role needs."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=True)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.create_function("casefold", 1, _casefold, deterministic=True)
    return conn


def _casefold(value: str | None) -> str | None:
    """SQL casefold(text): Unicode case-insensitive matching (LIKE folds ASCII only)."""
    return value.casefold() if isinstance(value, str) else value


def migrate(conn: sqlite3.Connection, lock_path: Path) -> int:
    """Apply the migrations this database has not seen; return the schema version.

    Roles start together, so the check-and-apply runs under an exclusive file lock.
    """
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _migrate_locked(conn)


def _migrate_locked(conn: sqlite3.Connection) -> int:
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > len(MIGRATIONS):
        raise StoreError(
            f"the database has schema version {current}, newer than this software "
            f"({len(MIGRATIONS)}): upgrade the appliance instead of downgrading"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        # executescript commits first; the version bump rides in the same script.
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{MIGRATIONS[version - 1]}\nPRAGMA user_version={version};\nCOMMIT;"
        )
    return len(MIGRATIONS)
