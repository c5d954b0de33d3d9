"""What the worker is doing right now, so that a stuck worker can be told from a busy one.

Every inference of a loaded model is timed against its package's `time_limit_s` (the backend
is wrapped once at start, so analyses, occlusion maps and live view are all measured), and a
pictures or outputs job as a whole against `JOB_LIMIT_S` (or four times the longest model
limit, if that is longer): they encode images and build documents, which have no limit of their
own. An activity past its limit makes `Tracker.overdue` name it; the role then stops its
watchdog pings and the job's lease renewals, and records why on the job.

Also here: `disk_full`, which tells a full disk (waited out, never counted as an attempt) from
other failures.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.errors import OutOfSpaceError
from appliance.runtime.backends.base import Backend, BackendOptions, ModelIO, Outputs
from appliance.runtime.engine import Model
from appliance.store.jobs import HUNG

SQLITE_FULL = 13  # sqlite3.h; the module names it only from Python 3.11
JOB_LIMIT_S = 300.0  # a pictures or outputs job as a whole (see job_limit_s)


@dataclass(frozen=True)
class Activity:
    """One thing a thread is doing, since `started` (monotonic), allowed `limit_s` seconds."""

    what: str  # a model's identity, or "pictures job"
    limit_s: float
    started: float
    inference: bool

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def reason(self) -> str:
        """What the job's row says when this activity overran, in plain words."""
        took = f"after {self.elapsed_s():.0f} s (its time limit is {self.limit_s:g} s)"
        if self.inference:
            return f"{HUNG}: no answer from {self.what} {took}"
        return f"{self.what} hung: not finished {took}"


class Tracker:
    """The activities of each thread, innermost last; safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stacks: dict[int, list[Activity]] = {}

    @contextmanager
    def measure(self, what: str, limit_s: float, inference: bool = True) -> Iterator[None]:
        activity = Activity(what, limit_s, time.monotonic(), inference)
        thread = threading.get_ident()
        with self._lock:
            self._stacks.setdefault(thread, []).append(activity)
        try:
            yield
        finally:
            with self._lock:
                stack = self._stacks.get(thread, [])
                if activity in stack:
                    stack.remove(activity)
                if not stack:
                    self._stacks.pop(thread, None)

    def overdue(self, thread: int | None = None) -> Activity | None:
        """The innermost activity past its limit (of `thread`, or of any thread), or None."""
        with self._lock:
            stacks = [
                list(stack)
                for ident, stack in self._stacks.items()
                if thread is None or ident == thread
            ]
        for stack in stacks:
            for activity in reversed(stack):
                if activity.elapsed_s() > activity.limit_s:
                    return activity
        return None


class TimedBackend:
    """A loaded backend whose every run is measured by a tracker (see `watch_models`)."""

    def __init__(self, inner: Backend, tracker: Tracker, label: str, limit_s: float) -> None:
        self.inner = inner
        self.tracker = tracker
        self.label = label
        self.limit_s = limit_s
        self.name = inner.name
        self.precision = inner.precision
        self.providers = inner.providers
        self.max_batch = inner.max_batch

    @classmethod
    def load(cls, model_path: Path, io: ModelIO, options: BackendOptions) -> Backend:
        raise TypeError("a timed backend wraps one already loaded: use watch_models")

    def run(self, batch: npt.NDArray[np.float32]) -> Outputs:
        with self.tracker.measure(self.label, self.limit_s):
            return self.inner.run(batch)

    def close(self) -> None:
        self.inner.close()


def watch_models(models: Sequence[Model], tracker: Tracker) -> None:
    """Measure every inference of `models` against its package's time limit."""
    for model in models:
        if not isinstance(model.backend, TimedBackend):
            limit = model.manifest.time_limit_s
            model.backend = TimedBackend(model.backend, tracker, model.manifest.identity, limit)


def job_limit_s(models: Sequence[Model]) -> float:
    """The limit of a pictures or outputs job as a whole: generous, as it may run several
    inferences (occlusion maps) and encode many pictures."""
    longest = max((model.manifest.time_limit_s for model in models), default=0.0)
    return max(JOB_LIMIT_S, 4 * longest)


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the disk is full: SQLite's "database or disk is
    full", ENOSPC or a quota, or the spool's free-space floor."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OutOfSpaceError):
            return True
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.OperationalError) and (
            getattr(current, "sqlite_errorcode", None) == SQLITE_FULL
            or "disk is full" in str(current)
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
