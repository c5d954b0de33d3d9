"""Where the scan is inside the grabbed frame: the scan area, its crop, and the shots kept for
saving. The area is read by every thread of the capture loop, hence the resolver's lock."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from appliance.capture.sources import Frame
from appliance.config import CaptureSettings
from appliance.store.capture import Calibration

Box = tuple[int, int, int, int]  # x, y, width, height in grabbed-frame pixels

DETECT_EVERY_S = 5.0  # how often an automatically found scan area is looked for again


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


def as_box(values: Sequence[int]) -> Box:
    """Four integers (a settings list, a detected region) as a Box."""
    x, y, w, h = (int(v) for v in values)
    return x, y, w, h


class AreaResolver:
    """Which scan area applies: the device's calibration (store), else the settings' region and
    mm per pixel, else the area `detect_region` found. Read by every thread, hence the lock."""

    def __init__(self, capture: CaptureSettings) -> None:
        self._settings_box: Box | None = as_box(capture.region) if capture.region else None
        self._settings_mm = capture.mm_per_pixel
        self._calibration: Calibration | None = None
        self._detected: Box | None = None
        self._detected_for: tuple[int, int] | None = None  # frame size it was found on
        self._detected_at = -math.inf
        self._lock = threading.Lock()

    def set_calibration(self, calibration: Calibration | None) -> None:
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


@dataclass(frozen=True, eq=False)
class Shot:
    """A frame as kept for saving: its scan-area crop (BGR) and where and when it was taken."""

    pixels: npt.NDArray[np.uint8]
    box: Box
    index: int
    captured_at: float
    wall: float


def shot_of(frame: Frame, area: ScanArea) -> Shot:
    """The frame's scan-area crop, as the clip ring keeps it and a save files it."""
    height, width = frame.pixels.shape[:2]
    box = area.crop_box(width, height)
    return Shot(crop(frame.pixels, box), box, frame.index, frame.captured_at, frame.wall)
