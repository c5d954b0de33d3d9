"""Where a synthetic ultrasound fan lies in the frame: its apex, radii, angle and pixel size,
drawn from a seed as a curvilinear or a phased-array probe would show it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from appliance.phantoms._draw import BoolArray, FloatArray


@dataclass(frozen=True)
class SectorGeometry:
    """Where the fan is in the frame (pixels) and how big a pixel is (square, mm)."""

    rows: int
    columns: int
    apex_x: float
    apex_y: float
    inner_radius: float
    outer_radius: float
    half_angle: float
    mm_per_pixel: float

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), inclusive: the fan's bounding box, as the DICOM region gives it."""
        spread = self.outer_radius * math.sin(self.half_angle)
        top = self.apex_y + self.inner_radius * math.cos(self.half_angle)
        return (
            max(0, math.floor(self.apex_x - spread)),
            max(0, math.floor(top)),
            min(self.columns - 1, math.ceil(self.apex_x + spread)),
            min(self.rows - 1, math.ceil(self.apex_y + self.outer_radius)),
        )

    @property
    def depth_mm(self) -> float:
        return (self.outer_radius - self.inner_radius) * self.mm_per_pixel

    def polar(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(radius in pixels from the apex, angle from straight down) of pixel coordinates."""
        dx, dy = x - np.float32(self.apex_x), y - np.float32(self.apex_y)
        return (
            np.asarray(np.hypot(dx, dy), dtype=np.float32),
            np.asarray(np.arctan2(dx, dy), dtype=np.float32),
        )

    def mask(self) -> BoolArray:
        """True on the pixels (centres) inside the fan."""
        y, x = np.mgrid[0 : self.rows, 0 : self.columns].astype(np.float32)
        radius, angle = self.polar(x, y)
        inside = (radius >= self.inner_radius) & (radius <= self.outer_radius)
        return np.asarray(inside & (np.abs(angle) <= self.half_angle), dtype=np.bool_)


def draw_geometry(rng: np.random.Generator, rows: int, columns: int) -> SectorGeometry:
    phased = bool(rng.random() < 0.25)
    inner = float(rng.uniform(2.0, 6.0) if phased else rng.uniform(25.0, 70.0))
    face = float(rng.uniform(0.09, 0.13)) * rows  # top of the fan, below the text band
    half = math.radians(float(rng.uniform(38, 45) if phased else rng.uniform(28, 37)))
    apex_y = face - inner * math.cos(half)
    outer = rows - float(rng.uniform(0.02, 0.04)) * rows - apex_y
    apex_x = columns / 2 + float(rng.uniform(-0.02, 0.02)) * columns
    room = min(apex_x - 0.12 * columns, columns - 0.09 * columns - apex_x)
    half = min(half, math.asin(min(1.0, room / outer)))
    depth_mm = float(rng.uniform(80.0, 180.0))
    return SectorGeometry(
        rows=rows,
        columns=columns,
        apex_x=apex_x,
        apex_y=apex_y,
        inner_radius=inner,
        outer_radius=outer,
        half_angle=half,
        mm_per_pixel=depth_mm / (outer - inner),
    )
