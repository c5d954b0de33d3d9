"""A user's request to analyse an image the plausibility check held back ("analyse anyway").

The check is statistical: an image unlike the model's typical input is held back rather than
scored, and a person who has looked at the image may decide it is fine. The request is an
analysis job with `skip_plausibility` set, queued with its audit row (who, when, which image,
which models held it back) in one transaction; the worker then scores the image without the
check and marks the findings as outside the model's typical input.

A second request while one is queued or running adds nothing: the image is being analysed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from appliance.store import audit, jobs
from appliance.store.db import transaction
from appliance.store.refused import Refused

REQUESTED = "analysis.anyway_requested"  # the audit action


@dataclass(frozen=True)
class AnywayRequest:
    """The job that will analyse the image; `queued` is False when it was there already."""

    job_id: int
    queued: bool


def request_analysis_anyway(
    conn: sqlite3.Connection, instance_id: int, actor: str, max_attempts: int
) -> AnywayRequest:
    """Queue an analysis of a held-back image that skips the plausibility check, audited.

    Refused (key "not_held_back") when the image's current analysis is not held back: there is
    nothing to override, e.g. it was analysed anyway already or found no applicable model.
    """
    with transaction(conn):
        pending = _pending_analysis(conn, instance_id)
        if pending is not None:
            return AnywayRequest(pending, queued=False)
        current = conn.execute(
            "SELECT state, job_ref, reason FROM analyses WHERE instance_ref = ?", (instance_id,)
        ).fetchone()
        if current is None or current["state"] != "held_back":
            state = "not analysed" if current is None else current["state"]
            raise Refused(
                f"image {instance_id} is {state}, not held back: there is nothing to analyse "
                "anyway (open the study again to see its current state)",
                "not_held_back",
            )
        job_id = jobs.enqueue(conn, instance_id, max_attempts, skip_plausibility=True)
        audit.append(
            conn,
            actor,
            REQUESTED,
            f"instance:{instance_id}",
            job=job_id,
            held_back_by=_held_back_models(conn, instance_id, int(current["job_ref"])),
            reason=current["reason"],
        )
    return AnywayRequest(job_id, queued=True)


def _pending_analysis(conn: sqlite3.Connection, instance_id: int) -> int | None:
    """The analysis job of this image that is queued or running, if any."""
    row = conn.execute(
        "SELECT id FROM jobs WHERE instance_ref = ? AND kind = ? AND state IN"
        " ('queued', 'running') ORDER BY id DESC LIMIT 1",
        (instance_id, jobs.ANALYSE),
    ).fetchone()
    return None if row is None else int(row["id"])


def _held_back_models(
    conn: sqlite3.Connection, instance_id: int, job_id: int
) -> list[dict[str, str]]:
    """Which models (name, version, file hash) held the image back in its current analysis."""
    rows = conn.execute(
        "SELECT model, version, model_sha256 FROM findings"
        " WHERE instance_ref = ? AND job_ref = ? AND state = 'held_back' ORDER BY id",
        (instance_id, job_id),
    ).fetchall()
    return [dict(row) for row in rows]
