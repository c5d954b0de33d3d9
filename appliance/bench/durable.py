"""The machine's durable-write limit: how fast plain Python can put small files safely on disk.

This is the ceiling for a receiver that answers a C-STORE only once the file is on disk: no
network, no DICOM, no database; just write, fsync and rename for each file.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path


def durable_write_rate(sources: Sequence[Path], folder: Path, *, sync_folder: bool) -> float:
    """Files per second writing each source's bytes to a new file in `folder` (then removed).

    Each file is written under a temporary name, fsync'd and renamed; with `sync_folder`, the
    folder is fsync'd after each rename as well, as the store does.
    """
    payloads = [path.read_bytes() for path in sources]
    folder.mkdir(parents=True)
    try:
        directory = os.open(folder, os.O_RDONLY)
        try:
            start = time.perf_counter()
            for index, payload in enumerate(payloads):
                _write_durably(folder / f"{index:06d}", payload)
                if sync_folder:
                    os.fsync(directory)
            elapsed = time.perf_counter() - start
        finally:
            os.close(directory)
    finally:
        shutil.rmtree(folder)
    return len(payloads) / elapsed


def _write_durably(path: Path, payload: bytes) -> None:
    partial = path.with_suffix(".part")
    with partial.open("wb") as out:
        out.write(payload)
        out.flush()
        os.fsync(out.fileno())
    os.rename(partial, path.with_suffix(".dcm"))
