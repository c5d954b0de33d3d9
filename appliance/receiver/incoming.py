"""The files pynetdicom streams incoming C-STORE datasets into.

pynetdicom writes each dataset to a `NamedTemporaryFile` as its fragments arrive. If the disk
fills meanwhile, its write raises inside the association's reactor thread, which dies without
answering: the modality waits for a timeout and the partial file stays on a full disk. Here the
files live in the spool's tmp folder (same filesystem, so the final rename is atomic), a failed
write is remembered and its partial bytes dropped at once, and the C-STORE handler answers 0xA700.
The same happens to a dataset longer than `receiver.max_dataset_mb`: its bytes past the limit are
never written, so a sender cannot fill the disk with one endless object.

The free-space floor is checked before every write against what is still to come: the size the
image announces (its Pixel Data length, see announced.py) less what is written already, or just
this piece when nothing is announced. A transfer that would leave less than the floor stops
being written at that point (its partial bytes dropped) and is answered 0xA700 at its end.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages

from appliance.errors import OutOfSpaceError
from appliance.receiver.announced import AnnouncedSize


class IncomingFile:
    """A write-only file that records the first write error instead of raising it."""

    def __init__(self, path: Path, failures: IncomingFiles) -> None:
        self.name = str(path)
        self.file = self  # pynetdicom calls `.file.flush()`
        self._raw = open(path, "wb", buffering=0)  # noqa: SIM115 - pynetdicom closes it
        self._failures = failures
        self._failed = False
        self._size = 0
        self._announced = AnnouncedSize()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        if not self._failed:
            self._check(view)
        self._size += len(view)
        while view and not self._failed:
            try:
                written = self._raw.write(view) or 0
            except OSError as exc:
                self._fail(exc)
                break
            view = view[written:]
        return len(data)

    def _check(self, view: memoryview) -> None:
        """Stop writing a dataset too large, or one whose rest would cross the floor."""
        self._announced.feed(view)
        expected = max(self._size + len(view), self._announced.total or 0)
        if expected > self._failures.max_bytes:
            self._fail(TooLargeError(f"more than {self._failures.max_bytes} bytes"))
            return
        try:
            self._failures.check_room(expected - self._size)
        except OutOfSpaceError as exc:
            self._fail(exc)

    def flush(self) -> None:
        """Writes are unbuffered; durability comes later from the spool's fsync."""

    def close(self) -> None:
        self._raw.close()

    def _fail(self, exc: Exception) -> None:
        self._failed = True
        self._failures.record(self.name, exc)
        os.ftruncate(self._raw.fileno(), 0)  # give the space back while the transfer goes on


class TooLargeError(Exception):
    """The incoming dataset is longer than `receiver.max_dataset_mb`."""


class IncomingFiles:
    """Creates incoming files where `new_path` says and remembers which ones failed to write
    (or grew past `max_bytes`)."""

    def __init__(
        self,
        new_path: Callable[[], Path],
        max_bytes: int,
        check_room: Callable[[int], None] = lambda incoming_bytes: None,
    ) -> None:
        """`check_room(n)` raises OutOfSpaceError when `n` more bytes would cross the floor."""
        self._new_path = new_path
        self.max_bytes = max_bytes
        self.check_room = check_room
        self._errors: dict[str, Exception] = {}
        self._lock = threading.Lock()

    def open(self, *args: Any, **kwargs: Any) -> IncomingFile:
        """Stands in for NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")."""
        return IncomingFile(self._new_path(), self)

    def record(self, name: str, exc: Exception) -> None:
        # Kept without its traceback: the frames would keep the open file alive, for ever
        # when the association aborts before its C-STORE handler takes the error.
        exc.__context__ = None
        with self._lock:
            self._errors[name] = exc.with_traceback(None)

    def take_error(self, path: Path) -> Exception | None:
        """The write error of this file, if any (forgotten once taken)."""
        with self._lock:
            return self._errors.pop(str(path), None)

    def install(self) -> None:
        """Make pynetdicom stream C-STORE datasets into our files (receiver process only)."""
        _config.STORE_RECV_CHUNKED_DATASET = True
        setattr(dimse_messages, "NamedTemporaryFile", self.open)  # noqa: B010
