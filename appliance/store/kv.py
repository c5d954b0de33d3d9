"""Small named values the roles keep between restarts (the `kv` table)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

_SELECT = "SELECT value FROM kv WHERE key = ?"


def get_or_set(conn: sqlite3.Connection, key: str, make_value: Callable[[], str]) -> str:
    """The value stored under `key`; the first caller stores `make_value()` there. Two roles
    starting at once agree on one value: the second insert is ignored, and both read back
    the row that won."""
    found = conn.execute(_SELECT, (key,)).fetchone()
    if found is None:
        conn.execute("INSERT OR IGNORE INTO kv (key, value) VALUES (?, ?)", (key, make_value()))
        found = conn.execute(_SELECT, (key,)).fetchone()
    return str(found[0])
