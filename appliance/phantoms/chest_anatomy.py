"""The anatomy of a synthetic frontal chest radiograph, in mm: the thorax's proportions drawn
from a seed, and the density layers (body, lungs, heart, bones, airways, hila, lung markings)
kept apart until the findings have changed them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from appliance.phantoms._draw import FloatArray, Grid, segment_distance, smooth_noise, soft_step


@dataclass(frozen=True)
class Thorax:
    """Anatomy in mm; side -1 is the image's left (the patient's right on a PA view)."""

    cx: float
    half_width: float
    apex: float
    domes: tuple[float, float]
    cp_drop: float
    medial: float
    wall: float
    ctr: float

    @property
    def length(self) -> float:
        return (self.domes[0] + self.domes[1]) / 2 - self.apex

    def dome(self, side: int) -> float:
        return self.domes[0] if side < 0 else self.domes[1]


@dataclass
class Layers:
    """Density components kept apart until the findings have changed them."""

    body: FloatArray
    lungs: dict[int, FloatArray]
    aerated: dict[int, FloatArray]
    heart: FloatArray
    bones: FloatArray
    markings: FloatArray
    extra: FloatArray
    masks: dict[str, FloatArray] = field(default_factory=dict)


def draw_thorax(
    rng: np.random.Generator, width_mm: float, height_mm: float, enlarged: bool
) -> Thorax:
    half_width = float(rng.uniform(0.36, 0.42)) * width_mm
    apex = float(rng.uniform(0.11, 0.19)) * height_mm
    right_dome = apex + float(rng.uniform(0.52, 0.6)) * height_mm
    ctr = float(rng.uniform(0.54, 0.66) if enlarged else rng.uniform(0.36, 0.47))
    return Thorax(
        cx=width_mm / 2 + float(rng.normal(0, 0.02 * width_mm)),
        half_width=half_width,
        apex=apex,
        domes=(right_dome, right_dome + float(rng.uniform(0.0, 0.05)) * height_mm),
        cp_drop=float(rng.uniform(0.07, 0.11)) * height_mm,
        medial=float(rng.uniform(0.1, 0.14)) * half_width,
        wall=float(rng.uniform(0.06, 0.14)) * half_width,
        ctr=ctr,
    )


def anatomy(rng: np.random.Generator, grid: Grid, t: Thorax) -> Layers:
    knob = _knob(grid, t)
    lungs = {side: lung_mask(grid, t, side) * (1.0 - knob) for side in (-1, 1)}
    heart = _heart(grid, t)
    zeros = np.zeros(grid.shape, dtype=np.float32)
    layers = Layers(
        body=_body(grid, t),
        lungs=lungs,
        aerated={side: lung.copy() for side, lung in lungs.items()},
        heart=heart,
        bones=_bones(rng, grid, t),
        markings=_markings(rng, grid, t),
        extra=zeros.copy(),
    )
    layers.extra += _airways(rng, grid, t) + _hila(grid, t, lungs)
    if rng.random() < 0.6:  # gastric bubble under the left dome
        bubble = ellipse(grid, (t.cx + 0.45 * t.half_width, t.dome(1) + 22), (18, 10), 0.0)
        layers.extra -= np.float32(0.12) * bubble
    return layers


def lung_mask(grid: Grid, t: Thorax, side: int, shrink: float = 0.0) -> FloatArray:
    """Soft mask of one lung; `shrink` mm retracts the apex and lateral border (collapse)."""
    x, y = grid.x, grid.y
    along = np.clip((y - t.apex) / np.float32(0.45 * t.length), 0.0, 1.0)
    lateral = np.float32(t.half_width) * (0.22 + 0.78 * np.sqrt(along))
    if shrink:
        fading = 1.0 - 0.7 * np.clip((y - t.apex) / np.float32(t.length), 0.0, 1.0)
        lateral = lateral - np.float32(shrink) * fading
    reach = np.float32(side) * (x - np.float32(t.cx))
    v = reach / np.float32(t.half_width)
    lateral_rise = np.clip((v - 0.45) / 0.55, 0.0, 1.0) ** 2
    medial_rise = np.clip((0.45 - v) / 0.45, 0.0, 1.0) ** 2
    floor = t.dome(side) + t.cp_drop * (lateral_rise + 0.25 * medial_rise)
    upper = np.clip((np.float32(t.apex + 0.5 * t.length) - y) / np.float32(0.3 * t.length), 0, 1)
    medial = np.float32(t.medial) * (1.0 + 0.9 * upper)  # the upper mediastinum is wider
    edge = 1.2
    mask = soft_step(lateral - reach, edge) * soft_step(reach - medial, edge)
    mask *= soft_step(y - np.float32(t.apex + shrink), edge) * soft_step(floor - y, edge)
    return np.asarray(mask, dtype=np.float32)


def _heart(grid: Grid, t: Thorax) -> FloatArray:
    """The heart: soft tissue that hides the lung behind it; its width sets the CTR."""
    a = t.ctr * t.half_width
    b = 0.72 * a
    centre = (t.cx + 0.36 * a, (t.domes[0] + t.domes[1]) / 2 - 0.3 * b)
    return ellipse(grid, centre, (a, b), 0.0)


def _knob(grid: Grid, t: Thorax) -> FloatArray:
    """The aortic knob bulging into the upper left lung."""
    centre = (t.cx + 0.24 * t.half_width, t.apex + 0.3 * t.length)
    return ellipse(grid, centre, (15, 14), 0.0)


def ellipse(
    grid: Grid, centre: tuple[float, float], axes: tuple[float, float], angle: float
) -> FloatArray:
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy = grid.x - np.float32(centre[0]), grid.y - np.float32(centre[1])
    u = (dx * cos + dy * sin) / np.float32(axes[0])
    w = (-dx * sin + dy * cos) / np.float32(axes[1])
    radius = np.sqrt(u * u + w * w)
    return soft_step((1.0 - radius) * np.float32(min(axes)), 1.0)


def _body(grid: Grid, t: Thorax) -> FloatArray:
    """Elliptical soft-tissue thickness: neck, shoulders, chest wall, upper abdomen."""
    nodes_y = [0.0, t.apex - 35, t.apex - 5, t.apex + 50, t.dome(-1), t.dome(-1) + 200]
    chest = t.half_width + t.wall
    nodes_w = [58.0, 62.0, t.half_width + 55, chest + 10, chest, chest - 12]
    half = np.interp(grid.y[:, 0], nodes_y, nodes_w).astype(np.float32)[:, None]
    ratio = (grid.x - np.float32(t.cx)) / half
    thickness = np.sqrt(np.clip(1.0 - ratio * ratio, 0.0, 1.0))
    return np.asarray(thickness**0.6, dtype=np.float32)


def _bones(rng: np.random.Generator, grid: Grid, t: Thorax) -> FloatArray:
    bones = np.zeros(grid.shape, dtype=np.float32)
    spacing = float(rng.uniform(0.095, 0.11)) * t.length
    thickness = float(rng.uniform(8.0, 11.0))
    for side in (-1, 1):
        for i in range(10):
            start = t.apex - 6 + i * spacing + float(rng.normal(0, 1.5))
            _posterior_rib(grid, t, bones, side, start, thickness, 1.0 + 0.25 * i / 10)
        for i in range(6):
            _anterior_rib(grid, t, bones, side, t.apex + 0.05 * t.length + i * 1.3 * spacing)
        _clavicle(rng, grid, t, bones, side)
        head = (t.cx + side * (t.half_width + 52), t.apex - 0.04 * t.length)
        bones += np.float32(0.12) * ellipse(grid, head, (26, 28), 0.0)
    return bones + _spine(grid, t)


def _rows_between(grid: Grid, low: float, high: float) -> slice:
    """Row slice covering y in [low, high] mm: bones are drawn only where they can be."""
    step = grid.mm_per_pixel
    start = max(int(low / step) - 1, 0)
    stop = min(int(high / step) + 2, grid.shape[0])
    return slice(start, max(start, stop))


def _posterior_rib(
    grid: Grid, t: Thorax, out: FloatArray, side: int, start: float, thick: float, bend: float
) -> None:
    rows = _rows_between(grid, start - 0.05 * t.length - thick, start + 0.2 * t.length + thick)
    x, y = grid.x[rows], grid.y[rows]
    v = np.float32(side) * (x - np.float32(t.cx)) / np.float32(t.half_width)
    centre = np.float32(start) + np.float32(t.length * bend) * (-0.04 * v + 0.22 * v * v)
    distance = np.abs(y - centre)
    band = soft_step(np.float32(thick / 2) - distance, 0.6)
    cortex = np.exp(-(((distance - np.float32(thick / 2 - 0.8)) / np.float32(0.9)) ** 2))
    extent = soft_step(v - 0.1, 0.02) * soft_step(1.14 - v, 0.03)
    out[rows] += (np.float32(0.045) * band + np.float32(0.045) * cortex * band) * extent


def _anterior_rib(grid: Grid, t: Thorax, out: FloatArray, side: int, start: float) -> None:
    rows = _rows_between(grid, start - 8, start + 0.25 * t.length + 8)
    x, y = grid.x[rows], grid.y[rows]
    v = np.float32(side) * (x - np.float32(t.cx)) / np.float32(t.half_width)
    centre = (
        np.float32(start)
        + np.float32(0.22 * t.length) * np.clip((1.05 - v) / 0.7, 0.0, None) ** 1.3
    )
    band = soft_step(np.float32(4.5) - np.abs(y - centre), 0.8)
    extent = soft_step(v - 0.38, 0.03) * soft_step(1.08 - v, 0.03)
    out[rows] += np.float32(0.03) * band * extent


def _clavicle(rng: np.random.Generator, grid: Grid, t: Thorax, out: FloatArray, side: int) -> None:
    medial = (t.cx + side * 0.1 * t.half_width, t.apex + float(rng.uniform(0.0, 0.05)) * t.length)
    lateral = (
        t.cx + side * 1.08 * t.half_width,
        t.apex - float(rng.uniform(0.05, 0.12)) * t.length,
    )
    distance = segment_distance(grid.x, grid.y, medial, lateral)
    out += np.float32(0.11) * soft_step(np.float32(6.5) - distance, 0.8)


def _spine(grid: Grid, t: Thorax) -> FloatArray:
    half = np.float32(0.11 * t.half_width)
    band = soft_step(half - np.abs(grid.x - np.float32(t.cx)), 1.5)
    discs = 0.8 + 0.2 * np.cos(grid.y * np.float32(2 * math.pi / 24.0))
    return np.asarray(np.float32(0.08) * band * discs, dtype=np.float32)


def _airways(rng: np.random.Generator, grid: Grid, t: Thorax) -> FloatArray:
    carina = (t.cx + float(rng.normal(0, 3)), t.apex + 0.3 * t.length)
    tubes = soft_step(8.0 - segment_distance(grid.x, grid.y, (t.cx, 0.0), carina), 1.0)
    for side in (-1, 1):
        angle = math.radians(float(rng.uniform(25, 40)))
        end = (carina[0] + side * 35 * math.sin(angle), carina[1] + 35 * math.cos(angle))
        bronchus = soft_step(5.0 - segment_distance(grid.x, grid.y, carina, end), 1.0)
        tubes = np.maximum(tubes, bronchus)
    return np.asarray(-0.12 * tubes, dtype=np.float32)


def _hila(grid: Grid, t: Thorax, lungs: dict[int, FloatArray]) -> FloatArray:
    out = np.zeros(grid.shape, dtype=np.float32)
    for side in (-1, 1):
        centre = (t.cx + side * 0.3 * t.half_width, t.apex + 0.42 * t.length)
        out += np.float32(0.08) * ellipse(grid, centre, (16, 26), 0.0) * lungs[side]
    return out


def _markings(rng: np.random.Generator, grid: Grid, t: Thorax) -> FloatArray:
    """Vessel-like network, denser toward the hila: zero crossings of smooth noise."""
    noise = smooth_noise(rng, grid.shape, 2.5 / grid.mm_per_pixel)
    ridges = np.exp(-((noise / np.float32(0.22)) ** 2))
    hilum_y = np.float32(t.apex + 0.42 * t.length)
    distance = np.hypot(
        np.abs(grid.x - np.float32(t.cx)) - np.float32(0.3 * t.half_width), grid.y - hilum_y
    )
    weight = np.exp(-distance / np.float32(70.0)) + np.float32(0.15)
    return np.asarray(np.float32(0.09) * ridges * weight, dtype=np.float32)
