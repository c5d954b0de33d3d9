"""Drawing primitives shared by the phantoms: soft edges, distance fields, smooth noise.

Everything is float32 on a grid of physical coordinates (mm), so a shape keeps its size in mm
whatever the pixel count: the same seed gives the same anatomy at 320 or 2048 rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates in mm of a rows x columns image (x to the right, y down)."""

    x: FloatArray
    y: FloatArray
    mm_per_pixel: float

    @classmethod
    def make(cls, rows: int, columns: int, mm_per_pixel: float) -> Grid:
        ys = (np.arange(rows, dtype=np.float32) + 0.5) * np.float32(mm_per_pixel)
        xs = (np.arange(columns, dtype=np.float32) + 0.5) * np.float32(mm_per_pixel)
        x, y = np.meshgrid(xs, ys)
        return cls(x=x, y=y, mm_per_pixel=mm_per_pixel)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.x.shape[0]), int(self.x.shape[1]))


def soft_step(values: npt.ArrayLike, width: float) -> FloatArray:
    """0 -> 1 across zero over about `width` mm: edges that resample without aliasing."""
    scaled = np.clip(np.asarray(values, dtype=np.float32) / np.float32(max(width, 1e-3)), -30, 30)
    return np.asarray(1.0 / (1.0 + np.exp(-scaled)), dtype=np.float32)


def segment_distance(
    x: FloatArray, y: FloatArray, start: tuple[float, float], end: tuple[float, float]
) -> FloatArray:
    """Distance in mm from each point to the segment start-end (for capsules: bones, airways)."""
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    length2 = max(dx * dx + dy * dy, 1e-6)
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / np.float32(length2), 0.0, 1.0)
    return np.asarray(np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)), dtype=np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> FloatArray:
    """Gaussian noise blurred to `sigma_px` and rescaled to unit standard deviation."""
    field = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px > 0.3:
        blurred = cv2.GaussianBlur(field, (0, 0), sigmaX=sigma_px, borderType=cv2.BORDER_REFLECT)
        field = np.asarray(blurred, dtype=np.float32)
    std = float(field.std())
    return np.asarray(field / np.float32(std if std > 0 else 1.0), dtype=np.float32)


def lobulated_radius(
    rng: np.random.Generator, angle: FloatArray, radius: float, roughness: float
) -> FloatArray:
    """A radius that varies smoothly with angle: blobs that are not perfect circles."""
    out = np.ones_like(angle)
    for harmonic in (2, 3, 5):
        amplitude = roughness * float(rng.uniform(0.3, 1.0)) / harmonic**0.5
        wave = np.cos(harmonic * angle + np.float32(rng.uniform(0, 6.3)))
        out = np.asarray(out + np.float32(amplitude) * wave, dtype=np.float32)
    return np.asarray(out * np.float32(radius), dtype=np.float32)


def bounding_box(mask: BoolArray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), inclusive pixel corners of the True pixels; the mask must not be empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("bounding box of an empty mask")
    return int(columns[0]), int(rows[0]), int(columns[-1]), int(rows[-1])
