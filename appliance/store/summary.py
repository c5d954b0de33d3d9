"""Counts for `appliance status` and, later, the UI's health page."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StoreSummary:
    patients: int
    studies: int
    instances: int
    missing_instances: int
    jobs: dict[str, int] = field(default_factory=dict)
    last_received_at: str | None = None

    @property
    def queue_depth(self) -> int:
        return self.jobs.get("queued", 0) + self.jobs.get("running", 0)


def summarize(conn: sqlite3.Connection) -> StoreSummary:
    def count(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    jobs = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    return StoreSummary(
        patients=count("SELECT COUNT(*) FROM patients"),
        studies=count("SELECT COUNT(*) FROM studies"),
        instances=count("SELECT COUNT(*) FROM instances WHERE state = 'present'"),
        missing_instances=count("SELECT COUNT(*) FROM instances WHERE state = 'missing'"),
        jobs={str(k): int(v) for k, v in jobs.items()},
        last_received_at=conn.execute("SELECT MAX(received_at) FROM instances").fetchone()[0],
    )
