"""The MJPEG stream of the live view and the slots that cap how many are open at once.

MJPEG over waitress holds one of its threads per viewer for as long as the stream runs, so
streams are capped (a viewer that reconnects takes over its own slot) and each ends after a
while (the page reconnects): the rest of the UI always has threads left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.web.live_files import frame_bytes, fresh_status, number

KEEPALIVE_S = 1.0  # an unchanged picture is sent again this often: a closed client shows up
BOUNDARY = "frame"
REFUSED_KEPT = 256  # viewers remembered as refused (pages reload with a new key each time)
PART_HEAD = b"Content-Type: image/jpeg\r\n\r\n"
STREAM_START = f"--{BOUNDARY}\r\n".encode("ascii") + PART_HEAD
PART_END = f"\r\n--{BOUNDARY}\r\n".encode("ascii") + PART_HEAD


@dataclass(frozen=True)
class Ticket:
    """One open stream: its viewer and which of that viewer's streams it is."""

    key: str
    generation: int


class StreamSlots:
    """The viewers with a stream open: at most `limit`. A viewer's new stream (the page
    reconnecting) takes over its slot, and the old stream stops at its next frame, so a
    reconnect is never refused because of the viewer's own previous stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._current: dict[str, int] = {}
        self._generation = 0
        # Viewers whose last try was refused: the page cannot read the status of a failed
        # <img> stream, so it asks (`was_refused`) to say "other screens" rather than "lost".
        self._refused: dict[str, None] = {}

    def take(self, key: str) -> Ticket | None:
        with self._lock:
            if key not in self._current and len(self._current) >= self.limit:
                self._refused.pop(key, None)
                self._refused[key] = None
                while len(self._refused) > REFUSED_KEPT:  # the oldest go first
                    del self._refused[next(iter(self._refused))]
                return None
            self._refused.pop(key, None)
            self._generation += 1
            self._current[key] = self._generation
            return Ticket(key, self._generation)

    def was_refused(self, key: str) -> bool:
        """Whether this viewer's last try for a stream was refused (all slots taken)."""
        with self._lock:
            return key in self._refused

    def holds(self, ticket: Ticket) -> bool:
        with self._lock:
            return self._current.get(ticket.key) == ticket.generation

    def give_back(self, ticket: Ticket) -> None:
        """Idempotent: called when the stream ends and again when the server closes it."""
        with self._lock:
            if self._current.get(ticket.key) == ticket.generation:
                del self._current[ticket.key]

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._current)


def frame_part(picture: bytes) -> bytes:
    """One JPEG of the multipart stream, followed at once by the next part's boundary and
    headers: a browser (Chromium at least) shows a part only once the next one has begun, so
    anything less would show every frame one frame late, and the last one before a pause (a
    freeze) not until the next keep-alive copy. Parts carry no length for the same reason:
    the next frame's is not known when its headers go out."""
    return picture + PART_END


@dataclass
class FrameStream:
    """The MJPEG body: the newest frame whenever status.json's `seq` changes, at most at the
    source's frame rate; the same picture again every KEEPALIVE_S (so a closed client is
    noticed by a failed write); the still picture while capture is stopped. Ends after
    `max_s`, when its viewer opened a newer stream, or when the client goes away (the server
    closes the body, see `Response.call_on_close`)."""

    folder: Path
    still: bytes
    holds: Callable[[], bool]
    max_s: float
    default_fps: float

    def __iter__(self) -> Iterator[bytes]:
        yield STREAM_START
        deadline = time.monotonic() + self.max_s
        sent_seq: int | None = None
        sent_at = 0.0
        while self.holds() and time.monotonic() < deadline:
            status = fresh_status(self.folder, time.time())
            seq = _seq_of(status)
            gap = 0.8 / self._fps(status)  # a little slack: a frame on time is never skipped
            now = time.monotonic()
            if (seq != sent_seq and now - sent_at >= gap) or now - sent_at >= KEEPALIVE_S:
                picture = frame_bytes(self.folder) if seq is not None else None
                yield frame_part(picture or self.still)
                sent_seq, sent_at = seq, now
            time.sleep(min(max(gap / 2, 0.005), 0.05))

    def _fps(self, status: Mapping[str, Any] | None) -> float:
        fps = number(status.get("source_fps")) if status else None
        return fps if fps is not None and fps > 0 else self.default_fps


def _seq_of(status: Mapping[str, Any] | None) -> int | None:
    seq = status.get("seq") if status else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
