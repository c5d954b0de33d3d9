"""Synthetic frontal (PA) chest radiographs with findings whose extent is known exactly.

The picture is a sum of densities in mm space: body outline, lungs (air lowers the density),
mediastinum and heart (cancel the air), ribs, clavicles, spine, vessels; then the findings:
nodule/mass, pleural effusion (meniscus, blunted costophrenic angle), consolidation (patchy),
pneumothorax (absent lung markings outside a visceral pleural line) and cardiomegaly
(cardiothoracic ratio > 0.5). Each present finding comes with the mask of the pixels it changed,
so that an explanation heatmap can be checked for pointing at it. Exposure, noise, bit depth,
photometric interpretation, small rotation and anatomy sizes vary with the seed.

Images are drawn at up to 512 rows and resized, then noise is added at full size: a 2048-row
image costs little more than a 512-row one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from appliance.phantoms._draw import (
    BoolArray,
    FloatArray,
    Grid,
    bounding_box,
    lobulated_radius,
    segment_distance,
    smooth_noise,
    soft_step,
)
from appliance.samples import CR, DX_PRESENTATION, file_meta_for, sample_uid

CHEST_FINDINGS = (
    "lung_nodule",
    "pleural_effusion",
    "consolidation",
    "pneumothorax",
    "cardiomegaly",
)
_DRAW_ROWS = 512  # anatomy is drawn at most this tall, then resized
_AIR = 0.42  # density lost where the beam crosses aerated lung
_SOFT = 0.62  # density of the full soft-tissue thickness at the midline


@dataclass(frozen=True)
class ChestPhantom:
    """One synthetic radiograph: stored pixel values plus the truth about what is in it.

    `pixels` are the values as they go into Pixel Data (MONOCHROME1 already inverted), in
    `bits_stored` bits. `masks` and `boxes` ((x0, y0, x1, y1), inclusive) exist for every
    finding whose label is True. `window` is (centre, width) on stored values, or None when the
    file should carry no VOI window (readers then use the full range).
    """

    pixels: npt.NDArray[np.uint16]
    photometric: str
    bits_stored: int
    spacing_mm: float
    window: tuple[float, float] | None
    labels: dict[str, bool]
    masks: dict[str, BoolArray]
    boxes: dict[str, tuple[int, int, int, int]]
    cardiothoracic_ratio: float
    seed: int

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(frozen=True)
class _Thorax:
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
class _Layers:
    """Density components kept apart until the findings have changed them."""

    body: FloatArray
    lungs: dict[int, FloatArray]
    aerated: dict[int, FloatArray]
    heart: FloatArray
    bones: FloatArray
    markings: FloatArray
    extra: FloatArray
    masks: dict[str, FloatArray] = field(default_factory=dict)


def make_chest(
    seed: int,
    *,
    rows: int = 2048,
    findings: Mapping[str, bool] | None = None,
    prevalence: float = 0.3,
) -> ChestPhantom:
    """A radiograph drawn from `seed`; each finding is present with `prevalence` unless forced.

    `findings` forces labels by name (e.g. {"pneumothorax": True}); unknown names are errors.
    """
    unknown = set(findings or {}) - set(CHEST_FINDINGS)
    if unknown:
        raise ValueError(f"unknown chest findings {sorted(unknown)}; known: {CHEST_FINDINGS}")
    streams = _streams(seed)
    forced = dict(findings or {})
    labels: dict[str, bool] = {}
    for name in CHEST_FINDINGS:
        drawn = bool(streams["labels"].random() < prevalence)
        labels[name] = bool(forced[name]) if name in forced else drawn
    rng = streams["anatomy"]
    height_mm = float(rng.uniform(340.0, 400.0))
    aspect = float(rng.uniform(0.82, 1.0))
    columns = round(rows * aspect)
    spacing = height_mm / rows
    thorax = _draw_thorax(rng, columns * spacing, height_mm, labels["cardiomegaly"])
    draw_rows = min(rows, _DRAW_ROWS)
    draw_columns = round(draw_rows * columns / rows)
    grid = Grid.make(draw_rows, draw_columns, height_mm / draw_rows)
    layers = _anatomy(rng, grid, thorax)
    _add_findings(streams, grid, thorax, layers, labels)
    pose = _pose(streams["pose"], _compose(layers), layers.masks, (rows, columns))
    return _expose(streams["exposure"], *pose, labels, spacing, thorax.ctr, seed)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """One random stream per concern: forcing a finding on or off changes only its pixels,
    so an image with and without it can be compared (and its mask checked) pixel by pixel."""
    names = ("labels", "anatomy", "pose", "exposure", *CHEST_FINDINGS)
    return {name: np.random.default_rng([seed, index]) for index, name in enumerate(names)}


def _draw_thorax(
    rng: np.random.Generator, width_mm: float, height_mm: float, enlarged: bool
) -> _Thorax:
    half_width = float(rng.uniform(0.36, 0.42)) * width_mm
    apex = float(rng.uniform(0.11, 0.19)) * height_mm
    right_dome = apex + float(rng.uniform(0.52, 0.6)) * height_mm
    ctr = float(rng.uniform(0.54, 0.66) if enlarged else rng.uniform(0.36, 0.47))
    return _Thorax(
        cx=width_mm / 2 + float(rng.normal(0, 0.02 * width_mm)),
        half_width=half_width,
        apex=apex,
        domes=(right_dome, right_dome + float(rng.uniform(0.0, 0.05)) * height_mm),
        cp_drop=float(rng.uniform(0.07, 0.11)) * height_mm,
        medial=float(rng.uniform(0.1, 0.14)) * half_width,
        wall=float(rng.uniform(0.06, 0.14)) * half_width,
        ctr=ctr,
    )


# --- anatomy -----------------------------------------------------------------------------


def _anatomy(rng: np.random.Generator, grid: Grid, t: _Thorax) -> _Layers:
    knob = _knob(grid, t)
    lungs = {side: _lung(grid, t, side) * (1.0 - knob) for side in (-1, 1)}
    heart = _heart(grid, t)
    zeros = np.zeros(grid.shape, dtype=np.float32)
    layers = _Layers(
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
        bubble = _ellipse(grid, (t.cx + 0.45 * t.half_width, t.dome(1) + 22), (18, 10), 0.0)
        layers.extra -= np.float32(0.12) * bubble
    return layers


def _lung(grid: Grid, t: _Thorax, side: int, shrink: float = 0.0) -> FloatArray:
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


def _heart(grid: Grid, t: _Thorax) -> FloatArray:
    """The heart: soft tissue that hides the lung behind it; its width sets the CTR."""
    a = t.ctr * t.half_width
    b = 0.72 * a
    centre = (t.cx + 0.36 * a, (t.domes[0] + t.domes[1]) / 2 - 0.3 * b)
    return _ellipse(grid, centre, (a, b), 0.0)


def _knob(grid: Grid, t: _Thorax) -> FloatArray:
    """The aortic knob bulging into the upper left lung."""
    centre = (t.cx + 0.24 * t.half_width, t.apex + 0.3 * t.length)
    return _ellipse(grid, centre, (15, 14), 0.0)


def _ellipse(
    grid: Grid, centre: tuple[float, float], axes: tuple[float, float], angle: float
) -> FloatArray:
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy = grid.x - np.float32(centre[0]), grid.y - np.float32(centre[1])
    u = (dx * cos + dy * sin) / np.float32(axes[0])
    w = (-dx * sin + dy * cos) / np.float32(axes[1])
    radius = np.sqrt(u * u + w * w)
    return soft_step((1.0 - radius) * np.float32(min(axes)), 1.0)


def _body(grid: Grid, t: _Thorax) -> FloatArray:
    """Elliptical soft-tissue thickness: neck, shoulders, chest wall, upper abdomen."""
    nodes_y = [0.0, t.apex - 35, t.apex - 5, t.apex + 50, t.dome(-1), t.dome(-1) + 200]
    chest = t.half_width + t.wall
    nodes_w = [58.0, 62.0, t.half_width + 55, chest + 10, chest, chest - 12]
    half = np.interp(grid.y[:, 0], nodes_y, nodes_w).astype(np.float32)[:, None]
    ratio = (grid.x - np.float32(t.cx)) / half
    thickness = np.sqrt(np.clip(1.0 - ratio * ratio, 0.0, 1.0))
    return np.asarray(thickness**0.6, dtype=np.float32)


def _bones(rng: np.random.Generator, grid: Grid, t: _Thorax) -> FloatArray:
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
        bones += np.float32(0.12) * _ellipse(grid, head, (26, 28), 0.0)
    return bones + _spine(grid, t)


def _rows_between(grid: Grid, low: float, high: float) -> slice:
    """Row slice covering y in [low, high] mm: bones are drawn only where they can be."""
    step = grid.mm_per_pixel
    start = max(int(low / step) - 1, 0)
    stop = min(int(high / step) + 2, grid.shape[0])
    return slice(start, max(start, stop))


def _posterior_rib(
    grid: Grid, t: _Thorax, out: FloatArray, side: int, start: float, thick: float, bend: float
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


def _anterior_rib(grid: Grid, t: _Thorax, out: FloatArray, side: int, start: float) -> None:
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


def _clavicle(rng: np.random.Generator, grid: Grid, t: _Thorax, out: FloatArray, side: int) -> None:
    medial = (t.cx + side * 0.1 * t.half_width, t.apex + float(rng.uniform(0.0, 0.05)) * t.length)
    lateral = (
        t.cx + side * 1.08 * t.half_width,
        t.apex - float(rng.uniform(0.05, 0.12)) * t.length,
    )
    distance = segment_distance(grid.x, grid.y, medial, lateral)
    out += np.float32(0.11) * soft_step(np.float32(6.5) - distance, 0.8)


def _spine(grid: Grid, t: _Thorax) -> FloatArray:
    half = np.float32(0.11 * t.half_width)
    band = soft_step(half - np.abs(grid.x - np.float32(t.cx)), 1.5)
    discs = 0.8 + 0.2 * np.cos(grid.y * np.float32(2 * math.pi / 24.0))
    return np.asarray(np.float32(0.08) * band * discs, dtype=np.float32)


def _airways(rng: np.random.Generator, grid: Grid, t: _Thorax) -> FloatArray:
    carina = (t.cx + float(rng.normal(0, 3)), t.apex + 0.3 * t.length)
    tubes = soft_step(8.0 - segment_distance(grid.x, grid.y, (t.cx, 0.0), carina), 1.0)
    for side in (-1, 1):
        angle = math.radians(float(rng.uniform(25, 40)))
        end = (carina[0] + side * 35 * math.sin(angle), carina[1] + 35 * math.cos(angle))
        bronchus = soft_step(5.0 - segment_distance(grid.x, grid.y, carina, end), 1.0)
        tubes = np.maximum(tubes, bronchus)
    return np.asarray(-0.12 * tubes, dtype=np.float32)


def _hila(grid: Grid, t: _Thorax, lungs: dict[int, FloatArray]) -> FloatArray:
    out = np.zeros(grid.shape, dtype=np.float32)
    for side in (-1, 1):
        centre = (t.cx + side * 0.3 * t.half_width, t.apex + 0.42 * t.length)
        out += np.float32(0.08) * _ellipse(grid, centre, (16, 26), 0.0) * lungs[side]
    return out


def _markings(rng: np.random.Generator, grid: Grid, t: _Thorax) -> FloatArray:
    """Vessel-like network, denser toward the hila: zero crossings of smooth noise."""
    noise = smooth_noise(rng, grid.shape, 2.5 / grid.mm_per_pixel)
    ridges = np.exp(-((noise / np.float32(0.22)) ** 2))
    hilum_y = np.float32(t.apex + 0.42 * t.length)
    distance = np.hypot(
        np.abs(grid.x - np.float32(t.cx)) - np.float32(0.3 * t.half_width), grid.y - hilum_y
    )
    weight = np.exp(-distance / np.float32(70.0)) + np.float32(0.15)
    return np.asarray(np.float32(0.09) * ridges * weight, dtype=np.float32)


# --- findings ----------------------------------------------------------------------------


def _add_findings(
    streams: dict[str, np.random.Generator],
    grid: Grid,
    t: _Thorax,
    layers: _Layers,
    labels: dict[str, bool],
) -> None:
    if labels["pneumothorax"]:
        _pneumothorax(streams["pneumothorax"], grid, t, layers)
    if labels["pleural_effusion"]:
        _effusion(streams["pleural_effusion"], grid, t, layers)
    if labels["consolidation"]:
        _consolidation(streams["consolidation"], grid, t, layers)
    if labels["lung_nodule"]:
        _nodule(streams["lung_nodule"], grid, layers)
    if labels["cardiomegaly"]:
        below = soft_step(np.float32(t.dome(1) + 5) - grid.y, 1.0)
        layers.masks["cardiomegaly"] = layers.heart * below


def _open_lung(layers: _Layers, side: int) -> FloatArray:
    return np.asarray(layers.aerated[side] * (1.0 - layers.heart), dtype=np.float32)


def _pick_point(rng: np.random.Generator, grid: Grid, allowed: BoolArray) -> tuple[float, float]:
    """A random pixel centre (mm) among `allowed`, which must not be empty."""
    candidates = np.flatnonzero(allowed)
    index = int(candidates[rng.integers(candidates.size)])
    return float(grid.x.flat[index]), float(grid.y.flat[index])


def _nodule(rng: np.random.Generator, grid: Grid, layers: _Layers) -> None:
    side = int(rng.choice([-1, 1]))
    inside = _open_lung(layers, side)
    eroded = cv2.erode((inside > 0.9).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    x0, y0 = _pick_point(rng, grid, eroded if eroded.any() else inside > 0.5)
    dx, dy = grid.x - np.float32(x0), grid.y - np.float32(y0)
    radius = lobulated_radius(rng, np.arctan2(dy, dx), float(rng.uniform(10, 24)), 0.12)
    distance = np.hypot(dx, dy)
    dome = np.sqrt(np.clip(1.0 - (distance / radius) ** 2, 0.0, 1.0))
    blob = soft_step(radius - distance, 1.2) * (0.65 + 0.35 * dome)
    layers.extra += np.float32(rng.uniform(0.14, 0.24)) * blob
    layers.masks["lung_nodule"] = soft_step(radius - distance, 0.5)


def _effusion(rng: np.random.Generator, grid: Grid, t: _Thorax, layers: _Layers) -> None:
    sides = [-1, 1] if rng.random() < 0.25 else [int(rng.choice([-1, 1]))]
    total = np.zeros(grid.shape, dtype=np.float32)
    for side in sides:
        height = float(rng.uniform(0.2, 0.5)) * t.length
        cp = t.dome(side) + t.cp_drop
        v = np.float32(side) * (grid.x - np.float32(t.cx)) / np.float32(t.half_width)
        rise = np.clip((v - 0.25) / 0.75, 0.0, 1.0) ** 2
        top = np.float32(cp) - np.float32(height) * (0.55 + 0.45 * rise)
        depth = grid.y - top
        opacity = soft_step(depth, 2.5) * (0.8 + 0.2 * np.clip(depth / np.float32(height), 0, 1))
        opacity *= soft_step(1.1 - v, 0.02) * soft_step(v - 0.05, 0.02)
        before = layers.aerated[side].copy()
        layers.aerated[side] = before * (1.0 - opacity)
        layers.extra += np.float32(0.03) * opacity * before  # fluid is denser than tissue
        total = np.maximum(total, opacity * before * (1.0 - layers.heart))
    layers.masks["pleural_effusion"] = soft_step(total - 0.35, 0.02)


def _consolidation(rng: np.random.Generator, grid: Grid, t: _Thorax, layers: _Layers) -> None:
    side = int(rng.choice([-1, 1]))
    lung = _open_lung(layers, side)
    x0, y0 = _pick_point(rng, grid, lung > 0.9)
    axes = (float(rng.uniform(28, 60)), float(rng.uniform(28, 60)))
    envelope = _ellipse(grid, (x0, y0), axes, float(rng.uniform(0, math.pi)))
    patches = smooth_noise(rng, grid.shape, 6.0 / grid.mm_per_pixel)
    field = envelope * (0.7 + 0.3 * np.tanh(patches))
    opacity = np.clip((field - 0.35) / 0.3, 0.0, 1.0) * lung
    bronchi = np.exp(-((smooth_noise(rng, grid.shape, 1.5 / grid.mm_per_pixel) / 0.12) ** 2))
    strength = np.float32(rng.uniform(0.55, 0.85))
    layers.aerated[side] = layers.aerated[side] * (1.0 - strength * opacity)
    layers.extra -= np.float32(0.05) * bronchi * opacity
    layers.masks["consolidation"] = soft_step(opacity - 0.5, 0.02)


def _pneumothorax(rng: np.random.Generator, grid: Grid, t: _Thorax, layers: _Layers) -> None:
    side = int(rng.choice([-1, 1]))
    gap_mm = float(rng.uniform(16, 45))
    collapsed = _lung(grid, t, side, shrink=gap_mm)
    gap = np.clip(layers.lungs[side] - collapsed, 0.0, 1.0)
    sharp = _lung(grid, t, side, shrink=gap_mm - 0.3)
    near_gap = cv2.GaussianBlur(gap, (0, 0), sigmaX=3.0 / grid.mm_per_pixel) > 0.05
    pleural_line = np.float32(4.0) * sharp * (1.0 - sharp) * near_gap
    layers.markings = np.where(gap > 0.5, np.float32(0.0), layers.markings).astype(np.float32)
    layers.extra += np.float32(0.06) * pleural_line - np.float32(0.05) * gap
    layers.masks["pneumothorax"] = gap


def _compose(layers: _Layers) -> FloatArray:
    lungs = np.maximum(layers.lungs[-1], layers.lungs[1])
    aerated = np.maximum(layers.aerated[-1], layers.aerated[1]) * (1.0 - layers.heart)
    markings = layers.markings * lungs * (1.0 - layers.heart)
    density = np.float32(_SOFT) * layers.body - np.float32(_AIR) * aerated
    density += layers.bones * layers.body + markings + layers.extra * (layers.body > 0.05)
    return np.asarray(density, dtype=np.float32)


# --- pose, exposure, storage ---------------------------------------------------------------


def _pose(
    rng: np.random.Generator,
    density: FloatArray,
    masks: dict[str, FloatArray],
    size: tuple[int, int],
) -> tuple[FloatArray, dict[str, BoolArray]]:
    """Small rotation and shift of patient against detector, then resize to the output size."""
    rows, columns = density.shape
    angle = float(rng.uniform(-5.0, 5.0))
    shift = rng.uniform(-0.03, 0.03, 2) * np.array([columns, rows])
    matrix = cv2.getRotationMatrix2D((columns / 2, rows / 2), angle, 1.0)
    matrix[:, 2] += shift
    out_size = (size[1], size[0])

    def move(image: FloatArray, border: int) -> FloatArray:
        moved = cv2.warpAffine(
            image, matrix, (columns, rows), flags=cv2.INTER_LINEAR, borderMode=border
        )
        resized = cv2.resize(moved, out_size, interpolation=cv2.INTER_LINEAR)
        return np.asarray(resized, dtype=np.float32)

    moved_masks = {name: move(mask, cv2.BORDER_CONSTANT) > 0.5 for name, mask in masks.items()}
    return move(density, cv2.BORDER_REPLICATE), moved_masks


def _expose(
    rng: np.random.Generator,
    density: FloatArray,
    masks: dict[str, BoolArray],
    labels: dict[str, bool],
    spacing: float,
    ctr: float,
    seed: int,
) -> ChestPhantom:
    """Density -> stored values: contrast, gamma, heel effect, marker, noise, bit depth."""
    rows = density.shape[0]
    shown = np.clip((density + np.float32(rng.uniform(0.0, 0.08))) / np.float32(0.95), 0, 1)
    shown = shown ** np.float32(rng.uniform(0.8, 1.25))
    heel = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None] * np.float32(
        rng.uniform(-0.04, 0.04)
    )
    shown = shown * (1.0 + heel)
    _marker(shown, rng)
    bits = int(rng.choice([10, 12, 12, 14, 15, 16]))
    top = float(2**bits - 1)
    offset, span = float(rng.uniform(0.0, 0.05)) * top, float(rng.uniform(0.6, 0.93)) * top
    noise = rng.standard_normal(shown.shape, dtype=np.float32) * np.float32(
        rng.uniform(0.004, 0.02)
    )
    values = np.clip(np.float32(offset) + (shown + noise) * np.float32(span), 0, top)
    photometric = "MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2"
    if photometric == "MONOCHROME1":
        values = np.float32(top) - values
    pixels = np.rint(values).astype(np.uint16)
    window = _window(rng, pixels) if rng.random() < 0.7 else None
    present = {name: masks[name] for name in CHEST_FINDINGS if labels[name] and masks[name].any()}
    return ChestPhantom(
        pixels=pixels,
        photometric=photometric,
        bits_stored=bits,
        spacing_mm=spacing,
        window=window,
        labels={name: name in present for name in CHEST_FINDINGS},
        masks=present,
        boxes={name: bounding_box(mask) for name, mask in present.items()},
        cardiothoracic_ratio=ctr,
        seed=seed,
    )


def _marker(shown: FloatArray, rng: np.random.Generator) -> None:
    """The lead 'R' marker on the patient's right (the image's left on a PA view)."""
    rows, columns = shown.shape
    scale = rows / 700.0
    origin = (int(columns * rng.uniform(0.04, 0.1)), int(rows * rng.uniform(0.06, 0.12)))
    ink = np.zeros(shown.shape, dtype=np.uint8)  # OpenCV draws text on 8-bit images only
    thickness = max(1, round(2 * scale))
    cv2.putText(ink, "R", origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    alpha = ink.astype(np.float32) / np.float32(255.0)
    shown *= 1.0 - alpha
    shown += alpha


def _window(rng: np.random.Generator, pixels: npt.NDArray[np.uint16]) -> tuple[float, float]:
    """A VOI window as a modality would choose it: the useful range, a little off-centre."""
    sample = pixels[:: max(1, pixels.shape[0] // 256), :: max(1, pixels.shape[1] // 256)]
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
    width = max((high - low) * float(rng.uniform(0.9, 1.15)), 2.0)
    centre = (high + low) / 2 + float(rng.uniform(-0.05, 0.05)) * width
    return round(centre, 1), round(width, 1)


def chest_dataset(
    phantom: ChestPhantom,
    *,
    modality: str = "DX",
    patient_id: str = "SYNCXR0001",
    patient_name: str = "SYNTHETIC^CHEST",
    study_key: str = "chest-study-1",
) -> Dataset:
    """The phantom as a valid CR or DX (for presentation) instance, PA view, in memory."""
    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be 'CR' or 'DX', got {modality!r}")
    ds = Dataset()
    ds.SOPClassUID = CR if modality == "CR" else DX_PRESENTATION
    ds.SOPInstanceUID = sample_uid("chest", phantom.seed, study_key, modality, "instance")
    ds.StudyInstanceUID = sample_uid(study_key, "study")
    ds.SeriesInstanceUID = sample_uid(study_key, "chest", modality, "series")
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.AccessionNumber = f"CXR{phantom.seed:06d}"[:16]
    ds.StudyDate, ds.StudyTime = "20261101", "093000"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if modality == "DX":  # the DX Image module's type 1 attributes
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        # -1: higher values mean less X-ray intensity (bone bright), as MONOCHROME2 shows it.
        ds.PixelIntensityRelationshipSign = -1 if phantom.photometric == "MONOCHROME2" else 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    spacing = f"{phantom.spacing_mm:.6f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    _chest_pixels(ds, phantom)
    ds.file_meta = file_meta_for(ds)
    return ds


def _chest_pixels(ds: Dataset, phantom: ChestPhantom) -> None:
    ds.Rows, ds.Columns, ds.SamplesPerPixel = phantom.rows, phantom.columns, 1
    ds.PhotometricInterpretation = phantom.photometric
    ds.BitsAllocated, ds.BitsStored = 16, phantom.bits_stored
    ds.HighBit, ds.PixelRepresentation = phantom.bits_stored - 1, 0
    if phantom.window is not None:
        ds.WindowCenter, ds.WindowWidth = phantom.window
        ds.VOILUTFunction = "LINEAR"
    ds.PixelData = np.ascontiguousarray(phantom.pixels, dtype="<u2").tobytes()
