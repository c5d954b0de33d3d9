"""The tissue a synthetic ultrasound frame shows, in mm from the probe's apex: layers, organ
texture, a kidney, bone, vessels and fluid (whose mask on the output pixels is the truth), and
the breathing that moves it from frame to frame."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from appliance.phantoms._draw import BoolArray, FloatArray, smooth_noise
from appliance.phantoms.ultrasound_geometry import SectorGeometry


@dataclass(frozen=True)
class Blob:
    """A fluid collection (or vessel): a lobulated ellipse in mm from the apex, z downward."""

    x: float
    z: float
    axes: tuple[float, float]
    angle: float
    lobes: tuple[tuple[float, float], ...] = ()  # (amplitude, phase) for harmonics 2, 3, ...
    wall: bool = False
    echo: float = 0.03

    def inside(self, x: FloatArray, z: FloatArray, scale: float = 1.0) -> BoolArray:
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        dx, dz = x - np.float32(self.x), z - np.float32(self.z)
        u = (dx * cos + dz * sin) / np.float32(self.axes[0] * scale)
        w = (-dx * sin + dz * cos) / np.float32(self.axes[1] * scale)
        edge = np.ones_like(u)
        phi = np.arctan2(w, u)
        for harmonic, (amplitude, phase) in enumerate(self.lobes, start=2):
            edge += np.float32(amplitude) * np.cos(harmonic * phi + np.float32(phase))
        return np.asarray(np.hypot(u, w) < edge, dtype=np.bool_)

    def ring(self, x: FloatArray, z: FloatArray, scale: float = 1.0) -> FloatArray:
        """About 1 mm of bright wall just outside the edge (cysts and vessels have one)."""
        grown = replace(self, axes=(self.axes[0] + 1.0, self.axes[1] + 1.0))
        inner = self.inside(x, z, scale)
        return np.asarray(grown.inside(x, z, scale) & ~inner, dtype=np.float32)

    @property
    def nominal_area_mm2(self) -> float:
        """Area of the shape in mm² (exact for an ellipse; lobes average out to first order)."""
        spread = sum(a * a for a, _ in self.lobes) / 2
        return math.pi * self.axes[0] * self.axes[1] * (1.0 + spread)


@dataclass(frozen=True)
class Scene:
    """Tissue in mm from the probe's apex: layers, organ texture, structures, fluid."""

    skin_mm: float
    fat_end: float
    muscle_end: float
    tilt: float
    wave: tuple[float, float, float]
    echoes: tuple[float, float, float]
    texture: FloatArray
    texture_mm: float
    kidney: Blob | None
    bone: Blob | None
    deep_line: float | None
    vessels: tuple[Blob, ...]
    fluids: tuple[Blob, ...] = field(default=())


def draw_scene(rng: np.random.Generator, g: SectorGeometry, fluid: bool | None) -> Scene:
    r0 = g.inner_radius * g.mm_per_pixel
    fat_end = r0 + float(rng.uniform(4.0, 16.0))
    muscle_end = fat_end + float(rng.uniform(6.0, 18.0))
    has_fluid = bool(rng.random() < 0.75) if fluid is None else fluid
    count = (1 if rng.random() < 0.7 else 2) if has_fluid else 0
    return Scene(
        skin_mm=r0 + 1.5,
        fat_end=fat_end,
        muscle_end=muscle_end,
        tilt=float(rng.uniform(-0.08, 0.08)),
        wave=(float(rng.uniform(0, 3)), float(rng.uniform(30, 80)), float(rng.uniform(0, 6.3))),
        echoes=(
            float(rng.uniform(0.2, 0.3)),
            float(rng.uniform(0.35, 0.5)),
            float(rng.uniform(0.45, 0.65)),
        ),
        texture=smooth_noise(rng, (96, 96), 2.0),
        texture_mm=r0 + g.depth_mm,
        kidney=_kidney(rng, g, muscle_end) if rng.random() < 0.5 else None,
        bone=_bone(rng, g, fat_end) if rng.random() < 0.25 and g.inner_radius > 10 else None,
        deep_line=(r0 + float(rng.uniform(0.6, 0.9)) * g.depth_mm) if rng.random() < 0.5 else None,
        vessels=tuple(_vessel(rng, g, muscle_end) for _ in range(int(rng.integers(0, 3)))),
        fluids=tuple(_fluid(rng, g, muscle_end) for _ in range(count)),
    )


def _place(
    rng: np.random.Generator, g: SectorGeometry, shallow: float, margin: float
) -> tuple[float, float]:
    """A point (x, z mm) in the fan between `shallow` mm and the bottom, `margin` mm inside."""
    r0 = g.inner_radius * g.mm_per_pixel
    deepest = r0 + g.depth_mm - margin
    radius = float(rng.uniform(min(shallow + margin, deepest - 1), deepest))
    spread = max(g.half_angle - margin / max(radius, 1.0), 0.05)
    angle = float(rng.uniform(-spread, spread))
    return radius * math.sin(angle), radius * math.cos(angle)


def _fluid(rng: np.random.Generator, g: SectorGeometry, muscle_end: float) -> Blob:
    if rng.random() < 0.45:  # a simple cyst: round, thin bright wall
        size = float(rng.uniform(8.0, 24.0))
        axes = (size, size * float(rng.uniform(0.7, 1.0)))
        x, z = _place(rng, g, muscle_end, max(axes) + 2)
        return Blob(
            x, z, axes, float(rng.uniform(0, math.pi)), (), True, float(rng.uniform(0.001, 0.004))
        )
    axes = (float(rng.uniform(12.0, 40.0)), float(rng.uniform(4.0, 14.0)))
    lobes = tuple((float(rng.uniform(0.0, 0.15)), float(rng.uniform(0, 6.3))) for _ in range(3))
    x, z = _place(rng, g, muscle_end, 0.6 * axes[0])
    return Blob(
        x, z, axes, float(rng.uniform(-0.6, 0.6)), lobes, False, float(rng.uniform(0.002, 0.01))
    )


def _vessel(rng: np.random.Generator, g: SectorGeometry, muscle_end: float) -> Blob:
    radius = float(rng.uniform(1.5, 3.0))
    x, z = _place(rng, g, muscle_end, 6.0)
    stretch = float(rng.uniform(1.0, 1.8))
    return Blob(x, z, (radius * stretch, radius), float(rng.uniform(0, math.pi)), (), True, 0.004)


def _kidney(rng: np.random.Generator, g: SectorGeometry, muscle_end: float) -> Blob:
    axes = (float(rng.uniform(30.0, 50.0)), float(rng.uniform(15.0, 25.0)))
    x, z = _place(rng, g, muscle_end + 10, 0.5 * axes[0])
    return Blob(x, z, axes, float(rng.uniform(-0.5, 0.5)), (), False, 0.3)


def _bone(rng: np.random.Generator, g: SectorGeometry, fat_end: float) -> Blob:
    depth = fat_end + float(rng.uniform(3.0, 10.0))
    angle = float(rng.uniform(0.5, 0.85)) * g.half_angle * float(rng.choice([-1, 1]))
    axes = (float(rng.uniform(4.0, 8.0)), float(rng.uniform(1.5, 2.5)))
    return Blob(depth * math.sin(angle), depth * math.cos(angle), axes, -angle, (), False, 6.0)


def draw_motion(
    rng: np.random.Generator, frames: int, frame_time_ms: float
) -> list[tuple[float, float]]:
    """Per frame (shift in mm downward, fluid scale): a slow breathing cycle."""
    amplitude = float(rng.uniform(1.0, 3.0))
    period_ms = float(rng.uniform(2500.0, 4500.0))
    phase = float(rng.uniform(0, 2 * math.pi))
    swell = float(rng.uniform(0.02, 0.06))
    out = []
    for frame in range(frames):
        cycle = math.sin(2 * math.pi * frame * frame_time_ms / period_ms + phase)
        out.append((amplitude * cycle if frames > 1 else 0.0, 1.0 + swell * cycle))
    return out if frames > 1 else [(0.0, 1.0)]


def fluid_mask(
    scene: Scene, g: SectorGeometry, shift: float, scale: float, *, clip: bool = True
) -> BoolArray:
    """Fluid on the output pixels (centres), clipped to the fan unless `clip` is False."""
    y, x = np.mgrid[0 : g.rows, 0 : g.columns].astype(np.float32)
    x_mm = (x - np.float32(g.apex_x)) * np.float32(g.mm_per_pixel)
    z_mm = (y - np.float32(g.apex_y)) * np.float32(g.mm_per_pixel)
    mask = np.zeros((g.rows, g.columns), dtype=np.bool_)
    for blob in scene.fluids:
        mask |= blob.inside(x_mm, z_mm - np.float32(shift), scale)
    return mask & g.mask() if clip else mask
