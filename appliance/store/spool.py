"""The spool folder: where accepted DICOM files live, written so that a power cut loses nothing.

Incoming bytes go to `tmp/` first; `commit()` fsyncs the file, renames it into `objects/` and
fsyncs the folder, so a file is either wholly present under its final name or not at all. Names
are random: no value from a DICOM file ever becomes part of a path.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from appliance.errors import OutOfSpaceError
from appliance.paths import fsync_dir, fsync_file

_CHUNK = 1 << 20


class FileDigest(NamedTuple):
    size: int
    sha256: str


@dataclass(frozen=True)
class CommittedFile:
    name: str  # relative to the objects folder, e.g. "3f/3fa2...dcm"
    size: int
    sha256: str


class Spool:
    """The folder of accepted files and its incoming area on the same filesystem."""

    def __init__(self, root: Path, free_space_floor_bytes: int = 0) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.objects = root / "objects"
        self.floor = free_space_floor_bytes
        for folder in (self.root, self.tmp, self.objects):
            folder.mkdir(parents=True, exist_ok=True)

    def new_tmp_path(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def path_of(self, name: str) -> Path:
        """The absolute path of a committed file name as recorded in the store."""
        parts = name.split("/")
        if len(parts) != 2 or not all(p and p.replace(".", "").isalnum() for p in parts):
            raise ValueError(f"not a spool file name: {name!r}")
        return self.objects / parts[0] / parts[1]

    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def check_space(self, incoming_bytes: int = 0) -> None:
        """Raise OutOfSpaceError if storing `incoming_bytes` would cross the free-space floor."""
        free = self.free_bytes()
        if free - incoming_bytes < self.floor:
            incoming = f" less {incoming_bytes / 2**20:.1f} MiB incoming" if incoming_bytes else ""
            raise OutOfSpaceError(
                f"free space {free // 2**20} MiB{incoming} is under the floor of "
                f"{self.floor // 2**20} MiB (storage.free_space_floor_mb)"
            )

    def commit(self, tmp_path: Path, digest: FileDigest | None = None) -> CommittedFile:
        """Make `tmp_path` durable under a new name in `objects/`; return what was stored.

        `digest` is the file's, when the caller has already computed it.
        """
        size, sha256 = digest or file_digest(tmp_path)
        fsync_file(tmp_path)
        token = uuid.uuid4().hex
        folder = self.objects / token[:2]
        if not folder.exists():
            folder.mkdir(exist_ok=True)
            fsync_dir(self.objects)
        os.replace(tmp_path, folder / f"{token}.dcm")
        fsync_dir(folder)
        return CommittedFile(name=f"{token[:2]}/{token}.dcm", size=size, sha256=sha256)

    def remove(self, name: str) -> None:
        self.path_of(name).unlink(missing_ok=True)

    def quarantine(self, name: str) -> str:
        """Move a committed file that cannot be read aside, keeping it for inspection."""
        folder = self.root / "quarantine"
        folder.mkdir(exist_ok=True)
        target = folder / self.path_of(name).name
        os.replace(self.path_of(name), target)
        fsync_dir(folder)
        return f"quarantine/{target.name}"

    def committed_names(self) -> set[str]:
        return {f"{p.parent.name}/{p.name}" for p in self.objects.glob("*/*.dcm")}

    def sweep_tmp(self, older_than_s: float) -> list[Path]:
        """Delete incoming files untouched for `older_than_s`: transfers that never finished."""
        cutoff = time.time() - older_than_s
        removed = []
        for path in self.tmp.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue  # finished or removed by another thread meanwhile
        return removed


def file_digest(path: Path) -> FileDigest:
    """Size and SHA-256 of a file: how the store tells a re-send from a changed image."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(size, digest.hexdigest())
