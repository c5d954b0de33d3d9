"""Copies of the database that stay consistent while the roles write to it.

`copy_database` uses SQLite's online backup API: it copies pages under a read transaction, so
a copy taken while images arrive is a snapshot of one moment, and the WAL is included.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.paths import move_durably


def copy_database(source: Path, dest: Path) -> None:
    """Write a consistent copy of the SQLite file `source` to `dest` (replaced if present),
    synced to disk before it is renamed into place, so a power cut leaves the old copy or the
    new one, never half of it."""
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30.0)
    try:
        out = sqlite3.connect(partial)
        try:
            src.backup(out, pages=1024)
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside
        finally:
            out.close()
    finally:
        src.close()
    move_durably(partial, dest)
