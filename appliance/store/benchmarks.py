"""The store's side of the benchmarks (`appliance bench ...`): a year of rows written at once,
what a store holds counted back, a job leased by its id, and the progress of pushed images.

Nothing in the roles uses these; they live here because SQL lives only in the store.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.store.db import transaction, utc_now

# A table's rows for `insert_rows`: its column names, and one tuple of values a row.
TableRows = tuple[Sequence[str], Sequence[tuple[Any, ...]]]


@dataclass(frozen=True)
class Contents:
    """What a store holds, counted from its tables."""

    studies: int
    patients: int
    images: int
    findings: int
    triage: dict[str, int]  # studies by triage priority (pending: not analysed yet)
    states: dict[str, int]  # images by analysis state (none: not analysed yet)


def insert_rows(conn: sqlite3.Connection, tables: Mapping[str, TableRows]) -> None:
    """Every table's rows in one transaction, in the order given (foreign keys first).

    Plain INSERTs with ids chosen by the caller are what makes 10,000 studies take seconds.
    """
    with transaction(conn):
        for table, (columns, rows) in tables.items():
            if not rows:
                continue
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
            conn.executemany(sql, rows)


def count_contents(conn: sqlite3.Connection) -> Contents:
    """What the store holds (not what was meant to be there)."""

    def one(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    triage = dict(conn.execute("SELECT triage, COUNT(*) FROM studies GROUP BY 1").fetchall())
    states = dict(
        conn.execute(
            "SELECT COALESCE(a.state, 'none'), COUNT(*) FROM instances i"
            " LEFT JOIN analyses a ON a.instance_ref = i.id GROUP BY 1"
        ).fetchall()
    )
    return Contents(
        studies=one("SELECT COUNT(*) FROM studies"),
        patients=one("SELECT COUNT(*) FROM patients"),
        images=one("SELECT COUNT(*) FROM instances"),
        findings=one("SELECT COUNT(*) FROM findings"),
        triage=triage,
        states=states,
    )


def lease_job(conn: sqlite3.Connection, job_id: int, owner: str, lease_s: float) -> None:
    """Lease the job `job_id` to `owner` as jobs.claim leases the next due one (a bench picks
    its own job: claim would take a seeded store's older queued jobs first)."""
    conn.execute(
        "UPDATE jobs SET state = 'running', attempts = 1, lease_owner = ?, lease_expires = ?,"
        " heartbeat_at = ?, updated_at = ? WHERE id = ?",
        (owner, time.time() + lease_s, utc_now(), utc_now(), job_id),
    )


def open_read_only(database: Path) -> sqlite3.Connection:
    """A read-only connection to a store another process writes (rows by column name)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


_IMAGES_SQL = """
SELECT i.id, i.sop_instance_uid, i.received_at, i.sop_class_uid AS sop_class,
       i.photometric, i.view_position AS view, s.modality, s.body_part,
       a.state AS analysis, a.job_ref, a.updated_at,
       (SELECT MAX(json_extract(f.result, '$.decode_ms'))
               + SUM(json_extract(f.result, '$.timing.preprocess_ms')
                     + json_extract(f.result, '$.timing.model_ms')
                     + json_extract(f.result, '$.timing.postprocess_ms'))
        FROM findings f WHERE f.job_ref = a.job_ref AND f.state = 'findings') AS in_job_ms
FROM instances i
JOIN series s ON s.id = i.series_ref
LEFT JOIN analyses a ON a.instance_ref = i.id
WHERE i.sop_instance_uid IN ({marks})
"""
_JOBS_SQL = """
SELECT id, instance_ref, kind, state, heartbeat_at, updated_at FROM jobs
WHERE instance_ref IN ({marks}) ORDER BY id
"""


@dataclass(frozen=True)
class PushedRows:
    """The store's rows for some pushed images, read in one snapshot.

    `images`: one row an image it has (its routing tags under ImageTags' names: modality,
    body_part, view, sop_class, photometric; its analysis; and in_job_ms: decode + the models
    as the worker timed them); `jobs`: every job of those images, by id.
    """

    images: list[sqlite3.Row]
    jobs: list[sqlite3.Row]


def pushed_images(conn: sqlite3.Connection, uids: Sequence[str]) -> PushedRows:
    """The rows of the images with these SOP Instance UIDs (those the store has)."""
    conn.execute("BEGIN")  # one snapshot for both queries
    try:
        images = conn.execute(_IMAGES_SQL.format(marks=_marks(uids)), uids).fetchall()
        ids = [row["id"] for row in images]
        jobs = conn.execute(_JOBS_SQL.format(marks=_marks(ids)), ids).fetchall()
    finally:
        conn.execute("COMMIT")
    return PushedRows(images, jobs)


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


# ---- `appliance bench outputs`: what reached the PACS, and when -------------------------------


@dataclass(frozen=True)
class SrDelivery:
    """One image's first SR: when its findings were committed, the SR made and acknowledged."""

    source_uid: str
    committed_at: str
    made_at: str
    sent_at: str | None


def sr_deliveries(conn: sqlite3.Connection, destination: str) -> list[SrDelivery]:
    """The first-revision SR of every analysed image queued for `destination`."""
    rows = conn.execute(
        "SELECT i.sop_instance_uid, a.updated_at, o.made_at, d.sent_at FROM deliveries d"
        " JOIN outputs o ON o.id = d.output_ref JOIN instances i ON i.id = o.instance_ref"
        " JOIN analyses a ON a.instance_ref = i.id"
        " WHERE d.destination = ? AND o.kind = 'sr' AND o.revision = 1 ORDER BY d.id",
        (destination,),
    ).fetchall()
    return [SrDelivery(r[0], r[1], r[2], r[3]) for r in rows]


def delivery_states(conn: sqlite3.Connection, destination: str) -> dict[str, int]:
    """Deliveries to `destination` counted by state."""
    rows = conn.execute(
        "SELECT state, COUNT(*) FROM deliveries WHERE destination = ? GROUP BY state",
        (destination,),
    ).fetchall()
    return {row[0]: int(row[1]) for row in rows}


def delivered(conn: sqlite3.Connection, destination: str) -> list[tuple[str, str | None, str]]:
    """(SOP Instance UID, sent_at, created_at) of every delivery to `destination`."""
    rows = conn.execute(
        "SELECT sop_instance_uid, sent_at, created_at FROM deliveries WHERE destination = ?",
        (destination,),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def unfinished_jobs(conn: sqlite3.Connection) -> int:
    """Jobs of any kind still queued or running."""
    row = conn.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")
    return int(row.fetchone()[0])
