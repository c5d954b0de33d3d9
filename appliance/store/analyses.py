"""What the worker found, saved with the end of its job in one transaction.

An image has one current analysis (its worklist state: findings, no applicable model, held back,
failed) and, per job, the findings of every model that ran, with the pictures stored beside
them. Findings are never changed afterwards: a replaced image gets a new job and new findings,
and the analysis row points at the newest job. The study's triage priority is recomputed from
its images' analyses in the same transaction, so the worklist never shows a stale order.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from appliance.domain import (
    PENDING_RANK,
    PRIORITY_RANK,
    Analysis,
    AnalysisState,
    ArtifactRecord,
    ModelOutcome,
)
from appliance.store import audit
from appliance.store.db import utc_now

FailureRecorder = Callable[[sqlite3.Connection, int, int, str], None]


def save_analysis(
    conn: sqlite3.Connection, job_id: int, instance_id: int, analysis: Analysis, actor: str
) -> None:
    """Record `analysis` of an instance by a job, inside the caller's transaction."""
    _upsert(conn, job_id, instance_id, analysis)
    for outcome in analysis.outcomes:
        finding_id = _insert_finding(conn, job_id, instance_id, outcome)
        for artifact in outcome.artifacts:
            insert_artifact(conn, finding_id, artifact)
        _audit_outcome(conn, actor, job_id, instance_id, outcome)
    audit.append(
        conn,
        actor,
        f"analysis.{analysis.state.value}",
        f"instance:{instance_id}",
        job=job_id,
        reason=analysis.reason,
        priority=analysis.priority,
    )
    update_triage(conn, study_of(conn, instance_id))


def failure_recorder(priority: str) -> FailureRecorder:
    """A callback that records a job's final failure as the image's analysis."""

    def record(conn: sqlite3.Connection, job_id: int, instance_id: int, reason: str) -> None:
        failed = Analysis(AnalysisState.FAILED, reason, priority, f"failed: {reason}")
        save_analysis(conn, job_id, instance_id, failed, "system")

    return record


def _upsert(conn: sqlite3.Connection, job_id: int, instance_id: int, a: Analysis) -> None:
    conn.execute(
        "INSERT INTO analyses (instance_ref, job_ref, state, reason, priority, priority_rank,"
        " summary, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (instance_ref) DO UPDATE SET job_ref = excluded.job_ref,"
        " state = excluded.state, reason = excluded.reason, priority = excluded.priority,"
        " priority_rank = excluded.priority_rank, summary = excluded.summary,"
        " updated_at = excluded.updated_at",
        (
            instance_id,
            job_id,
            a.state.value,
            a.reason,
            a.priority,
            PRIORITY_RANK[a.priority],
            a.summary,
            utc_now(),
        ),
    )


def _insert_finding(
    conn: sqlite3.Connection, job_id: int, instance_id: int, o: ModelOutcome
) -> int:
    cur = conn.execute(
        "INSERT INTO findings (job_ref, instance_ref, model, version, model_sha256, backend,"
        " precision, state, reason, priority, summary, key_frame, duration_ms, result,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job_id,
            instance_id,
            o.model,
            o.version,
            o.model_sha256,
            o.backend,
            o.precision,
            o.state.value,
            o.reason,
            o.priority,
            o.summary,
            o.key_frame,
            round(o.duration_ms, 3),
            json.dumps(o.result, sort_keys=True),
            utc_now(),
        ),
    )
    return int(cur.lastrowid or 0)


def insert_artifact(conn: sqlite3.Connection, finding_id: int, a: ArtifactRecord) -> None:
    conn.execute(
        "INSERT INTO artifacts (finding_ref, kind, label, frame, file_name, media_type, width,"
        " height, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            finding_id,
            a.kind,
            a.label,
            a.frame,
            a.file_name,
            a.media_type,
            a.width,
            a.height,
            json.dumps(a.detail, sort_keys=True),
        ),
    )


def pending_pictures(conn: sqlite3.Connection, instance_id: int) -> list[sqlite3.Row]:
    """Findings of the image's current analysis that have no pictures yet."""
    return conn.execute(
        "SELECT f.id, f.model, f.model_sha256, f.key_frame FROM findings f"
        " JOIN analyses a ON a.instance_ref = f.instance_ref AND a.job_ref = f.job_ref"
        " WHERE f.instance_ref = ? AND f.state = 'findings'"
        " AND NOT EXISTS (SELECT 1 FROM artifacts WHERE finding_ref = f.id) ORDER BY f.id",
        (instance_id,),
    ).fetchall()


def _audit_outcome(
    conn: sqlite3.Connection, actor: str, job_id: int, instance_id: int, o: ModelOutcome
) -> None:
    """One audit row per inference: input, model identity, backend, precision, time, outcome;
    findings a user asked for on a held-back image ("analyse anyway") say so."""
    marks = {"outside_typical_input": True} if o.result.get("outside_typical_input") else {}
    audit.append(
        conn,
        actor,
        "inference",
        f"instance:{instance_id}",
        job=job_id,
        model=o.model,
        version=o.version,
        model_sha256=o.model_sha256,
        backend=o.backend,
        precision=o.precision,
        duration_ms=round(o.duration_ms, 3),
        outcome=o.state.value,
        reason=o.reason,
        summary=o.summary,
        **marks,
    )


def study_of(conn: sqlite3.Connection, instance_id: int) -> int:
    row = conn.execute(
        "SELECT series.study_ref FROM instances JOIN series ON series.id = instances.series_ref"
        " WHERE instances.id = ?",
        (instance_id,),
    ).fetchone()
    if row is None:
        raise KeyError(f"no instance {instance_id}")
    return int(row[0])


def update_triage(conn: sqlite3.Connection, study_id: int) -> None:
    """The study's priority: the most urgent of its present images' analyses (ties: newest)."""
    worst = conn.execute(
        "SELECT a.priority, a.priority_rank, a.summary FROM analyses a"
        " JOIN instances i ON i.id = a.instance_ref JOIN series s ON s.id = i.series_ref"
        " WHERE s.study_ref = ? AND i.state = 'present'"
        " ORDER BY a.priority_rank, a.updated_at DESC LIMIT 1",
        (study_id,),
    ).fetchone()
    if worst is None:
        values: tuple[str, int, str] = ("pending", PENDING_RANK, "")
    else:
        values = (worst["priority"], worst["priority_rank"], worst["summary"])
    conn.execute(
        "UPDATE studies SET triage = ?, triage_rank = ?, triage_reason = ? WHERE id = ?",
        (*values, study_id),
    )
