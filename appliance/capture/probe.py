"""Which video devices this box has, and which modes they open in.

Setting up a grabber means choosing `capture.source.device`, `fourcc`, `width`, `height` and
`fps`; a grabber lists many modes but delivers full rate only in some (often large sizes only
as MJPG). A probe opens each common mode through the same OpenCV backend the worker uses and
reports what the device really gave and how fast frames came. OpenCV is imported only when a
mode is opened, so `appliance capture probe` is cheap to register.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import cv2

FOURCCS = ("MJPG", "YUYV")
SIZES = ((640, 480), (1280, 720), (1920, 1080))
SYSFS = Path("/sys/class/video4linux")


@dataclass(frozen=True)
class ModeResult:
    """What a device did when asked for one mode."""

    fourcc: str
    size: tuple[int, int]  # asked for
    opened: bool
    got_fourcc: str = ""
    got_size: tuple[int, int] = (0, 0)
    reported_fps: float = 0.0
    measured_fps: float = 0.0

    def describe(self) -> str:
        asked = f"{self.fourcc} {self.size[0]}x{self.size[1]}"
        if not self.opened:
            return f"  {asked}: cannot open"
        if self.measured_fps == 0:
            return f"  {asked}: opened, but no frames came"
        got = f"{self.got_fourcc} {self.got_size[0]}x{self.got_size[1]}"
        rates = f"{self.measured_fps:.1f} fps (device says {self.reported_fps:.0f})"
        same = (self.got_fourcc, self.got_size) == (self.fourcc, self.size)
        return f"  {asked}: {rates}" if same else f"  {asked}: gave {got}, {rates}"


def probe_device(device: Path, seconds: float) -> Iterator[ModeResult]:
    """Every common mode of `device`, one result at a time (each takes about `seconds`)."""
    # OpenCV waits 10 s for a frame of a stalled device by default; a mode that gives none
    # should cost a second or two here. Read once, at the first capture.
    os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", "1")
    for fourcc in FOURCCS:
        for size in SIZES:
            yield probe_mode(device, fourcc, size, seconds)


def video_devices(dev: Path = Path("/dev")) -> list[Path]:
    """The /dev/video* nodes in number order (video2 before video10)."""
    found = [p for p in dev.glob("video*") if p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def device_path(text: str) -> Path:
    """ "2" means /dev/video2, as in `capture.source.device`."""
    return Path(f"/dev/video{text}") if text.isdigit() else Path(text)


def device_name(device: Path, sysfs: Path = SYSFS) -> str:
    """The name the driver gives the device (e.g. the grabber's USB product name)."""
    try:
        return (sysfs / device.name / "name").read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "(no name in sysfs)"


def probe_mode(device: Path, fourcc: str, size: tuple[int, int], seconds: float) -> ModeResult:
    """Open `device` in one mode, read frames for `seconds`, and say what came."""
    import cv2

    capture = cv2.VideoCapture(str(device), cv2.CAP_V4L2)
    try:
        if not capture.isOpened():
            return ModeResult(fourcc, size, opened=False)
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*fourcc))
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        capture.set(cv2.CAP_PROP_FPS, 60)  # the most the mode gives
        return ModeResult(
            fourcc,
            size,
            opened=True,
            got_fourcc=_fourcc_text(int(capture.get(cv2.CAP_PROP_FOURCC))),
            got_size=(
                int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            ),
            reported_fps=float(capture.get(cv2.CAP_PROP_FPS)),
            measured_fps=_measure_fps(capture, seconds),
        )
    finally:
        capture.release()


def _measure_fps(capture: cv2.VideoCapture, seconds: float) -> float:
    """Frames per second over `seconds`, after the first frame (which pays for start-up)."""
    if not capture.grab():
        return 0.0
    frames, started = 0, time.monotonic()
    while time.monotonic() - started < seconds and capture.grab():
        frames += 1
    elapsed = time.monotonic() - started
    return frames / elapsed if frames and elapsed > 0 else 0.0


def _fourcc_text(code: int) -> str:
    return "".join(chr((code >> (8 * n)) & 0xFF) for n in range(4)).strip("\x00 ") or "?"
