"""Frame sources for live ultrasound behind one small interface: a USB grabber (V4L2), a
GStreamer pipeline (Jetson), a video file, or (handed in by the entry layer) the demo's
generated B-mode sector.

The worker's grab thread owns a source: it opens it, reads frames until they stop, and opens
it again with back-off. So a lost signal is "no frame" (`read()` returns None), never an
exception: a pulled video cable is an ordinary state of the box, shown in the UI. `open()` is
where a wrong configuration shows, as a CaptureError that says what to check.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from appliance.config import CaptureSource
from appliance.errors import ApplianceError

log = logging.getLogger(__name__)

PROBE_HINT = "`appliance capture probe` lists the video devices and the modes they open in"
# OpenCV's V4L2 backend waits this long (s) for a frame of a stalled device (default 10 s, read
# once per process at the first capture); a short wait lets the worker notice an unplugged
# grabber and let go of it.
V4L2_SELECT_TIMEOUT_S = "1"
_MAX_FILE_SKIP = 15  # frames a late reader may skip in a file before the clock is re-anchored


@dataclass(frozen=True, eq=False)
class Frame:
    """One grabbed picture. Treat `pixels` as read-only: a generated source hands out the same
    arrays on every loop (they are marked read-only)."""

    pixels: npt.NDArray[np.uint8]  # H x W x 3 uint8, BGR (OpenCV order)
    index: int  # the source's frame counter; a gap means frames were dropped
    captured_at: float  # time.monotonic()
    wall: float  # time.time()


class CaptureError(ApplianceError):
    """A source cannot be opened; the message names it and says what to check."""


class FrameSource(Protocol):
    """What the worker's grab thread reads from. `size` is (width, height)."""

    name: str
    fps: float
    size: tuple[int, int]

    def open(self) -> None:
        """Start delivering frames; raises CaptureError saying why it cannot."""

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """The next frame, or None when none came within `timeout_s` (e.g. unplugged)."""

    def close(self) -> None:
        """Let go of the device or file; `open()` may be called again afterwards."""


SourceOpener = Callable[[CaptureSource], FrameSource]


def open_source(
    source: CaptureSource, openers: Mapping[str, SourceOpener] | None = None
) -> FrameSource:
    """The source `source` describes, not yet opened (the caller opens it, and again after a
    loss). Raises CaptureError for a configuration that names nothing to open.

    Devices, pipelines and files are made here. `openers` make the other kinds by name: the
    generated scanner screen is demo material (`appliance.phantoms.generated_source`), which
    this room may not import, so the entry layer hands its opener down.
    """
    if source.kind == "device":
        return OpenCVSource.device(source)
    if source.kind == "gstreamer":
        return OpenCVSource.gstreamer(source)
    if source.kind == "file":
        if source.file is None:
            raise CaptureError("capture.source.file is not set (the video file to play)")
        return VideoFileSource(
            source.file, name=source.name, size=(source.width, source.height), fps=source.fps
        )
    opener = (openers or {}).get(source.kind)
    if opener is not None:
        return opener(source)
    if source.kind == "generated":
        raise CaptureError(
            "capture.source.kind 'generated' is the demo scanner screen: start the worker with "
            "the `appliance worker` or `appliance run` command, which provides it"
        )
    raise CaptureError("capture.source.kind is 'none': no live capture is configured")


def lossy_method(source: CaptureSource) -> str | None:
    """How the frames this source delivers were lossily compressed on their way here, as DICOM's
    Lossy Image Compression Method; "" when lossy by a method not known here; None when not.

    A grabber set to MJPEG sends JPEG. Only a grabber set to YUYV and the generated source are
    known not to be compressed; anything else might be (a grabber's default format is often
    MJPEG, a video file or a GStreamer pipeline decodes a codec), and claiming lossy wrongly
    is the safer error.
    """
    if source.kind == "device" and source.fourcc == "MJPG":
        return "ISO_10918_1"
    if source.kind == "generated" or (source.kind == "device" and source.fourcc == "YUYV"):
        return None
    return ""


class RealTimeClock:
    """Paces frames to real time: frame n is due at start + n / fps. A reader that falls
    behind gets the frame due now, as from a live camera, rather than a backlog. Skipping
    may cost work (a file decodes what it skips), so at most `max_skip` frames are skipped
    and the clock is re-anchored, rather than bursting to catch up."""

    def __init__(self, fps: float, max_skip: int | None = None) -> None:
        self.period = 1.0 / fps
        self.max_skip = max_skip
        self.start: float | None = None
        self.last = -1

    def next_index(self, timeout_s: float) -> int | None:
        """Sleep until the next frame is due and return its index; None if not within
        `timeout_s` (only with a timeout shorter than one frame)."""
        now = time.monotonic()
        if self.start is None:
            self.start = now
        index = max(self.last + 1, math.floor((now - self.start) / self.period))
        if self.max_skip is not None and index - self.last - 1 > self.max_skip:
            index = self.last + 1 + self.max_skip
            self.start = now - index * self.period
        wait = self.start + index * self.period - now
        if wait > timeout_s:
            time.sleep(max(0.0, timeout_s))
            return None
        if wait > 0:
            time.sleep(wait)
        self.last = index
        return index


def paced_index(clock: RealTimeClock | None, timeout_s: float) -> int | None:
    """The index of the frame a paced source (a file, a generated loop) delivers now; None
    when none is due within `timeout_s`, or, after waiting `timeout_s`, while the source is
    not open (`clock` None), so that a closed source is not polled in a tight loop."""
    if clock is None:
        time.sleep(max(0.0, timeout_s))
        return None
    return clock.next_index(timeout_s)


def make_frame(pixels: npt.NDArray[np.uint8], index: int) -> Frame:
    """A Frame stamped now (monotonic for ages and rates, wall for records)."""
    return Frame(pixels=pixels, index=index, captured_at=time.monotonic(), wall=time.time())


def as_bgr(pixels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Three-channel BGR whatever the backend delivered (gray, BGRA from some pipelines)."""
    if pixels.ndim == 2:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    elif pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR)
    return np.asarray(pixels, dtype=np.uint8)


class VideoFileSource:
    """A video file played in a loop at its own frame rate, like a scanner's live output.

    `size` is the configured size until `open()` reads the file's real one; `fps` likewise
    (the configured rate stays when the file does not say its own)."""

    def __init__(
        self,
        path: Path,
        *,
        name: str = "file",
        size: tuple[int, int] = (1280, 720),
        fps: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.size = size
        self.fps = fps
        self._capture: cv2.VideoCapture | None = None
        self._pending: npt.NDArray[np.uint8] | None = None
        self._clock = RealTimeClock(fps, _MAX_FILE_SKIP)
        self._last_read = -1

    def open(self) -> None:
        """Open the file and decode its first frame, so a file that cannot be played fails
        here (naming it) and not later as a silent "no signal"."""
        self.close()
        if not self.path.is_file():
            raise CaptureError(f"video file {self.path} does not exist or is not a file")
        capture, first = self._start()
        file_fps = float(capture.get(cv2.CAP_PROP_FPS))
        if math.isfinite(file_fps) and 0 < file_fps <= 240:
            self.fps = file_fps
        self.size = (int(first.shape[1]), int(first.shape[0]))
        self._capture, self._pending = capture, first
        self._clock = RealTimeClock(self.fps, _MAX_FILE_SKIP)
        self._last_read = -1

    def _start(self) -> tuple[cv2.VideoCapture, npt.NDArray[np.uint8]]:
        capture = cv2.VideoCapture(str(self.path))
        ok, first = capture.read() if capture.isOpened() else (False, None)
        if not ok or first is None:
            capture.release()
            raise CaptureError(
                f"cannot read video file {self.path}: OpenCV cannot decode a frame of it"
            )
        return capture, as_bgr(first)

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """The frame due now; the file starts again at its end."""
        index = paced_index(self._clock if self._capture is not None else None, timeout_s)
        if index is None:
            return None
        for _ in range(index - self._last_read - 1):  # frames the reader was too late for
            if self._capture is not None:
                self._next_pixels(decode=False)
        pixels = self._next_pixels(decode=True) if self._capture is not None else None
        self._last_read = index
        return None if pixels is None else make_frame(pixels, index)

    def _next_pixels(self, *, decode: bool) -> npt.NDArray[np.uint8] | None:
        if self._pending is not None:
            pixels, self._pending = self._pending, None
            return pixels
        assert self._capture is not None
        if self._capture.grab():
            return self._retrieve() if decode else None
        self._capture.release()  # the end: play it again from the start
        try:
            self._capture, first = self._start()
        except CaptureError:
            self._capture = None  # the file went away while playing: a lost signal
            return None
        return first if decode else None

    def _retrieve(self) -> npt.NDArray[np.uint8] | None:
        assert self._capture is not None
        ok, pixels = self._capture.retrieve()
        return as_bgr(pixels) if ok and pixels is not None else None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
        self._capture, self._pending = None, None


@dataclass(eq=False)
class OpenCVSource:
    """A V4L2 device (a USB/UVC video grabber: index or /dev/video path) or a GStreamer
    pipeline, through OpenCV's VideoCapture. Reads in the caller's thread: a grabber already
    paces itself, and the caller wants each frame as soon as it arrives."""

    target: int | str
    _: KW_ONLY
    api: int
    label: str
    name: str
    size: tuple[int, int] = (1280, 720)
    fps: float = 30.0
    fourcc: str = ""
    _capture: cv2.VideoCapture | None = field(default=None, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)

    @classmethod
    def device(cls, source: CaptureSource) -> OpenCVSource:
        """A V4L2 device from `capture.source.device` ("0" or "/dev/video0")."""
        text = source.device.strip()
        target: int | str = int(text) if text.isdigit() else text
        label = f"/dev/video{text}" if text.isdigit() else text
        return cls(
            target,
            api=cv2.CAP_V4L2,
            label=label,
            name=source.name,
            size=(source.width, source.height),
            fps=source.fps,
            fourcc=source.fourcc,
        )

    @classmethod
    def gstreamer(cls, source: CaptureSource) -> OpenCVSource:
        """A GStreamer pipeline ending in appsink (e.g. a Jetson's nvv4l2 decoder)."""
        if not source.pipeline.strip():
            raise CaptureError("capture.source.pipeline is empty (a pipeline ending in appsink)")
        return cls(
            source.pipeline,
            api=cv2.CAP_GSTREAMER,
            label=f"GStreamer pipeline {source.pipeline!r}",
            name=source.name,
            size=(source.width, source.height),
            fps=source.fps,
        )

    def open(self) -> None:
        """Open the device in the configured mode; the mode it really gave is in size/fps."""
        self.close()
        if self.api == cv2.CAP_GSTREAMER and not cv2.videoio_registry.hasBackend(self.api):
            raise CaptureError(
                f"cannot open {self.label}: this OpenCV build has no GStreamer support "
                "(use the distribution's python3-opencv on a Jetson, or kind: device)"
            )
        if self.api == cv2.CAP_V4L2:
            os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", V4L2_SELECT_TIMEOUT_S)
        capture = cv2.VideoCapture(self.target, self.api)
        if not capture.isOpened():
            capture.release()
            raise CaptureError(
                f"cannot open capture device {self.label}: is it plugged in and not in use "
                f"by another program? {PROBE_HINT}"
            )
        if self.api == cv2.CAP_V4L2:
            self._set_mode(capture)
        self._capture, self._count = capture, 0

    def _set_mode(self, capture: cv2.VideoCapture) -> None:
        """Ask for the configured format, size and rate (the pixel format first: a grabber
        offers large sizes at full rate only as MJPG), then record what the device chose."""
        if self.fourcc:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.fourcc))
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        capture.set(cv2.CAP_PROP_FPS, self.fps)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width > 0 and height > 0:
            self.size = (width, height)
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        if math.isfinite(fps) and fps > 0:
            self.fps = fps

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """The next frame, or None once frames stop (unplugged, signal gone). A failed read
        waits out `timeout_s` so that a dead device is not polled in a tight loop."""
        started = time.monotonic()
        ok, pixels = self._grab()
        if not ok or pixels is None:
            time.sleep(max(0.0, started + timeout_s - time.monotonic()))
            return None
        self._count += 1
        return make_frame(as_bgr(pixels), self._count - 1)

    def _grab(self) -> tuple[bool, npt.NDArray[Any] | None]:
        """One frame from OpenCV; a backend error (a pipeline that broke) is a lost signal,
        logged, since the caller reopens the source anyway."""
        if self._capture is None:
            return False, None
        try:
            ok, pixels = self._capture.read()
        except cv2.error as exc:
            log.warning("capture %s: reading a frame failed: %s", self.label, exc)
            return False, None
        return bool(ok), pixels

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
        self._capture = None
