"""Where releases live on the box (docs/ARCHITECTURE.md, field layout), under an optional root,
and the one switch between them: `current` replaced by a rename, so the box always has one
release, the old or the new, never none."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.paths import fsync_dir


@dataclass(frozen=True)
class Layout:
    """The box's folders below `root` ('/' on a box; a throwaway folder in tests)."""

    root: Path = Path("/")

    @property
    def opt(self) -> Path:
        return self.root / "opt" / "appliance"

    @property
    def releases(self) -> Path:
        return self.opt / "releases"

    @property
    def current(self) -> Path:
        return self.opt / "current"

    @property
    def previous(self) -> Path:
        """A link to the release that was current before the last update (for rollback)."""
        return self.opt / "previous"

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "appliance"

    @property
    def config(self) -> Path:
        return self.etc / "appliance.yaml"

    @property
    def release_key(self) -> Path:
        return self.etc / "release-key.pub"

    def release(self, version: str) -> Path:
        return self.releases / version

    def program(self, version: str) -> Path:
        """The `appliance` command of one release."""
        return self.release(version) / "venv" / "bin" / "appliance"

    def current_version(self) -> str | None:
        """The release `current` points at, or None when there is none."""
        return _link_name(self.current)

    def previous_version(self) -> str | None:
        """The release that was current before the last update, if it is still installed."""
        version = _link_name(self.previous)
        return version if version and self.release(version).is_dir() else None

    def installed(self) -> list[str]:
        """Every installed release (a folder with its own environment), oldest first."""
        if not self.releases.is_dir():
            return []
        found = [p for p in self.releases.iterdir() if (p / "venv" / "bin" / "appliance").exists()]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime)]

    def switch(self, version: str) -> None:
        """Point `current` at releases/<version>: a new link under a temporary name, renamed
        over the old one (rename is atomic), then the folder synced."""
        if not self.release(version).is_dir():
            raise FileNotFoundError(f"release {version} is not installed in {self.releases}")
        _relink(self.current, version)

    def remember_previous(self, version: str) -> None:
        _relink(self.previous, version)

    def remove(self, version: str) -> None:
        """Delete an installed release that is not current (a failed update's)."""
        if version == self.current_version():
            raise ValueError(f"release {version} is the current one and is not removed")
        shutil.rmtree(self.release(version), ignore_errors=True)


def _link_name(link: Path) -> str | None:
    try:
        target = os.readlink(link)
    except OSError:
        return None
    return Path(target).name or None


def _relink(link: Path, version: str) -> None:
    temporary = link.with_name(f".{link.name}-{uuid.uuid4().hex}")
    os.symlink(Path("releases") / version, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
