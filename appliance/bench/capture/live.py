"""The live window: a browser-like viewer on the MJPEG stream and the live page's status,
while the worker's live files (status.json, overlay.json) are sampled."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.bench.capture.results import LiveRun
from appliance.bench.harness import BenchError
from appliance.bench.harness.http import HTTP_TIMEOUT_S, Session
from appliance.bench.harness.tables import median

SAMPLE_S = 0.02  # how often the live files are read


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class FileSampler:
    """Reads status.json and overlay.json every SAMPLE_S: seq and dropped at both ends, each
    overlay once (by frame index) with its age."""

    live_dir: Path
    first: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    overlays: dict[int, dict[str, Any]] = field(default_factory=dict)
    source_fps: list[float] = field(default_factory=list)
    published_fps: list[float] = field(default_factory=list)

    def sample(self) -> None:
        status = read_json(self.live_dir / "status.json")
        if status is not None and isinstance(status.get("seq"), int):
            self.first = self.first or status
            self.last = status
            self.source_fps.append(float(status.get("source_fps") or 0.0))
            self.published_fps.append(float(status.get("published_fps") or 0.0))
        overlay = read_json(self.live_dir / "overlay.json")
        if overlay is not None and isinstance(overlay.get("frame_index"), int):
            self.overlays.setdefault(overlay["frame_index"], overlay)

    def counted(self, key: str) -> int:
        return int(self.last.get(key, 0)) - int(self.first.get(key, 0)) if self.first else 0


@dataclass
class MjpegClient:
    """A browser showing the live page: the MJPEG stream on its own connection, and the
    status asked at the page's rate on the session's connection. A part that repeats the one
    before (the stream's keep-alive copy while nothing changes) is not a new frame."""

    session: Session
    stop: threading.Event
    frames: int = 0
    parts: int = 0
    size: int = 0
    polls: int = 0
    error: str = ""

    def stream(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.session.port, timeout=HTTP_TIMEOUT_S)
        try:
            conn.request("GET", "/live/stream.mjpg?viewer=benchviewer", headers=self._headers())
            response = conn.getresponse()
            if response.status != 200:
                self.error = f"/live/stream.mjpg answered {response.status}"
                return
            reader, last = PartReader(response, _boundary(response)), b""
            while not self.stop.is_set():
                picture = reader.next()
                self.parts += 1
                self.size += len(picture)
                self.frames += picture != last
                last = picture
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.error = self.error or f"stream: {exc}"
        finally:
            conn.close()  # the server notices at its next write, and frees the slot

    def poll_status(self, interval_s: float) -> None:
        while not self.stop.wait(interval_s):
            self.polls += self.session.poll("/api/live/status") == 200

    def _headers(self) -> dict[str, str]:
        return {"Cookie": self.session.cookie} if self.session.cookie else {}


def _boundary(response: http.client.HTTPResponse) -> bytes:
    kind = response.getheader("Content-Type", "")
    if not kind.startswith("multipart/x-mixed-replace") or "boundary=" not in kind:
        raise ValueError(f"not an MJPEG stream: {kind!r}")
    return kind.split("boundary=", 1)[1].strip().strip('"').encode("ascii")


class PartReader:
    """The parts of a multipart body, read as a browser does: each ends where the next
    boundary begins (the stream's parts carry no length)."""

    def __init__(self, response: http.client.HTTPResponse, boundary: bytes) -> None:
        self.response = response
        self.delimiter = b"\r\n--" + boundary + b"\r\n"
        self.buffer = b"\r\n"  # the body starts with the boundary itself

    def next(self) -> bytes:
        """The next part's body (a JPEG), once the boundary after it has arrived."""
        if self._take(self.delimiter):
            raise ValueError("the stream is out of step: data between parts")
        self._take(b"\r\n\r\n")  # the part's headers
        picture = self._peek(self.delimiter)
        self.buffer = self.buffer[len(picture) :]
        return picture

    def _take(self, marker: bytes) -> bytes:
        """Consume through `marker`; what came before it."""
        found = self._peek(marker)
        self.buffer = self.buffer[len(found) + len(marker) :]
        return found

    def _peek(self, marker: bytes) -> bytes:
        """What comes before `marker`, reading more as needed; nothing is consumed."""
        while True:
            at = self.buffer.find(marker)
            if at >= 0:
                return self.buffer[:at]
            more = self.response.read1(256 * 1024)
            if not more:
                raise ValueError("the stream ended")
            self.buffer += more


def measure_live(port: int, live_dir: Path, seconds: float) -> LiveRun:
    """One viewer for `seconds`, the live files sampled meanwhile."""
    from appliance.web.live import POLL_S

    sampler = FileSampler(live_dir)
    with watching(port, POLL_S, settle_s=1.0) as client:
        sampler.sample()
        frames_before = client.frames
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            sampler.sample()
            time.sleep(SAMPLE_S)
        elapsed = time.monotonic() - started
        frames = client.frames - frames_before
    return _live_run(sampler, client, frames, elapsed)


@contextmanager
def watching(port: int, poll_s: float, settle_s: float) -> Iterator[MjpegClient]:
    """A browser-like viewer on the live page for the block: the stream and the status asked
    every `poll_s`, each on its own thread, flowing for `settle_s` before the block starts.
    BenchError if the viewer failed."""
    stop = threading.Event()
    client = MjpegClient(Session.signed_in(port), stop)
    threads = [
        threading.Thread(target=client.stream, name="bench-mjpeg", daemon=True),
        threading.Thread(target=client.poll_status, args=(poll_s,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    time.sleep(settle_s)  # the stream is open and flowing before anything is measured
    try:
        yield client
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=HTTP_TIMEOUT_S)
        client.session.close()
    if client.error:
        raise BenchError(f"the browser-like client failed: {client.error}")


def _live_run(sampler: FileSampler, client: MjpegClient, frames: int, seconds: float) -> LiveRun:
    overlays = list(sampler.overlays.values())[1:]  # the first may predate the window
    return LiveRun(
        seconds=seconds,
        published=sampler.counted("seq"),
        dropped=sampler.counted("dropped"),
        source_fps=median(sampler.source_fps),
        published_fps_reported=median(sampler.published_fps),
        overlays=len(overlays),
        overlay_ages_ms=tuple(float(o.get("age_ms", 0.0)) for o in overlays),
        inference_fps_reported=median([float(o.get("inference_fps", 0.0)) for o in overlays]),
        browser_frames=frames,
        browser_parts=client.parts,
        browser_bytes=client.size,
        status_polls=client.polls,
    )
