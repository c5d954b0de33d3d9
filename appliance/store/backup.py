"""Backups of the store that stay consistent while the roles write to it, and their restore.

A backup is a folder `backup-<UTC time>/` beside the older ones (`backup.folder`, by default
`<data folder>/backups`) holding:

- `appliance.sqlite3`: a copy made with SQLite's online backup API (`copy_database`), a
  snapshot of one moment taken while images arrive;
- the files that copy names, under the same relative paths as in the data folder: the spool's
  received images (`spool/objects/`), the objects made for the clinic's record (`outputs/`)
  and the pictures beside findings (`results/`). Files are never rewritten under their name, so
  one that the previous backup already holds is hard-linked from it, and nightly backups to
  the same disk cost only what arrived since;
- `manifest.json`: the software version, the schema, counts, and the SHA-256 of the database
  and of every file.

The database is copied first and only the files it names are taken afterwards, so an image
that arrives during the backup is simply not in it. A backup is written under a `.partial`
name and renamed when complete; older ones beyond `backup.keep` are removed only after a new
one succeeded. `restore_backup` checks a backup (integrity check, every file with its hash),
refuses while the roles run, puts the current database aside and copies the backup's
database and files into the data folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.errors import StoreError
from appliance.paths import Paths, fsync_dir, move_durably, write_atomically
from appliance.store import audit
from appliance.store.db import MIGRATIONS, transaction, utc_now
from appliance.store.status import role_states
from appliance.store.store import Store

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATABASE = "appliance.sqlite3"
FORMAT = 1
LAST_BACKUP_KEY = "backup.last"  # kv: the newest backup's outcome, for the health page
FILES_LOCK = ".files.lock"  # held by a backup or a restore; retention waits its turn
_NAME = re.compile(r"^(backup-\d{8}T\d{6}Z)(?:-(\d+))?\Z")
_CHUNK = 1 << 20


class BackupError(StoreError):
    """A backup could not be made, checked or restored; the message says why."""


def copy_database(source: Path, dest: Path) -> None:
    """Write a consistent copy of the SQLite file `source` to `dest` (replaced if present),
    synced to disk before it is renamed into place, so a power cut leaves the old copy or the
    new one, never half of it.

    All pages are copied in one step, under one read transaction: copied in slices, SQLite
    starts again from the first page whenever another process writes meanwhile, which while
    images keep arriving could go on for ever. In WAL mode the read never holds up a writer.
    """
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30.0)
    try:
        out = sqlite3.connect(partial)
        try:
            src.backup(out, pages=-1)
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside
        finally:
            out.close()
    finally:
        src.close()
    move_durably(partial, dest)


# --- what a backup holds ----------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    """A backup made: where, what it holds and what it cost."""

    folder: Path
    manifest: dict[str, Any]
    copied: int  # files copied from the data folder
    copied_bytes: int
    linked: int  # files hard-linked from the previous backup
    removed: list[Path] = field(default_factory=list)  # older backups removed after it

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.manifest["counts"]
        return counts


def default_folder(store: Store) -> Path:
    """`backup.folder`, or `backups/` in the data folder when it is not set."""
    return store.settings.backup.folder or store.paths.data_dir / "backups"


def named_files(conn: sqlite3.Connection) -> dict[str, str]:
    """Every file a database names, relative to the data folder, with the SHA-256 the store
    recorded for it (empty where it records none)."""
    files = {
        f"spool/objects/{row[0]}": str(row[1])
        for row in conn.execute("SELECT file_name, sha256 FROM instances WHERE state = 'present'")
    }
    files.update({f"outputs/{row[0]}": "" for row in conn.execute("SELECT file_name FROM outputs")})
    files.update(
        {f"results/{row[0]}": "" for row in conn.execute("SELECT file_name FROM artifacts")}
    )
    return files


def _safe_relative(name: str) -> Path:
    """A relative path from a manifest or a database, refused if it could leave its folder."""
    path = Path(name)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        raise BackupError(f"not a file name a backup may hold: {name!r}")
    return path


# --- making one -------------------------------------------------------------------------------


def make_backup(store: Store, folder: Path | None = None, actor: str = "system") -> BackupResult:
    """Back the store up into a new folder under `folder` (default: `default_folder`), keep
    the newest `backup.keep`, and record the outcome (kv row and audit), failed or not."""
    target_root = (folder or default_folder(store)).absolute()
    try:
        result = _make(store, target_root)
    except (OSError, sqlite3.Error, BackupError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        _record(store, actor, target_root, ok=False, reason=reason)
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"the backup into {target_root} failed: {reason}") from exc
    _record(store, actor, result.folder, ok=True, counts=result.counts, removed=result.removed)
    return result


def _make(store: Store, root: Path) -> BackupResult:
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".backup.lock", exclusive=True, what="another backup into this folder"):
        previous = newest_backup(root)
        name = _new_name(root)
        partial = root / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            with files_lock(store.paths, exclusive=False):
                copier = _Copier(store.paths.data_dir, partial, previous)
                manifest = _fill(store, partial, copier)
            write_atomically(partial / MANIFEST, _dumps(manifest), durable=True)
            final = root / name
            os.replace(partial, final)
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        removed = prune(root, store.settings.backup.keep)
    return BackupResult(final, manifest, copier.copied, copier.copied_bytes, copier.linked, removed)


def _fill(store: Store, partial: Path, copier: _Copier) -> dict[str, Any]:
    """The database first, then the files that copy names; the manifest."""
    db_copy = partial / DATABASE
    copy_database(store.paths.database, db_copy)
    conn = sqlite3.connect(db_copy)
    try:
        vanished = []
        for name, recorded in sorted(named_files(conn).items()):
            if not copier.take(name, recorded):
                vanished.append(name)
        _forget_vanished(conn, vanished)
        counts = _counts(conn, copier)
        schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()
    return {
        "format": FORMAT,
        "app_version": __version__,
        "created_at": utc_now(),
        "source": str(store.paths.data_dir),
        "schema_version": schema,
        "database": {
            "name": DATABASE,
            "size": db_copy.stat().st_size,
            "sha256": file_sha256(db_copy),
        },
        "counts": counts,
        "vanished": vanished,
        "damaged": copier.damaged,
        "files": copier.hashes,
    }


def _forget_vanished(conn: sqlite3.Connection, vanished: list[str]) -> None:
    """Images removed or replaced between the database copy and their file copy (retention,
    a corrected re-send) are missing in the backup's database: it names only what it holds."""
    prefix = "spool/objects/"
    names = [(n[len(prefix) :],) for n in vanished if n.startswith(prefix)]
    if names:
        conn.executemany("UPDATE instances SET state = 'missing' WHERE file_name = ?", names)
        conn.commit()


def _counts(conn: sqlite3.Connection, copier: _Copier) -> dict[str, int]:
    def count(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    by_folder = {"spool": 0, "outputs": 0, "results": 0}
    for name in copier.hashes:
        by_folder[name.split("/", 1)[0]] += 1
    return {
        "instances": count("SELECT COUNT(*) FROM instances WHERE state = 'present'"),
        "studies": count("SELECT COUNT(*) FROM studies"),
        "spool_files": by_folder["spool"],
        "outputs": by_folder["outputs"],
        "results": by_folder["results"],
        "bytes": copier.total_bytes,
    }


class _Copier:
    """Copies named files into a new backup, or hard-links them from the previous one."""

    def __init__(self, data_dir: Path, dest: Path, previous: Path | None) -> None:
        self.data_dir = data_dir
        self.dest = dest
        self.previous = previous
        self.previous_hashes = _previous_hashes(previous)
        self.hashes: dict[str, str] = {}
        self.damaged: list[str] = []
        self.copied = self.copied_bytes = self.linked = self.total_bytes = 0
        self._folders: set[Path] = set()

    def take(self, name: str, recorded: str) -> bool:
        """Put `name` into the backup; False when it is no longer in the data folder."""
        relative = _safe_relative(name)
        target = self.dest / relative
        if target.parent not in self._folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(target.parent)
        known = self.previous_hashes.get(name)
        if known and self.previous and self._link(self.previous / relative, target):
            digest = known
        else:
            source = self.data_dir / relative
            try:
                digest = copy_file(source, target)
            except FileNotFoundError:
                return False
            self.copied += 1
            self.copied_bytes += target.stat().st_size
        if recorded and digest != recorded:
            self.damaged.append(name)  # kept as it is; the manifest says so
        self.hashes[name] = digest
        self.total_bytes += target.stat().st_size
        return True

    def _link(self, source: Path, target: Path) -> bool:
        try:
            os.link(source, target)
        except OSError:  # not there, another file system, too many links: copy instead
            return False
        self.linked += 1
        return True


def _previous_hashes(previous: Path | None) -> dict[str, str]:
    if previous is None:
        return {}
    try:
        files: dict[str, str] = read_manifest(previous)["files"]
    except BackupError:
        return {}
    return files


def copy_file(source: Path, target: Path) -> str:
    """Copy `source` to `target` durably (synced, then renamed into place); its SHA-256."""
    digest = hashlib.sha256()
    partial = target.with_name(f".{target.name}.partial")
    try:
        with source.open("rb") as src, partial.open("wb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def _new_name(root: Path) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name, n = f"backup-{stamp}", 0
    while (root / name).exists():
        n += 1
        name = f"backup-{stamp}-{n}"
    return name


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode()


# --- the backups in a folder ------------------------------------------------------------------


def backups_in(root: Path) -> list[Path]:
    """The complete backups in `root`, oldest first (names sort by time)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: _sort_key(p.name))


def _sort_key(name: str) -> tuple[str, int]:
    """By time, then by the number added to a second backup within the same second."""
    match = _NAME.match(name)
    assert match is not None  # backups_in lists matching names only
    return (match.group(1), int(match.group(2) or 0))


def newest_backup(root: Path) -> Path | None:
    found = backups_in(root)
    return found[-1] if found else None


def prune(root: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` complete backups, and backups left half-written by a
    crash; return what was removed."""
    removed = []
    for old in backups_in(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
        removed.append(old)
    for partial in root.glob(".backup-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
    return removed


# --- recording the outcome --------------------------------------------------------------------


def _record(store: Store, actor: str, where: Path, ok: bool, **detail: Any) -> None:
    """The outcome in kv (the health page's "last backup") and the audit trail. A store that
    cannot be written now must not hide the backup's own outcome: logged instead."""
    entry = {"at": utc_now(), "folder": str(where), "ok": ok, **detail}
    action = "backup.made" if ok else "backup.failed"
    try:
        with transaction(store.conn):
            store.conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                " SET value = excluded.value",
                (LAST_BACKUP_KEY, json.dumps(entry, default=str)),
            )
            audit.append(store.conn, actor, action, f"backup:{where.name}", **entry)
    except sqlite3.Error as exc:
        log.error("could not record the backup's outcome in the store: %s", exc)


def last_backup(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The newest backup's outcome: at, folder, ok, and counts or reason; None: never."""
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (LAST_BACKUP_KEY,)).fetchone()
    if row is None:
        return None
    entry: dict[str, Any] = json.loads(row[0])
    return entry


# --- checking one -----------------------------------------------------------------------------


def read_manifest(backup: Path) -> dict[str, Any]:
    """A backup's manifest, or BackupError saying why it cannot be read."""
    path = backup / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{backup} is not a backup: it has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"the manifest of {backup} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(f"{path} is not a backup manifest this software reads")
    return data


def verify_backup(backup: Path) -> dict[str, Any]:
    """Check a backup completely: its database passes SQLite's integrity check and matches
    its hash and counts, and every file is present with its hash. Its manifest, or
    BackupError naming the first problem."""
    manifest = read_manifest(backup)
    db = backup / DATABASE
    if not db.is_file():
        raise BackupError(f"{backup} has no database ({DATABASE})")
    if file_sha256(db) != manifest["database"]["sha256"]:
        raise BackupError(f"the database in {backup} differs from its manifest (damaged?)")
    _check_database(db, manifest)
    for name, expected in manifest["files"].items():
        path = backup / _safe_relative(name)
        if not path.is_file():
            raise BackupError(f"{backup} lacks {name}, which its database names")
        if file_sha256(path) != expected:
            raise BackupError(f"{name} in {backup} differs from its manifest (damaged?)")
    return manifest


def _check_database(db: Path, manifest: dict[str, Any]) -> None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"the database in {db.parent} is damaged: {'; '.join(problems[:3])}")
        names = set(named_files(conn))
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the database in {db.parent} cannot be read: {exc}") from exc
    finally:
        conn.close()
    held = set(manifest["files"])
    # Objects removed between the database copy and their own copy are left out, and listed.
    if not held <= names or names - held - set(manifest["vanished"]):
        raise BackupError(f"the files of {db.parent} differ from those its database names")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- restoring one ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    manifest: dict[str, Any]
    aside: Path | None  # where the database it replaced was put; None: there was none
    copied: int  # files copied from the backup
    kept: int  # files already in the data folder with the right content


def restore_backup(backup: Path, paths: Paths, actor: str = "cli") -> RestoreResult:
    """Replace the data folder's database and files with a backup's, keeping the current
    database aside in `before-restore-<time>/`. Refused while any role runs; roles that start
    meanwhile wait (the restore holds the lock every store takes to migrate)."""
    manifest = verify_backup(backup)
    if int(manifest["schema_version"]) > len(MIGRATIONS):
        raise BackupError(
            f"the backup has schema version {manifest['schema_version']}, newer than this "
            f"software ({len(MIGRATIONS)}): restore it with the release that made it"
            f" ({manifest.get('app_version', 'unknown')})"
        )
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    with (
        _locked(paths.data_dir / ".migrate.lock", exclusive=True, what="a role starting"),
        files_lock(paths, exclusive=True),
    ):
        _refuse_if_running(paths.database)
        aside = _put_aside(paths)
        copied = kept = 0
        for name, expected in manifest["files"].items():
            if _restore_file(backup / name, paths.data_dir / _safe_relative(name), expected):
                copied += 1
            else:
                kept += 1
        _restore_database(backup / DATABASE, paths.database)
        _audit_restore(paths.database, actor, backup, aside, copied, kept)
    return RestoreResult(manifest, aside, copied, kept)


def _refuse_if_running(database: Path) -> None:
    if not database.exists():
        return
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30.0)
    conn.row_factory = sqlite3.Row
    try:
        running = [s.role for s in role_states(conn) if s.running]
    except sqlite3.DatabaseError:
        running = []  # a database too damaged to read is what a restore is for
    finally:
        conn.close()
    if running:
        raise BackupError(
            f"{', '.join(running)} {'is' if len(running) == 1 else 'are'} running: stop the "
            "roles first (systemctl stop 'appliance-*'), then restore"
        )


def _put_aside(paths: Paths) -> Path | None:
    db = paths.database
    if not db.exists():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = paths.data_dir / f"before-restore-{stamp}"
    aside.mkdir(exist_ok=True)
    for suffix in ("", "-wal", "-shm"):  # a database and its write-ahead log go together
        part = db.with_name(db.name + suffix)
        if part.exists():
            os.replace(part, aside / part.name)
    fsync_dir(aside)
    fsync_dir(paths.data_dir)
    return aside


def _restore_file(source: Path, target: Path, expected: str) -> bool:
    """Copy a backed-up file into the data folder unless the same content is there; True
    when it was copied."""
    if target.is_file() and file_sha256(target) == expected:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy_file(source, target) != expected:
        raise BackupError(f"{source} changed while it was restored")
    fsync_dir(target.parent)
    return True


def _restore_database(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".restoring")
    shutil.copyfile(source, partial)
    move_durably(partial, target)


def _audit_restore(
    database: Path, actor: str, backup: Path, aside: Path | None, copied: int, kept: int
) -> None:
    conn = sqlite3.connect(database, timeout=30.0)
    try:
        audit.append(
            conn,
            actor,
            "backup.restored",
            f"backup:{backup.name}",
            folder=str(backup),
            previous_database=str(aside) if aside else None,
            copied=copied,
            kept=kept,
        )
        conn.commit()
    finally:
        conn.close()


# --- locks ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool, what: str, wait: bool = True) -> Iterator[None]:
    with path.open("a") as handle:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(handle, flags if wait else flags | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"busy: {what} holds {path}") from None
        yield


@contextlib.contextmanager
def files_lock(paths: Paths, exclusive: bool, wait: bool = True) -> Iterator[None]:
    """The data folder's files lock: a backup holds it shared while it copies files (so
    retention removes nothing it is about to take), retention and restore exclusively.
    BackupError when `wait` is false and another holds it."""
    with _locked(paths.data_dir / FILES_LOCK, exclusive, "a backup or a restore", wait):
        yield
