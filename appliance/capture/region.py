"""Where the scan is inside a grabbed frame: a scanner's video output carries menus, text,
rulers and thumbnails around the B-mode image, and a model must see the image alone.

Speckle makes the scan the one large, textured, bright-ish area of the screen: menus and bars
are flat (no texture), text and rulers are thin (they vanish under a small opening), and
thumbnails are small. So the scan is the largest connected area of local texture, and its
bounding box is the region. An admin's calibration in the UI overrides this guess.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

_WORK_WIDTH = 640  # found on a copy at most this wide: fast, and a pixel or two is enough
_WINDOW = 5  # local statistics over 5 x 5 pixels of the copy
_MIN_SPREAD = 8.0  # grey levels: speckle has 20-40, a flat menu button none
_MIN_LEVEL = 12.0  # darker than this is background, however noisy
_NOISE = 2.0  # grey levels: neighbours closer than this are "the same" (flat)
_MAX_FLAT = 0.3  # share of flat pixels around a pixel: text on a panel has most, speckle few
_MIN_SHARE = 0.02  # a region smaller than this share of the frame is not a scan
_PART_SHARE = 0.05  # of the largest area: a piece of the scan cut off by fluid is larger
_OPENING = 7  # text strokes, ruler ticks and outlines are thinner than this (pixels of the copy)
_EDGE = 7  # the scan's own pixels are looked for this far across the found area's edge


def detect_region(pixels_bgr: npt.NDArray[np.uint8]) -> tuple[int, int, int, int] | None:
    """(x, y, width, height) of the ultrasound image in the frame, or None when there is no
    textured area large enough to be one (a black or flat frame)."""
    height, width = pixels_bgr.shape[:2]
    factor = max(1, -(-width // _WORK_WIDTH))
    gray = _gray_copy(pixels_bgr, factor)
    mask = _texture_mask(gray)
    area = _scan_area(mask, gray.size * _MIN_SHARE)
    if area is None:
        return None
    return _to_frame(_refine(area, gray), factor, width, height)


def _gray_copy(pixels: npt.NDArray[np.uint8], factor: int) -> npt.NDArray[np.float32]:
    gray = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY) if pixels.ndim == 3 else pixels
    if factor > 1:
        size = (gray.shape[1] // factor, gray.shape[0] // factor)
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return np.asarray(gray, dtype=np.float32)


def _texture_mask(gray: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Pixels whose neighbourhood is lit and varies everywhere: speckle. Not flat panels (no
    spread), nor text and ticks (a few strokes on a flat background)."""
    window = (_WINDOW, _WINDOW)
    mean = cv2.boxFilter(gray, -1, window)
    spread = np.sqrt(np.maximum(cv2.boxFilter(gray * gray, -1, window) - mean * mean, 0))
    flat = cv2.boxFilter(_flat_pixels(gray), -1, window)
    textured = (mean > _MIN_LEVEL) & (spread > _MIN_SPREAD) & (flat < _MAX_FLAT)
    return np.asarray(textured, dtype=np.uint8)


def _flat_pixels(gray: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """1 where a pixel equals its right and lower neighbours (within a grabber's noise)."""
    across = np.abs(np.diff(gray, axis=1, append=gray[:, -1:]))
    down = np.abs(np.diff(gray, axis=0, append=gray[-1:, :]))
    return ((across <= _NOISE) & (down <= _NOISE)).astype(np.float32)


def _scan_area(mask: npt.NDArray[np.uint8], min_pixels: float) -> npt.NDArray[np.bool_] | None:
    """The largest connected area once thin things (text, ticks, outlines) are opened away,
    with the large parts above and below it: a band of fluid can cut a fan in two. None when
    nothing is large enough to be a scan."""
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((_OPENING, _OPENING), np.uint8))
    count, labels, found, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    stats = np.asarray(found, dtype=np.int32)
    if count < 2:
        return None
    order = sorted(range(1, count), key=lambda n: -int(stats[n, cv2.CC_STAT_AREA]))
    main = order[0]
    if stats[main, cv2.CC_STAT_AREA] < min_pixels:
        return None
    parts = [n for n in order[1:] if _is_part(stats, n, int(stats[main, cv2.CC_STAT_AREA]))]
    return np.isin(labels, _stacked_with(main, parts, stats))


def _is_part(stats: npt.NDArray[np.int32], n: int, main_area: int) -> bool:
    """Large and thick enough to be a piece of the scan: not a line of text that survived
    the opening (thin), nor a thumbnail (small)."""
    thick = min(stats[n, cv2.CC_STAT_WIDTH], stats[n, cv2.CC_STAT_HEIGHT]) >= 2 * _OPENING
    return bool(thick and stats[n, cv2.CC_STAT_AREA] >= _PART_SHARE * main_area)


def _stacked_with(first: int, others: list[int], stats: npt.NDArray[np.int32]) -> list[int]:
    """`first` and every other part that mostly shares its columns (a piece of the same fan)
    rather than standing beside it (a second image, a panel)."""
    chosen, (left, right) = [first], _span(stats, first)
    for n in others:
        x0, x1 = _span(stats, n)
        if min(x1, right) - max(x0, left) >= 0.5 * (x1 - x0):
            chosen.append(n)
            left, right = min(left, x0), max(right, x1)
    return chosen


def _span(stats: npt.NDArray[np.int32], n: int) -> tuple[int, int]:
    x = int(stats[n, cv2.CC_STAT_LEFT])
    return x, x + int(stats[n, cv2.CC_STAT_WIDTH])


def _refine(
    area: npt.NDArray[np.bool_], gray: npt.NDArray[np.float32]
) -> tuple[int, int, int, int]:
    """The bounding box of the scan's own bright pixels at the found area's edge: the opening
    trims the fan's corners a little, and the texture window reaches past its edges."""
    near = cv2.dilate(area.astype(np.uint8), np.ones((_EDGE, _EDGE), np.uint8)) > 0
    ys, xs = np.nonzero(near & (gray > _MIN_LEVEL))
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _to_frame(
    box: tuple[int, int, int, int], factor: int, width: int, height: int
) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    left, top = x0 * factor, y0 * factor
    right, bottom = min(width, (x1 + 1) * factor), min(height, (y1 + 1) * factor)
    return left, top, right - left, bottom - top
