"""The files the worker's capture loop publishes into the live folder, as the UI reads them.

The worker replaces `frame.jpg`, `status.json` and `overlay.json` atomically, so a reader never
sees half of one; a file older than STALE_S means the capture loop is not running, and the
page then says "capture stopped" instead of showing an old picture as live.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FRAME, STATUS, OVERLAY = "frame.jpg", "status.json", "overlay.json"  # the worker's files
STATES = ("live", "no_signal", "black", "frozen", "stopped")
STALE_S = 3.0  # files older than this mean the capture loop is not running


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from the live folder, or None: missing, or not what the worker writes.
    The worker replaces its files atomically, so a reader never sees half of one."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def number(value: Any) -> float | None:
    """A finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fresh(wall: Any, now: float) -> bool:
    stamp = number(wall)
    return stamp is not None and now - stamp <= STALE_S


def fresh_status(folder: Path, now: float) -> dict[str, Any] | None:
    """status.json if the capture loop wrote it within STALE_S and it names a known state."""
    status = read_json(folder / STATUS)
    if status is None or not _fresh(status.get("updated_wall"), now):
        return None
    return status if status.get("state") in STATES else None


def fresh_overlay(folder: Path, status: Mapping[str, Any], now: float) -> dict[str, Any] | None:
    """overlay.json if it was written within STALE_S (capture time + its age), or belongs to
    the picture the user froze: an old overlay over a new picture would mislead."""
    overlay = read_json(folder / OVERLAY)
    if overlay is None:
        return None
    captured, age_ms = number(overlay.get("captured_wall")), number(overlay.get("age_ms"))
    if captured is None:
        return None
    written = captured + (age_ms or 0.0) / 1000.0
    return overlay if status.get("frozen") is True or now - written <= STALE_S else None


def live_state(folder: Path, now: float) -> dict[str, Any]:
    """What /api/live/status answers: the worker's status and overlay, or "stopped"."""
    status = fresh_status(folder, now)
    if status is None:
        return {"status": {"state": "stopped"}, "overlay": None}
    return {"status": status, "overlay": fresh_overlay(folder, status, now)}


def frame_bytes(folder: Path) -> bytes | None:
    """The newest frame's JPEG, or None when the worker has written none."""
    try:
        return (folder / FRAME).read_bytes()
    except OSError:
        return None


@lru_cache(maxsize=4)
def still_picture(width: int, height: int) -> bytes:
    """A plain dark picture of the frame's size, shown while there is no live frame: the
    page's layout does not jump, and nobody takes an old frame for a live one."""
    pixels = np.full((height, width, 3), 32, dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 60])
    if not ok:
        raise OSError("JPEG encoding failed")
    return bytes(encoded.tobytes())
