"""What the UI sees of the capture loop: frame.jpg, status.json and the user's freeze.

The live folder is RAM-backed; every file in it is written whole under a unique partial name
and renamed over the old one (`write_atomically`), so the UI reads the old or the new file,
never half of one.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import cv2

from appliance.capture.signal import SignalState
from appliance.capture.sources import CaptureError, Frame, FrameSource
from appliance.paths import write_atomically
from appliance.worker.capture.area import AreaResolver, shot_of
from appliance.worker.capture.state import LiveState, Mailbox

JPEG_QUALITY = 80
STATUS_EVERY_S = 0.3  # status.json is refreshed at least this often, frames or not


class RateMeter:
    """Events per second over the last `window_s` seconds (the fps figures in the live files)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float) -> float:
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class LiveFiles:
    """The RAM-backed folder the UI reads, for the service user only (live patient images)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)

    def write(self, name: str, data: bytes) -> None:
        """Replace the file whole; no fsync: a live frame is worthless after a power cut."""
        write_atomically(self.folder / name, data)

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        self.write(name, json.dumps(value, separators=(",", ":")).encode())

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)


class Publisher:
    """Publishes frames and status for one source; holds the picture while the user freezes.

    `first_source` gives the configured frame size for status.json until a frame is shown;
    `nominal_fps` is the rate the source says it delivers (the grab thread updates it on open).
    """

    def __init__(
        self,
        files: LiveFiles,
        live: LiveState,
        area: AreaResolver,
        mailbox: Mailbox,
        first_source: FrameSource,
    ) -> None:
        self.files, self.live, self.area, self.mailbox = files, live, area, mailbox
        self.first_source = first_source
        self.device = first_source.name
        self.nominal_fps = first_source.fps
        self.source_rate, self.published_rate = RateMeter(), RateMeter()
        self._publish_lock = threading.Lock()  # frame.jpg and a freeze: one at a time
        self._status_lock = threading.Lock()
        self._status_written = -math.inf

    def frame(self, frame: Frame, state: SignalState) -> None:
        """Hand a new frame to inference first (the overlay's age counts from capture), then
        frame.jpg, the clip ring and status.json. A frame that loses the race with a freeze is
        not published: the frozen frame is the last one written."""
        self.mailbox.put(frame, state)
        ok, jpeg = cv2.imencode(".jpg", frame.pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise CaptureError(f"cannot encode frame {frame.index} as JPEG")
        shot = shot_of(frame, self.area.current())
        with self._publish_lock:
            if self.live.user_frozen:
                return
            self.files.write("frame.jpg", jpeg.tobytes())
            self.live.on_published(frame, shot)
        self.published_rate.tick(time.monotonic())
        self.status(force=True)

    def freeze(self) -> Frame | None:
        """Hold the picture now on the screen (frame.jpg) until `resume`; the overlay is made
        for that very frame (inference may have moved on to a newer, unpublished one)."""
        with self._publish_lock:
            frame = self.live.freeze(time.monotonic())
        if frame is not None:
            self.mailbox.put(frame, self.live.signal_state())
        self.status(force=True)
        return frame

    def resume(self) -> None:
        """Back to the live picture."""
        self.live.resume()
        self.status(force=True)

    def clear(self) -> None:
        """Remove the picture and overlay: none outlives the loop or survives a crashed one."""
        self.files.remove("frame.jpg")
        self.files.remove("overlay.json")

    def status(self, force: bool = False, state: str | None = None) -> None:
        """Write status.json (unless it was written within STATUS_EVERY_S and not `force`)."""
        now = time.monotonic()
        with self._status_lock:
            if not force and now - self._status_written < STATUS_EVERY_S:
                return
            self.files.write_json("status.json", self._status(now, state))
            self._status_written = now

    def _status(self, now: float, state: str | None) -> dict[str, Any]:
        snap = self.live.snapshot(now)
        area = self.area.current()
        width, height = snap["size"] or self.first_source.size
        return {
            **snap,
            "state": state or snap["state"],
            "source_fps": round(self.nominal_fps, 2),  # the rate the source says it delivers
            "read_fps": round(self.source_rate.rate(now), 2),  # the rate frames came in
            "published_fps": round(self.published_rate.rate(now), 2),
            "device": self.device,
            "size": [width, height],  # of the frame shown, else the source's configured size
            "region": None if area.box is None else list(area.crop_box(width, height)),
            "mm_per_pixel": area.mm_per_pixel,
            "updated_wall": time.time(),
        }
