"""A wake-up hint from the roles that queue jobs to the worker, so it need not poll fast.

The worker binds a Unix datagram socket in the data folder; `ring()` sends it one byte after a
job is committed. It is only a hint: a ring nobody hears (worker not running, socket full) is
dropped without error, because the worker also looks at the queue every `jobs.poll_s` and on
start-up. The queue in SQLite stays the only source of truth.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
from pathlib import Path

log = logging.getLogger(__name__)
_MAX_PATH = 107  # sun_path is 108 bytes with its terminating NUL


class Doorbell:
    """Ring side: cheap, never blocks, never raises for an absent listener."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # One socket shared by the receiver's threads: sendto on a datagram socket is atomic.
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def ring(self) -> None:
        if self._sock is None or len(os.fsencode(self.path)) > _MAX_PATH:
            return
        # Nobody listening, or the queue of rings is full: either way the worker polls too.
        with contextlib.suppress(OSError):
            self._sock.sendto(b"!", os.fsencode(self.path))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Listener:
    """Worker side: wait for a ring or a timeout, whichever comes first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        if len(os.fsencode(path)) > _MAX_PATH:
            log.info("data folder path too long for a wake-up socket; polling the queue only")
            return
        path.unlink(missing_ok=True)  # left by a worker that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.fsencode(path))
        sock.setblocking(False)
        self._sock = sock

    def wait(self, timeout_s: float) -> bool:
        """True when rung (all pending rings are consumed), False on timeout."""
        if self._sock is None:
            select.select([], [], [], timeout_s)
            return False
        ready, _, _ = select.select([self._sock], [], [], timeout_s)
        if not ready:
            return False
        while True:
            try:
                self._sock.recv(64)
            except BlockingIOError:
                return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)
