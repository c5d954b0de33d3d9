"""The append-only audit trail: who did what, to what, and when (UTC)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from appliance.store.db import utc_now


def append(conn: sqlite3.Connection, actor: str, action: str, subject: str, **detail: Any) -> None:
    """Add one audit row inside the caller's transaction (or on its own when none is open)."""
    conn.execute(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
        (utc_now(), actor, action, subject, json.dumps(detail, sort_keys=True, default=str)),
    )


def recent(
    conn: sqlite3.Connection, action: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest audit rows first, optionally of one action."""
    sql = "SELECT id, at, actor, action, subject, detail FROM audit"
    params: tuple[Any, ...] = ()
    if action is not None:
        sql += " WHERE action = ?"
        params = (action,)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    return [{**dict(row), "detail": json.loads(row["detail"])} for row in rows]
