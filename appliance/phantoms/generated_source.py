"""A generated live source: a scanner's video output with a moving B-mode sector, to try and
test live capture on any machine, without a grabber or a scanner.

The screen looks like a real ultrasound machine's: a patient bar on top, settings on the left,
menu buttons on the right, a bottom strip with thumbnails, and the scan (a synthetic sector
from `appliance.phantoms`, with its own burned-in text and depth ruler) in the middle. The
fluid in it breathes and the speckle changes from frame to frame, so consecutive frames differ
as a live scan's do, and its area in every frame is known exactly (`truth`).

Frames are rendered once, when the source opens, and played as a loop (forwards, then
backwards, so the motion has no seam). `read()` only waits for the frame's time and hands out
a prepared array: 30 frames a second at 1280x720 cost next to nothing, leaving the CPU to the
model, as a grabber would.

It is demo material, above the capture room: the entry layer hands `OPENERS` to the worker,
and `capture.sources.open_source` makes `capture.source.kind: generated` with it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import cv2
import numpy as np
import numpy.typing as npt

from appliance.capture.sources import (
    CaptureError,
    Frame,
    RealTimeClock,
    SourceOpener,
    make_frame,
    paced_index,
)
from appliance.config import CaptureSource
from appliance.phantoms.ultrasound import make_ultrasound_clip
from appliance.phantoms.ultrasound_geometry import SectorGeometry

_Pixels = npt.NDArray[np.uint8]
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PANEL = (34, 30, 28)  # BGR: the dark grey-blue of scanner menus
_BUTTON = (70, 64, 60)
_LIT = (40, 150, 230)
_TEXT = (225, 225, 225)
_MENU = ("B-MODE", "FREEZE", "MEASURE", "ANNOTATE", "BODY MARK", "CINE", "SAVE", "PRESET")
_SETTINGS = ("ABD General", "Gain 52", "DR 60", "Freq 3.5MHz", "Focus 1", "PWR 100%", "TGC")


@dataclass(frozen=True)
class GeneratedTruth:
    """What a perfect measurement of one generated frame reports."""

    fluid_area_mm2: float
    region: tuple[int, int, int, int]  # the sector's bounding box in the frame: x, y, w, h
    mm_per_pixel: float


@dataclass(frozen=True)
class _Loop:
    """The prepared frames (read-only) in play order and their truth."""

    frames: tuple[_Pixels, ...]
    areas_mm2: tuple[float, ...]
    region: tuple[int, int, int, int]
    mm_per_pixel: float


@dataclass(frozen=True)
class _Layout:
    """Where the scan goes on the screen, and the bars around it (pixels)."""

    top: int
    bottom: int
    left: int
    right: int
    scan_x: int
    scan_rows: int
    scan_columns: int


class GeneratedSource:
    """A scanner screen with a breathing B-mode sector, paced to `fps` (see the module)."""

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        seed: int = 1,
        name: str = "generated",
        *,
        loop_frames: int = 30,
    ) -> None:
        if width < 160 or height < 120:
            raise CaptureError(f"a generated source needs at least 160x120, got {width}x{height}")
        if not 2 <= loop_frames <= 120:
            raise CaptureError(f"loop_frames must be within 2..120, got {loop_frames}")
        self.name = name
        self.fps = float(fps)
        self.size = (width, height)
        self.seed = seed
        self.loop_frames = loop_frames
        self._clock: RealTimeClock | None = None

    def _loop(self) -> _Loop:
        return _render_loop(self.size[0], self.size[1], self.fps, self.seed, self.loop_frames)

    def open(self) -> None:
        """Render the loop (about a second at 1280x720, once per process) and start the clock."""
        self._loop()
        self._clock = RealTimeClock(self.fps)

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """The frame due now (a late reader skips frames, as with a live grabber)."""
        index = paced_index(self._clock, timeout_s)
        if index is None:
            return None
        loop = self._loop()
        return make_frame(loop.frames[index % len(loop.frames)], index)

    def close(self) -> None:
        self._clock = None

    def truth(self, index: int) -> GeneratedTruth:
        """The exact fluid area, sector region and pixel size of frame `index`."""
        loop = self._loop()
        return GeneratedTruth(
            fluid_area_mm2=loop.areas_mm2[index % len(loop.areas_mm2)],
            region=loop.region,
            mm_per_pixel=loop.mm_per_pixel,
        )


def open_generated(source: CaptureSource) -> GeneratedSource:
    """The generated source `capture.source` describes (kind "generated"), not yet opened."""
    return GeneratedSource(source.width, source.height, source.fps, name=source.name)


OPENERS: Mapping[str, SourceOpener] = MappingProxyType({"generated": open_generated})


@functools.lru_cache(maxsize=2)
def _render_loop(width: int, height: int, fps: float, seed: int, count: int) -> _Loop:
    """The loop for these settings; cached, so reopening a source (the worker does after a
    loss) or a second source of the same kind costs no second rendering."""
    layout = _layout(width, height)
    clip = make_ultrasound_clip(
        seed,
        frames=count,
        frame_time_ms=1000.0 / fps,
        rows=layout.scan_rows,
        columns=layout.scan_columns,
        fluid=True,
    )
    scans = [np.asarray(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), dtype=np.uint8) for f in clip.frames]
    screen = _screen(width, height, layout, scans[0])
    frames = [_place(screen, scan, layout) for scan in scans]
    order = list(range(count)) + list(range(count - 2, 0, -1))  # forwards, then back
    return _Loop(
        frames=tuple(frames[i] for i in order),
        areas_mm2=tuple(clip.fluid_areas_mm2[i] for i in order),
        region=_region(clip.geometry, layout),
        mm_per_pixel=clip.geometry.mm_per_pixel,
    )


def _layout(width: int, height: int) -> _Layout:
    """Bars in proportion to the screen; the scan (4:3 at most) fills the middle."""
    top, bottom = round(0.075 * height), round(0.07 * height)
    left, right = round(0.14 * width), round(0.16 * width)
    rows = height - top - bottom
    columns = min(round(rows * 4 / 3), width - left - right)
    scan_x = left + (width - left - right - columns) // 2
    return _Layout(top, bottom, left, right, scan_x, rows, columns)


def _region(geometry: SectorGeometry, layout: _Layout) -> tuple[int, int, int, int]:
    """The sector's bounding box (inclusive corners in the scan) as x, y, w, h on screen."""
    x0, y0, x1, y1 = geometry.region
    return (layout.scan_x + x0, layout.top + y0, x1 - x0 + 1, y1 - y0 + 1)


def _place(screen: _Pixels, scan: _Pixels, layout: _Layout) -> _Pixels:
    frame: _Pixels = screen.copy()
    rows, columns = scan.shape[:2]
    frame[layout.top : layout.top + rows, layout.scan_x : layout.scan_x + columns] = scan
    frame.setflags(write=False)  # shared by every loop: a consumer must copy to draw on it
    return frame


def _screen(width: int, height: int, layout: _Layout, scan: _Pixels) -> _Pixels:
    """Everything around the scan: bars, settings, menu buttons and thumbnails."""
    screen = np.zeros((height, width, 3), dtype=np.uint8)
    scale = max(0.3, 0.45 * height / 720)
    _top_bar(screen, layout, scale)
    _settings_panel(screen, layout, scale)
    _menu_panel(screen, layout, scale)
    _bottom_strip(screen, layout, scale, scan)
    return screen


def _text(screen: _Pixels, text: str, x: int, y: int, scale: float) -> None:
    cv2.putText(screen, text, (x, y), _FONT, scale, _TEXT, 1, cv2.LINE_AA)


def _top_bar(screen: _Pixels, layout: _Layout, scale: float) -> None:
    width = screen.shape[1]
    screen[: layout.top] = _PANEL
    baseline = layout.top * 2 // 3
    _text(screen, "DEMO^PHANTOM  ID SYN-LIVE", 8, baseline, scale)
    _text(screen, "SYNTHETIC SCANNER  MI 0.9  TIs 0.4", width // 3, baseline, scale)
    _text(screen, "2026-11-01 09:30", width - round(width * 0.17), baseline, scale)


def _settings_panel(screen: _Pixels, layout: _Layout, scale: float) -> None:
    height = screen.shape[0]
    screen[layout.top : height - layout.bottom, : layout.left] = _PANEL
    step = max(12, round(34 * scale))
    for n, line in enumerate(_SETTINGS):
        _text(screen, line, 6, layout.top + step * (n + 1), scale)


def _menu_panel(screen: _Pixels, layout: _Layout, scale: float) -> None:
    """Filled buttons with labels down the right side; one is lit, as the active mode is."""
    height, width = screen.shape[:2]
    x0 = width - layout.right
    screen[layout.top : height - layout.bottom, x0:] = _PANEL
    span = (height - layout.top - layout.bottom) // len(_MENU)
    for n, label in enumerate(_MENU):
        y = layout.top + n * span
        colour = _LIT if n == 0 else _BUTTON
        cv2.rectangle(screen, (x0 + 6, y + 4), (width - 6, y + span - 4), colour, cv2.FILLED)
        _text(screen, label, x0 + 12, y + span // 2 + 4, scale)


def _bottom_strip(screen: _Pixels, layout: _Layout, scale: float, scan: _Pixels) -> None:
    """Saved-image thumbnails (small copies of the scan) and the preset's name."""
    height, width = screen.shape[:2]
    y0 = height - layout.bottom
    screen[y0:] = _PANEL
    thumb_h = layout.bottom - 6
    thumb_w = thumb_h * 4 // 3
    if thumb_h >= 12:  # too small to show on a tiny screen
        thumb = np.asarray(cv2.resize(scan, (thumb_w, thumb_h), interpolation=cv2.INTER_AREA))
        for n in range(3):
            x = layout.left + n * (thumb_w + 6)
            screen[y0 + 3 : y0 + 3 + thumb_h, x : x + thumb_w] = thumb
    _text(screen, "Abdomen > General", width // 2, height - layout.bottom // 3, scale)
