"""Where the appliance keeps its data and caches.

Order: the config file, then systemd's $STATE_DIRECTORY / $CACHE_DIRECTORY, then `./var/` under
the current directory (the quick start's default).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Settings


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    cache_dir: Path
    live_dir: Path = Path("/dev/shm/appliance")  # see live_dir_for

    @property
    def database(self) -> Path:
        return self.data_dir / "appliance.sqlite3"

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    @property
    def doorbell(self) -> Path:
        """The worker's wake-up socket (see store.doorbell)."""
        return self.data_dir / "worker.bell"

    @property
    def outputs(self) -> Path:
        """The DICOM objects the box made for the clinic's record (SR, heatmaps, PDF)."""
        return self.data_dir / "outputs"

    @property
    def sender_bell(self) -> Path:
        """The sender's wake-up socket: rung when deliveries are queued."""
        return self.data_dir / "sender.bell"

    @property
    def results(self) -> Path:
        """Heatmaps, overlays and masks stored beside findings."""
        return self.data_dir / "results"


def resolve_paths(settings: Settings, environ: dict[str, str] | None = None) -> Paths:
    """Pick the data and cache folders for these settings and environment."""
    env = os.environ if environ is None else environ
    data = settings.storage.data_dir or _from_env(env, "STATE_DIRECTORY") or Path("var/data")
    cache = settings.storage.cache_dir or _from_env(env, "CACHE_DIRECTORY") or Path("var/cache")
    live = settings.capture.live_dir or _from_env(env, "RUNTIME_DIRECTORY") or _shm_for(data)
    return Paths(data_dir=data.absolute(), cache_dir=cache.absolute(), live_dir=live.absolute())


def _shm_for(data: Path) -> Path:
    """A RAM-backed folder of its own for each data folder (two appliances on one box, or the
    tests, must not share live frames)."""
    tag = hashlib.sha256(str(data.absolute()).encode()).hexdigest()[:12]
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else data.absolute().parent
    return base / f"appliance-{tag}"


def _from_env(env: os._Environ[str] | dict[str, str], name: str) -> Path | None:
    # systemd may pass several colon-separated folders; the first one is ours.
    value = env.get(name, "").split(":")[0]
    return Path(value) if value else None


def write_atomically(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half.

    The partial file has a unique name beside the target (same file system, so the rename is
    atomic), which lets two writers of the same target run at once: the last rename wins.
    `durable` also fsyncs the file and its folder, for files that must survive a power cut
    (manifests, checksums); caches and live frames skip it.
    """
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        partial.write_bytes(data)
        if durable:
            fsync_file(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def move_durably(source: Path, target: Path) -> None:
    """Rename a finished file into place so that it survives a power cut (same file system)."""
    fsync_file(source)
    os.replace(source, target)
    fsync_dir(target.parent)


def fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
