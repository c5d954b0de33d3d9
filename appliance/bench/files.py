"""The file sets the ingest benchmark pushes: synthetic, deterministic, no patient data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.samples import write_sample

SMALL_SIZE = 128  # 128 x 128 16-bit CT: about 33 kB a file
LARGE_SIZE = 2048  # 2048 x 2048 16-bit CR: about 8.4 MB a file
US_ROWS, US_COLUMNS = 480, 640  # RGB ultrasound frames: 0.92 MB each


@dataclass(frozen=True)
class FileSet:
    """Files sent together, in this order."""

    name: str
    description: str
    paths: tuple[Path, ...]
    total_bytes: int

    @classmethod
    def of(cls, name: str, description: str, paths: Sequence[Path]) -> FileSet:
        return cls(name, description, tuple(paths), sum(p.stat().st_size for p in paths))

    @property
    def megabytes(self) -> float:
        """Size in MB (10^6 bytes), the unit every figure of the benchmark uses."""
        return self.total_bytes / 1e6

    @property
    def count(self) -> int:
        return len(self.paths)

    def split(self, parts: int) -> list[tuple[Path, ...]]:
        """The files dealt round-robin into `parts` non-empty groups, one per sender."""
        if not 1 <= parts <= self.count:
            raise ValueError(f"cannot split {self.count} files among {parts} senders")
        return [self.paths[i::parts] for i in range(parts)]


def make_small_set(folder: Path, count: int) -> FileSet:
    """`count` small CT-like images, each a distinct instance."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        write_sample(folder / f"ct{i:06d}.dcm", "ct", seed=i, rows=SMALL_SIZE, columns=SMALL_SIZE)
        for i in range(count)
    ]
    description = f"{count} x {SMALL_SIZE}x{SMALL_SIZE} 16-bit CT"
    return FileSet.of("small", description, paths)


def make_large_set(folder: Path, radiographs: int, us_frames: int) -> FileSet:
    """`radiographs` full-size CR images plus one multi-frame ultrasound of `us_frames` frames."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        write_sample(folder / f"cr{i:03d}.dcm", "cr", seed=i, rows=LARGE_SIZE, columns=LARGE_SIZE)
        for i in range(radiographs)
    ]
    description = f"{radiographs} x {LARGE_SIZE}x{LARGE_SIZE} 16-bit CR"
    if us_frames > 0:
        paths.append(_multiframe(folder / "us-multiframe.dcm", us_frames, "bench-large"))
        description += f" + 1 US {_frames(us_frames)}"
    return FileSet.of("large", description, paths)


def make_memory_object(folder: Path, frames: int) -> FileSet:
    """One big multi-frame ultrasound, for the receiver's memory while it streams in."""
    folder.mkdir(parents=True, exist_ok=True)
    path = _multiframe(folder / "us-big.dcm", frames, "bench-memory")
    return FileSet.of("memory", f"1 US {_frames(frames)}", [path])


def _frames(frames: int) -> str:
    return f"multi-frame, {frames} frames {US_COLUMNS}x{US_ROWS} RGB"


def _multiframe(path: Path, frames: int, study_key: str) -> Path:
    return write_sample(
        path,
        "us-multiframe",
        seed=0,
        rows=US_ROWS,
        columns=US_COLUMNS,
        frames=frames,
        study_key=study_key,
    )
