"""How the capture loop's threads report what goes wrong without stopping."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class ErrorLog:
    """Logs a thread's unexpected errors with their traceback: the first, then every 100th,
    so a persistent fault (30 frames a second) does not flood the journal."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0

    def log(self) -> None:
        self.count += 1
        if self.count == 1 or self.count % 100 == 0:
            log.exception("capture: %s failed (%d time(s))", self.what, self.count)


def reason(exc: Exception) -> str:
    """An exception as one line for a log or a request's result (its type when it says nothing)."""
    return str(exc) or type(exc).__name__
