"""Pictures stored beside findings (heatmaps, overlays, masks), written to survive a power cut.

Each file is written under a random name in `tmp/`, fsync'd and renamed into a two-letter
sub-folder; the folders are fsync'd once per batch. The worker writes a job's files before the
transaction that records them, so a crash leaves at most unreferenced files, never a finding
whose picture is missing; `sweep_unreferenced` removes such leftovers.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from appliance.paths import fsync_dir


class ResultFiles:
    """A results folder: `xx/<random><suffix>` files referenced from a table (pictures from
    `artifacts`, DICOM objects for the clinic's record from `outputs`)."""

    def __init__(self, root: Path, suffix: str = ".png") -> None:
        self.root = root  # created by the first write: a receiver-only box never has one
        self.tmp = root / "tmp"
        self.suffix = suffix

    def write_all(self, contents: Sequence[bytes]) -> list[str]:
        """Store each item durably; return their names in order."""
        suffix = self.suffix
        if not contents:
            return []
        self.tmp.mkdir(parents=True, exist_ok=True)
        names: list[str] = []
        folders = set()
        partial = self.tmp / "none.part"
        try:
            for data in contents:
                token = uuid.uuid4().hex
                partial = self.tmp / f"{token}.part"
                with partial.open("wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                folder = self.root / token[:2]
                if not folder.exists():
                    folder.mkdir(exist_ok=True)
                    fsync_dir(self.root)
                os.replace(partial, folder / f"{token}{suffix}")
                folders.add(folder)
                names.append(f"{token[:2]}/{token}{suffix}")
            for folder in folders:
                fsync_dir(folder)
        except OSError:
            # A full disk: leave nothing behind that would keep it full (nothing refers to
            # these files yet); the caller retries the whole set later.
            partial.unlink(missing_ok=True)
            self.remove_all(names)
            raise
        return names

    def path_of(self, name: str) -> Path:
        """The absolute path of a stored name; refuses anything that is not one of ours."""
        parts = name.split("/")
        if len(parts) != 2 or not all(p and p.replace(".", "").isalnum() for p in parts):
            raise ValueError(f"not a result file name: {name!r}")
        return self.root / parts[0] / parts[1]

    def remove_all(self, names: Iterable[str]) -> None:
        for name in names:
            self.path_of(name).unlink(missing_ok=True)

    def sweep_unreferenced(self, referenced: set[str], older_than_s: float = 3600.0) -> int:
        """Delete files no finding refers to, left by a crash before their commit."""
        if not self.root.exists():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for path in [*self.root.glob(f"*/*{self.suffix}"), *self.tmp.glob("*.part")]:
            name = f"{path.parent.name}/{path.name}"
            if name in referenced or path.stat().st_mtime >= cutoff:
                continue
            path.unlink(missing_ok=True)
            removed += 1
        return removed
