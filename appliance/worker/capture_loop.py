"""The worker's live capture loop: grab, publish, overlay the model, carry out UI capture_store.

Three threads beside the job loop, none of which the job loop ever waits for (a dead capture
device is only a state in `status.json`):

- grab: reads the source, watches the signal, reopens a lost source with back-off, keeps
  `clip_seconds` of scan-area crops for "Save clip", and publishes the newest frame as JPEG
  plus `status.json` into the RAM-backed live folder (each file written whole, then renamed).
- inference: takes the newest published frame only (older ones are dropped, so the overlay
  never falls behind), crops the scan area, runs the configured model with the area's pixel
  size so areas are in mm², and writes `overlay.json` in full-frame pixel coordinates. A
  black or frozen signal gets no overlay.
- control: every ~100 ms takes the UI's requests from the store (freeze, resume, save frame,
  save clip), refreshes the device's calibration, and keeps `status.json` fresh when no frames
  come. Saves go through `store.ingest` like a DICOM push, so they get the normal analysis.

A user's freeze holds the published picture (and the clip up to it); resume starts the clip
afresh, so a saved clip is always continuous video. The scan area is the device's calibration
(set by an admin, from the store), else `capture.region`, else found by `detect_region`; its
mm per pixel the calibration's, else `capture.mm_per_pixel`, else unknown (no mm²).

Each thread that uses the store has its own connection (`Store.conn` is per thread) and closes
it when it ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from appliance.capture.region import detect_region
from appliance.capture.signal import SignalMonitor, SignalState
from appliance.capture.sources import (
    CaptureError,
    Frame,
    FrameSource,
    lossy_method,
    open_source,
)
from appliance.config import CaptureSettings, Settings
from appliance.dicomout.ultrasound import build_ultrasound
from appliance.domain import Origin, Source
from appliance.errors import ApplianceError
from appliance.imaging import DecodedImage, SpacingSource
from appliance.imaging.header import read_header
from appliance.paths import Paths
from appliance.runtime.engine import Model
from appliance.runtime.findings import ModelResult
from appliance.runtime.quality import check_quality
from appliance.store import Store
from appliance.store import capture as capture_store
from appliance.worker.models import ModelSet

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # x, y, width, height in grabbed-frame pixels
SourceFactory = Callable[[], FrameSource]

JPEG_QUALITY = 80
NO_SIGNAL_AFTER_S = 1.0  # no frame for this long: the state is no_signal
_STATE_WORDS = {
    SignalState.LIVE: "a live image",
    SignalState.NO_SIGNAL: "no signal",
    SignalState.BLACK: "a black image",
    SignalState.FROZEN: "a picture that does not change (the scanner's own freeze?)",
}
READ_TIMEOUT_S = 0.25  # the grab thread looks at the signal at least this often
REOPEN_AFTER_S = 2.0  # no frame for this long: close the source and open it again
BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 4.0)  # waits between attempts to (re)open a source
POLL_S = 0.1  # how often the control thread looks for requests
STATUS_EVERY_S = 0.3  # status.json is refreshed at least this often, frames or not
CALIBRATION_EVERY_S = 1.0  # how soon an admin's new calibration applies
DETECT_EVERY_S = 5.0  # how often an automatically found scan area is looked for again
JOIN_S = 5.0
CLIP_BUDGET_BYTES = 1 << 30  # the most memory the clip ring may take


# --- small parts ---------------------------------------------------------------------------


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
    """The RAM-backed folder the UI reads. Each file is written under a temporary name and
    renamed over the old one, so a reader sees either the old or the new file, never half."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # live patient images: the service user only

    def write(self, name: str, data: bytes) -> None:
        tmp = self.folder / f".{name}.{threading.get_ident()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.folder / name)

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        self.write(name, json.dumps(value, separators=(",", ":")).encode())

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class ScanArea:
    """Where the ultrasound image is inside the grabbed frame, and its pixel size.

    `box` None: not known (the whole frame is used). `origin` says who set it:
    "calibration" (an admin, per device), "settings" (capture.region), "detected" or "none".
    """

    box: Box | None
    mm_per_pixel: float | None
    origin: str

    def crop_box(self, width: int, height: int) -> Box:
        """The box clipped to a width x height frame; the whole frame when unknown or outside."""
        if self.box is None:
            return 0, 0, width, height
        x, y, w, h = self.box
        x0, y0 = min(max(x, 0), width), min(max(y, 0), height)
        x1, y1 = min(x + w, width), min(y + h, height)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return 0, 0, width, height
        return x0, y0, x1 - x0, y1 - y0


def crop(pixels: npt.NDArray[np.uint8], box: Box) -> npt.NDArray[np.uint8]:
    """A contiguous copy of the box: what is kept, saved and fed to the model."""
    x, y, w, h = box
    return np.ascontiguousarray(pixels[y : y + h, x : x + w])


class AreaResolver:
    """Which scan area applies: the device's calibration (store), else the settings' region and
    mm per pixel, else the area `detect_region` found. Read by every thread, hence the lock."""

    def __init__(self, capture: CaptureSettings) -> None:
        self._settings_box: Box | None = _box(capture.region) if capture.region else None
        self._settings_mm = capture.mm_per_pixel
        self._calibration: capture_store.Calibration | None = None
        self._detected: Box | None = None
        self._detected_for: tuple[int, int] | None = None  # frame size it was found on
        self._detected_at = -math.inf
        self._lock = threading.Lock()

    def set_calibration(self, calibration: capture_store.Calibration | None) -> None:
        with self._lock:
            self._calibration = calibration

    def needs_detection(self, size: tuple[int, int], now: float) -> bool:
        """Whether the area must be looked for on a frame of this (width, height) now."""
        with self._lock:
            if self._calibration is not None or self._settings_box is not None:
                return False
            return self._detected_for != size or now - self._detected_at >= DETECT_EVERY_S

    def set_detected(self, box: Box | None, size: tuple[int, int], now: float) -> None:
        with self._lock:
            self._detected, self._detected_for, self._detected_at = box, size, now

    def current(self) -> ScanArea:
        with self._lock:
            cal = self._calibration
            if cal is not None:
                mm = cal.mm_per_pixel if cal.mm_per_pixel is not None else self._settings_mm
                return ScanArea((cal.x, cal.y, cal.width, cal.height), mm, "calibration")
            if self._settings_box is not None:
                return ScanArea(self._settings_box, self._settings_mm, "settings")
            if self._detected is not None:
                return ScanArea(self._detected, self._settings_mm, "detected")
            return ScanArea(None, self._settings_mm, "none")


def _box(values: Sequence[int]) -> Box:
    x, y, w, h = (int(v) for v in values)
    return x, y, w, h


@dataclass(frozen=True, eq=False)
class Shot:
    """A frame as kept for saving: its scan-area crop (BGR) and where and when it was taken."""

    pixels: npt.NDArray[np.uint8]
    box: Box
    index: int
    captured_at: float
    wall: float


def shot_of(frame: Frame, area: ScanArea) -> Shot:
    height, width = frame.pixels.shape[:2]
    box = area.crop_box(width, height)
    return Shot(crop(frame.pixels, box), box, frame.index, frame.captured_at, frame.wall)


class Mailbox:
    """One slot holding the newest frame (and its signal state) for inference: a new frame
    replaces an unread one, so inference works on the newest frame and never queues."""

    def __init__(self) -> None:
        self._item: tuple[Frame, SignalState] | None = None
        self._ready = threading.Condition()

    def put(self, frame: Frame, state: SignalState) -> None:
        with self._ready:
            self._item = (frame, state)
            self._ready.notify()

    def take(self, timeout_s: float) -> tuple[Frame, SignalState] | None:
        with self._ready:
            if self._item is None:
                self._ready.wait(timeout_s)
            item, self._item = self._item, None
            return item


# --- shared state --------------------------------------------------------------------------


class LiveState:
    """What the threads share: the newest and published frames, the user's freeze, the clip
    ring and the counters that go into status.json. Every access holds the lock."""

    def __init__(self, ring_frames: int) -> None:
        self._lock = threading.Lock()
        self.ring: deque[Shot] = deque(maxlen=max(1, ring_frames))
        self.newest: Frame | None = None
        self.published: Frame | None = None
        self.frozen: Frame | None = None
        self.user_frozen = False
        self.seq = 0
        self.dropped = 0
        self.state = SignalState.NO_SIGNAL
        self.last_frame_at = -math.inf

    def on_frame(self, frame: Frame, state: SignalState, now: float) -> bool:
        """Record a new frame; True when it is to be published (not frozen by the user)."""
        with self._lock:
            if self.newest is not None and frame.index > self.newest.index + 1:
                self.dropped += frame.index - self.newest.index - 1
            if now - self.last_frame_at > NO_SIGNAL_AFTER_S and not self.user_frozen:
                self.ring.clear()  # a clip never spans a lost signal (maybe another patient)
            self.newest, self.state, self.last_frame_at = frame, state, now
            return not self.user_frozen

    def on_published(self, frame: Frame, shot: Shot) -> int:
        with self._lock:
            self.published = frame
            self.ring.append(shot)
            self.seq += 1
            return self.seq

    def set_state(self, state: SignalState) -> None:
        with self._lock:
            self.state = state

    def signal_state(self) -> SignalState:
        with self._lock:
            return self.state

    def freeze(self, now: float) -> Frame | None:
        """Hold the published frame (the one the user sees); return it. Nothing is frozen
        (None) while no live image comes: the last picture before a loss is not the scan now."""
        with self._lock:
            if self.user_frozen:
                return self.frozen
            frame = self.published or self.newest
            if frame is None or not self._live(now):
                return None
            self.user_frozen, self.frozen = True, frame
            return frame

    def not_live(self, now: float) -> str:
        """What the capture shows when it is not a live scan ("" when it is, or when the user
        froze a live image). Only then may an image be saved, so that a picture from before a
        lost signal is never filed under the patient chosen since."""
        with self._lock:
            if self.user_frozen or self._live(now):
                return ""
            if self.newest is None:
                return "no image has come from the capture device yet"
            silent = now - self.last_frame_at > NO_SIGNAL_AFTER_S
            state = SignalState.NO_SIGNAL if silent else self.state
        return f"the capture shows {_STATE_WORDS[state]}, not a live scan"

    def _live(self, now: float) -> bool:
        return self.state is SignalState.LIVE and now - self.last_frame_at <= NO_SIGNAL_AFTER_S

    def resume(self) -> None:
        """Back to live; the clip starts afresh, so a saved clip never jumps over the pause."""
        with self._lock:
            self.user_frozen, self.frozen = False, None
            self.ring.clear()

    def is_shown(self, frame: Frame) -> bool:
        """Whether `frame` is (or is about to be) on the screen: while frozen, only the frozen
        frame is, so a frame that raced the freeze gets no overlay."""
        with self._lock:
            return not self.user_frozen or frame is self.frozen

    def frame_to_save(self) -> Frame | None:
        """The frozen frame while frozen (what the user looks at), else the newest one."""
        with self._lock:
            return self.frozen if self.user_frozen else (self.newest or self.published)

    def clip(self) -> list[Shot]:
        """The ring's newest run of shots cut with one box (a new calibration starts a run)."""
        with self._lock:
            shots = list(self.ring)
        if not shots:
            return []
        box, run = shots[-1].box, []
        for shot in reversed(shots):
            if shot.box != box:
                break
            run.append(shot)
        return run[::-1]

    def snapshot(self, now: float) -> dict[str, Any]:
        """status.json's frame fields. Without frames for NO_SIGNAL_AFTER_S the state is
        no_signal whatever the grab thread last saw: a read or open that hangs shows too."""
        with self._lock:
            shown = self.frozen if self.user_frozen else self.published
            silent = now - self.last_frame_at > NO_SIGNAL_AFTER_S
            return {
                "state": SignalState.NO_SIGNAL.value if silent else self.state.value,
                "frozen": self.user_frozen,
                "seq": self.seq,
                "frame_index": -1 if shown is None else shown.index,
                "captured_wall": 0.0 if shown is None else shown.wall,
                "dropped": self.dropped,
                "size": None if shown is None else [shown.pixels.shape[1], shown.pixels.shape[0]],
            }


# --- the loop ------------------------------------------------------------------------------


class CaptureLoop:
    """Live capture beside the worker's job loop: `start()` the threads, `stop()` them."""

    def __init__(
        self,
        settings: Settings,
        paths: Paths,
        store: Store,
        models: ModelSet,
        source_factory: SourceFactory | None = None,
    ) -> None:
        capture = settings.capture
        factory = source_factory or functools.partial(open_source, capture.source)
        self.settings = settings
        self.store = store
        self.files = LiveFiles(paths.live_dir)
        self.source = factory()  # the first one; the grab thread makes another after a loss
        self.device = self.source.name
        self.area = AreaResolver(capture)
        self.area.set_calibration(capture_store.calibration(store.conn, self.device))
        self.nominal_fps = self.source.fps  # as the source says once open (the grabber sets it)
        self.live = LiveState(ring_frames(capture.clip_seconds, self.source))
        self.stopping = threading.Event()
        self.source_rate, self.published_rate = RateMeter(), RateMeter()
        self.mailbox = Mailbox()
        self.model, self._own_model = live_model(models, settings)
        self.grabber = Grabber(self, factory)
        self.inference = LiveInference(self, self.model)
        self.control = Control(self)
        self._publish_lock = threading.Lock()  # frame.jpg and a freeze: one at a time
        self._status_lock = threading.Lock()
        self._status_written = -math.inf
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the grab, inference and control threads (each returns at `stop()`)."""
        self.files.remove("frame.jpg")  # a picture left by a crashed worker is not live
        self.files.remove("overlay.json")
        expired = capture_store.expire_requests(self.store.conn)
        if expired:
            log.info("capture: %d request(s) from before the restart expired", expired)
        self.publish_status(force=True)
        for name, target in (
            ("capture-grab", self.grabber.run),
            ("capture-inference", self.inference.run),
            ("capture-control", self.control.run),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("capture: %s started (%s)", self.device, self.settings.capture.source.kind)

    def stop(self) -> None:
        """Stop and join the threads, close the source, and leave status.json "stopped"."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=JOIN_S)
            if thread.is_alive():
                log.error("capture: thread %s did not stop within %.0f s", thread.name, JOIN_S)
        self._threads.clear()
        if self._own_model and self.model is not None:
            self.model.close()
        self.files.remove("frame.jpg")  # no live patient image outlives the loop
        self.files.remove("overlay.json")
        self.publish_status(force=True, state="stopped")
        log.info("capture: %s stopped", self.device)

    def publish_frame(self, frame: Frame, state: SignalState) -> None:
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
        self.publish_status(force=True)

    def freeze(self) -> Frame | None:
        """Hold the picture now on the screen (frame.jpg) until `resume`; the overlay is made
        for that very frame (inference may have moved on to a newer, unpublished one)."""
        with self._publish_lock:
            frame = self.live.freeze(time.monotonic())
        if frame is not None:
            self.mailbox.put(frame, self.live.signal_state())
        self.publish_status(force=True)
        return frame

    def resume(self) -> None:
        """Back to the live picture."""
        self.live.resume()
        self.publish_status(force=True)

    def publish_status(self, force: bool = False, state: str | None = None) -> None:
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
        width, height = snap["size"] or self.source.size
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


def ring_frames(clip_seconds: float, source: FrameSource) -> int:
    """Frames kept for "Save clip": `clip_seconds` of them, within CLIP_BUDGET_BYTES of memory
    (a 60 s clip of 1080p would otherwise take 11 GiB). Crops are counted as whole frames."""
    wanted = math.ceil(clip_seconds * source.fps)
    width, height = source.size
    fit = max(1, CLIP_BUDGET_BYTES // (width * height * 3))
    if fit < wanted:
        log.warning(
            "capture: %.0f s of %dx%d video needs more than %d MiB: clips are cut to %.1f s",
            clip_seconds,
            width,
            height,
            CLIP_BUDGET_BYTES >> 20,
            fit / source.fps,
        )
    return min(wanted, fit)


def start_capture(
    settings: Settings, paths: Paths, store: Store, models: ModelSet
) -> CaptureLoop | None:
    """The running capture loop when capture is configured, else None.

    A loop that cannot even be set up (the live folder cannot be made, a source setting that
    names nothing) is logged and left out: the worker's jobs do not depend on it.
    """
    if settings.capture.source.kind == "none":
        return None
    try:
        loop = CaptureLoop(settings, paths, store, models)
    except (ApplianceError, OSError) as exc:
        log.error("capture: live capture is off: %s", exc)
        return None
    loop.start()
    return loop


def live_model(models: ModelSet, settings: Settings) -> tuple[Model | None, bool]:
    """The loaded package drawn over the live image (None, logged, when it is not loaded),
    and whether the loop owns it.

    ONNX Runtime sessions may run from several threads at once, so the job loop's model is
    shared. A native TensorRT engine's execution context may not: the loop then opens its own
    instance of the package (the engine comes from the on-disk cache).
    """
    name = settings.capture.model
    model = next((m for m in models.models if m.package.name == name), None)
    if model is None:
        log.error("capture: model %s is not loaded: the live view has no overlay", name)
        return None, False
    if model.backend.name != "tensorrt":
        return model, False
    return Model.open(model.package, model.options), True


# --- grab thread ---------------------------------------------------------------------------


class Grabber:
    """Reads the source and publishes its frames; a lost source is reopened with back-off."""

    def __init__(self, loop: CaptureLoop, factory: SourceFactory) -> None:
        self.loop = loop
        self.factory = factory
        self.source: FrameSource | None = loop.source
        self.opened = False
        self.monitor = SignalMonitor(no_signal_after_s=NO_SIGNAL_AFTER_S)
        self.attempt = 0  # failed opens (or silent reopens) since the last frame
        self.silent_since = time.monotonic()
        self.errors = ErrorLog("grab")

    def run(self) -> None:
        try:
            while not self.loop.stopping.is_set():
                try:
                    if self.opened or self._open():
                        self._step()
                except Exception:  # e.g. the live folder is full: say so, keep grabbing
                    self.errors.log()
                    self._pause()
        finally:
            self._close()

    def _step(self) -> None:
        assert self.source is not None
        try:
            frame = self.source.read(READ_TIMEOUT_S)
        except Exception as exc:  # a source that breaks is a lost signal, not a dead loop
            log.warning("capture: reading %s failed: %s", self.loop.device, _reason(exc))
            frame = None
            self._close()
        now = time.monotonic()
        state = self.monitor.update(frame, now)
        if frame is None:
            self._on_silence(now, state)
            return
        self.attempt, self.silent_since = 0, now
        self.loop.source_rate.tick(now)
        if self.loop.live.on_frame(frame, state, now):
            self.loop.publish_frame(frame, state)
        else:
            self.loop.publish_status()

    def _on_silence(self, now: float, state: SignalState) -> None:
        self.loop.live.set_state(state)
        self.loop.publish_status()
        if not self.opened or now - self.silent_since > REOPEN_AFTER_S:
            if self.opened:
                log.warning("capture: no frame from %s: reopening it", self.loop.device)
            self._close()
            self._pause()

    def _open(self) -> bool:
        """Open the source (a fresh one after a loss); on failure wait, keeping status."""
        try:
            if self.source is None:
                self.source = self.factory()
            self.source.open()
        except (CaptureError, OSError) as exc:
            if self.attempt == 0:
                log.warning("capture: cannot open %s: %s; retrying", self.loop.device, exc)
            self._close()
            self._pause()
            return False
        self.opened, self.silent_since = True, time.monotonic()
        self.loop.nominal_fps = self.source.fps  # a device or file may give another rate
        if self.attempt:
            log.info("capture: %s opened again after %d attempt(s)", self.loop.device, self.attempt)
        return True

    def _pause(self) -> None:
        """Wait before the next attempt (longer each time), keeping status.json current."""
        wait_s = BACKOFF_S[min(self.attempt, len(BACKOFF_S) - 1)]
        self.attempt += 1
        until = time.monotonic() + wait_s
        while not self.loop.stopping.is_set() and (now := time.monotonic()) < until:
            self.loop.live.set_state(self.monitor.update(None, now))
            self.loop.publish_status()
            self.loop.stopping.wait(min(READ_TIMEOUT_S, until - now))

    def _close(self) -> None:
        if self.source is not None:
            with contextlib.suppress(Exception):  # closing a broken device may fail as well
                self.source.close()
        self.source, self.opened = None, False


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


# --- inference thread ----------------------------------------------------------------------


class LiveInference:
    """The model over the newest frame: crop the scan area, infer, write overlay.json."""

    def __init__(self, loop: CaptureLoop, model: Model | None) -> None:
        self.loop = loop
        self.model = model
        self.rate = RateMeter()
        self.errors = ErrorLog("live inference")

    def run(self) -> None:
        try:
            while not self.loop.stopping.is_set():
                item = self.loop.mailbox.take(READ_TIMEOUT_S)
                if item is None:
                    continue
                try:
                    self._step(*item)
                except Exception:  # a failing model must not stop the live view
                    self.errors.log()
        finally:
            self.loop.store.close_thread_connection()

    def _step(self, frame: Frame, state: SignalState) -> None:
        """A black or frozen signal is not a live scan: no overlay is drawn on it."""
        if not self.loop.live.is_shown(frame):
            return
        if state is not SignalState.LIVE:
            self.loop.files.remove("overlay.json")
            return
        self._detect(frame)
        if self.model is not None:
            overlay = self.infer(self.model, frame, self.loop.area.current())
            self.loop.files.write_json("overlay.json", overlay)

    def _detect(self, frame: Frame) -> None:
        """Find the scan area when nobody set it (again every DETECT_EVERY_S: depth changes)."""
        height, width = frame.pixels.shape[:2]
        now = time.monotonic()
        if self.loop.area.needs_detection((width, height), now):
            found = detect_region(frame.pixels)
            box = None if found is None else _box(found)
            self.loop.area.set_detected(box, (width, height), now)

    def infer(self, model: Model, frame: Frame, area: ScanArea) -> dict[str, Any]:
        """overlay.json's content for one frame (outlines in full-frame pixels)."""
        height, width = frame.pixels.shape[:2]
        box = area.crop_box(width, height)
        image = live_image(crop(frame.pixels, box), area.mm_per_pixel)
        [result] = model.infer([image])
        check = check_quality(model.manifest, result.prepared, result.position)
        now = time.monotonic()
        self.rate.tick(now)
        return {
            "frame_index": frame.index,
            "captured_wall": frame.wall,
            "age_ms": round((now - frame.captured_at) * 1000.0, 1),
            "inference_fps": round(self.rate.rate(now), 2),
            "model": model.package.name,
            "version": model.package.version,
            "not_for_clinical_use": model.manifest.not_for_clinical_use,
            **_drawn(result, box, "" if check.passed else "; ".join(check.reasons)),
            "region": list(box),
        }


def live_image(crop_bgr: npt.NDArray[np.uint8], mm_per_pixel: float | None) -> DecodedImage:
    """A scan-area crop as the decoded RGB image a saved capture decodes to, with its pixel
    size (so the model's areas are in mm², as they will be for the saved image)."""
    rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)
    spacing = None if mm_per_pixel is None else (mm_per_pixel, mm_per_pixel)
    return DecodedImage(
        pixels=rgb[np.newaxis],
        photometric="RGB",
        source_photometric="RGB",
        transfer_syntax="",
        frame_count=1,
        frame_indices=(0,),
        bits_stored=8,
        signed=False,
        spacing_mm=spacing,
        spacing_source=SpacingSource.NONE if spacing is None else SpacingSource.ULTRASOUND_REGION,
    )


def _drawn(result: ModelResult, box: Box, held_back: str) -> dict[str, Any]:
    """Label, area and outlines (moved from crop to full-frame pixels) of the first mask, or
    the most likely label of a scores model. Nothing is drawn on an implausible image."""
    if result.masks:
        mask = result.masks[0]
        shift = np.array(box[:2], dtype=np.int32)
        outlines = [] if held_back else [(o + shift).tolist() for o in mask.outlines]
        area = None if held_back or mask.area_mm2 is None else round(mask.area_mm2, 1)
        label, display = mask.label, mask.display
    else:
        top = max(result.labels, key=lambda f: f.score - f.threshold, default=None)
        label, display = ("", "") if top is None else (top.label, top.display)
        outlines, area = [], None
    return {
        "label": label,
        "display": display,
        "area_mm2": area,
        "outlines": outlines,
        "held_back": held_back,
    }


# --- control thread ------------------------------------------------------------------------


class Control:
    """The UI's requests (in order), calibration refreshes and status.json keep-alive."""

    def __init__(self, loop: CaptureLoop) -> None:
        self.loop = loop
        self._calibrated_at = -math.inf
        self.errors = ErrorLog("capture control")

    def run(self) -> None:
        try:
            while not self.loop.stopping.wait(POLL_S):
                try:
                    self._refresh_calibration()
                    self.loop.publish_status()
                    self._take_requests()
                except Exception:  # e.g. the database is locked for long: try again next time
                    self.errors.log()
        finally:
            self.loop.store.close_thread_connection()

    def _refresh_calibration(self) -> None:
        now = time.monotonic()
        if now - self._calibrated_at >= CALIBRATION_EVERY_S:
            conn = self.loop.store.conn
            self.loop.area.set_calibration(capture_store.calibration(conn, self.loop.device))
            self._calibrated_at = now

    def _take_requests(self) -> None:
        conn = self.loop.store.conn
        while not self.loop.stopping.is_set():
            row = capture_store.next_request(conn)
            if row is None:
                return
            self.handle(row)

    def handle(self, row: sqlite3.Row) -> None:
        """Carry out one request and record its result (or why it failed) in its row."""
        conn = self.loop.store.conn
        try:
            result = self._carry_out(row)
        except Exception as exc:  # recorded in the request row for the user, and logged
            log.warning("capture: %s request %d failed: %s", row["kind"], row["id"], exc)
            capture_store.finish_request(conn, row["id"], None, error=_reason(exc))
            return
        capture_store.finish_request(conn, row["id"], result)

    def _carry_out(self, row: sqlite3.Row) -> dict[str, Any]:
        kind = row["kind"]
        live = self.loop.live
        if kind == "freeze":
            frame = self.loop.freeze()
            if frame is None:
                raise CaptureError(f"nothing to freeze: {live.not_live(time.monotonic())}")
            return {"frozen": True, "frame_index": frame.index}
        if kind == "resume":
            self.loop.resume()
            return {"frozen": False}
        problem = live.not_live(time.monotonic())
        if problem:
            raise CaptureError(f"not saved: {problem}")
        if kind == "save_frame":
            frame = live.frame_to_save()
            if frame is None:
                raise CaptureError("there is no frame to save: the capture device sent none")
            return Saver(self.loop).save(row, [shot_of(frame, self.loop.area.current())])
        if kind != "save_clip":
            raise CaptureError(f"unknown capture request {kind!r}")
        shots = live.clip()
        if not shots:
            raise CaptureError("there is no clip to save: the capture device sent no frames")
        return Saver(self.loop).save(row, shots)


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


class Saver:
    """Shots -> an ultrasound DICOM object -> `store.ingest`, exactly as a pushed image."""

    def __init__(self, loop: CaptureLoop) -> None:
        self.loop = loop
        self.store = loop.store

    def save(self, row: sqlite3.Row, shots: Sequence[Shot]) -> dict[str, Any]:
        target = self._target(row)
        area = self.loop.area.current()
        dataset = build_ultrasound(
            [shot.pixels for shot in shots],
            patient_id=target.patient_id,
            patient_name=target.patient_name,
            study_uid=target.study_uid or None,
            accession=target.accession,
            device_name=self.loop.device,
            mm_per_pixel=area.mm_per_pixel,
            frame_time_ms=frame_time_ms(shots, self.loop.nominal_fps),
            captured_wall=shots[0].wall,
            lossy_method=lossy_method(self.loop.settings.capture.source),
        )
        tmp = self.store.spool.new_tmp_path()
        try:
            dataset.save_as(tmp, enforce_file_format=True)
            header = read_header(tmp)
            origin = Origin(Source.CAPTURE, user=row["requested_by"])
            result = self.store.ingest(tmp, header, origin)
        finally:
            tmp.unlink(missing_ok=True)  # gone after a successful ingest; removed on failure
        return {
            "instance_id": result.instance_id,
            "sop_instance_uid": header.sop_instance_uid,
            "study_id": study_of_instance(self.store, result.instance_id),
            "outcome": result.outcome.value,
            "frames": len(shots),
            "frame_index": shots[0].index,  # the source's counter of the (first) frame
        }

    def _target(self, row: sqlite3.Row) -> capture_store.StudyForCapture:
        """The existing study's UID and patient, or the new patient the UI gave."""
        if row["study_ref"] is None:
            return capture_store.StudyForCapture("", row["patient_id"], row["patient_name"], "")
        found = capture_store.study_for_capture(self.store.conn, row["study_ref"])
        if found is None:
            raise CaptureError(f"study {row['study_ref']} is no longer in the store")
        return found


def frame_time_ms(shots: Sequence[Shot], fps: float) -> float:
    """The clip's mean frame interval as captured (the nominal one for a single frame)."""
    if len(shots) < 2:
        return 1000.0 / fps
    span = shots[-1].captured_at - shots[0].captured_at
    return span * 1000.0 / (len(shots) - 1) if span > 0 else 1000.0 / fps


def study_of_instance(store: Store, instance_id: int) -> int | None:
    row = store.conn.execute(
        "SELECT s.study_ref FROM instances i JOIN series s ON s.id = i.series_ref WHERE i.id = ?",
        (instance_id,),
    ).fetchone()
    return None if row is None else int(row[0])
