"""The update's audit rows (actor "update") in the store, and the database backup and restore.

The updater runs from the old release while the new one may migrate the database under it, so
it never opens the store through `Store` (which would refuse a newer schema): it writes audit
rows on a plain connection, and the audit table is the same in every version. A restore puts
back the database as it was before the update, which would lose the rows written since: they
are kept here and written again after it.

The updater runs as root on a box whose roles run as the `appliance` user: files SQLite makes
beside the database (its -wal and -shm) are given the database's owner, or the roles could no
longer open it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.store import audit
from appliance.store.backup import copy_database
from appliance.store.db import connect, utc_now

log = logging.getLogger(__name__)
ACTOR = "update"
_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass
class Journal:
    """Writes each step as an audit row and remembers it, to write it again after a restore."""

    database: Path
    subject: str  # "0.1.0 -> 0.1.1"
    rows: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def step(self, action: str, **detail: Any) -> None:
        """One audit row `update.<action>`; a store that cannot be written is logged, not fatal
        (the update must still be able to switch back)."""
        at = utc_now()
        self.rows.append((at, action, detail))
        log.info("update %s: %s %s", self.subject, action, detail or "")
        self._write([(at, action, detail)])

    def write_again(self, since: int) -> None:
        """Write rows[since:] again (they were lost with the restore), with their first time."""
        self._write(self.rows[since:], again=True)

    def _write(self, rows: list[tuple[str, str, dict[str, Any]]], again: bool = False) -> None:
        if not self.database.exists():
            return  # a box without a store yet: the printed lines are the record
        try:
            conn = connect(self.database)
            try:
                for at, action, detail in rows:
                    extra = {"first_at": at} if again else {}
                    audit.append(conn, ACTOR, f"update.{action}", self.subject, **detail, **extra)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            log.warning("update: could not write the audit row: %s", exc)
        give_owner_of(self.database)


def back_up(database: Path, dest: Path) -> None:
    """A consistent copy of the database (SQLite's online backup) at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    copy_database(database, dest)
    give_owner_of(database, dest)


def restore(backup: Path, database: Path) -> None:
    """Put the database back as it was in `backup`, through SQLite's backup API into the live
    file: every page and the schema version replaced in one locked write, the WAL handled by
    SQLite, and the file keeps its owner and its inode."""
    source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True, timeout=30.0)
    try:
        target = connect(database)
        try:
            source.backup(target)
            target.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            target.close()
    finally:
        source.close()
    give_owner_of(database)


def schema_version(database: Path) -> int:
    """The schema version (migrations applied) of a database file, read without changing it."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30.0)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def give_owner_of(database: Path, *others: Path) -> None:
    """Files beside `database` (and `others`) get its owner; only root can, and needs to."""
    if os.geteuid() != 0:
        return
    # The data folder belongs to the appliance user: a name there may be a link planted to
    # make root hand over another file. Only plain files are given, and links never followed.
    try:
        owner = database.lstat()
    except OSError:
        return
    if not stat.S_ISREG(owner.st_mode):
        return
    for path in (*(database.with_name(database.name + s) for s in _SIDE_FILES), *others):
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
        except FileNotFoundError:
            continue
