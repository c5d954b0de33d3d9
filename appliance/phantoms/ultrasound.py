"""Synthetic B-mode ultrasound: sector images and clips with fluid whose area is known exactly.

A scene (tissue layers, an organ with texture, a kidney-like structure, vessels, bone with an
acoustic shadow, anechoic fluid: cysts and free fluid) is sampled along the beam lines of a
curvilinear or phased-array probe. Along each line the echo is multiplied by Rayleigh speckle
and by the round-trip attenuation, which time-gain compensation only partly undoes: fluid
attenuates little, so the tissue behind it comes out brighter (posterior enhancement), and
bone attenuates a lot (shadow). Log compression and scan conversion then give the familiar fan,
with burned-in text and a depth ruler outside it, as a real scanner's video output has.

The fluid mask is evaluated on the output pixels from the same shapes, clipped to the fan, so
`fluid_area_mm2` is the area a perfect segmentation would report with the region's spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from appliance.phantoms._draw import BoolArray, FloatArray, smooth_noise
from appliance.samples import US, US_MULTIFRAME, file_meta_for, sample_uid

UNITS_CM = 3  # Physical Units X/Y Direction: centimetres (PS3.3 C.8.5.5.1.15)
_TOP_DB = 14.0  # echo level (dB) shown white before the per-image gain


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


@dataclass(frozen=True)
class _Blob:
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
class _Scene:
    """Tissue in mm from the probe's apex: layers, organ texture, structures, fluid."""

    skin_mm: float
    fat_end: float
    muscle_end: float
    tilt: float
    wave: tuple[float, float, float]
    echoes: tuple[float, float, float]
    texture: FloatArray
    texture_mm: float
    kidney: _Blob | None
    bone: _Blob | None
    deep_line: float | None
    vessels: tuple[_Blob, ...]
    fluids: tuple[_Blob, ...] = field(default=())


@dataclass(frozen=True)
class UltrasoundPhantom:
    """One frame: pixels (rows x columns x 3 RGB, or rows x columns gray), fluid truth, fan.

    `fluid_area_mm2` is the mask's pixel count times the pixel area. `nominal_area_mm2` is the
    area of the drawn shapes, given only when every one lies wholly inside the fan.
    """

    pixels: npt.NDArray[np.uint8]
    fluid_mask: BoolArray
    fluid_area_mm2: float
    nominal_area_mm2: float | None
    geometry: SectorGeometry
    seed: int

    @property
    def has_fluid(self) -> bool:
        return bool(self.fluid_mask.any())


@dataclass(frozen=True)
class UltrasoundClip:
    """Frames (F x rows x columns x 3, or F x rows x columns) of one scene breathing."""

    frames: npt.NDArray[np.uint8]
    fluid_masks: BoolArray
    fluid_areas_mm2: tuple[float, ...]
    geometry: SectorGeometry
    frame_time_ms: float
    seed: int


def make_ultrasound(
    seed: int,
    *,
    rows: int = 480,
    columns: int = 640,
    fluid: bool | None = None,
    color: bool = True,
    mm_per_pixel: float | None = None,
) -> UltrasoundPhantom:
    """One B-mode frame drawn from `seed`; fluid is present in 3 of 4 unless `fluid` forces it.

    The pixel size follows from a random depth (8-18 cm) unless `mm_per_pixel` sets it; the
    anatomy is in mm, so a finer pixel shows less depth.
    """
    rng, geometry, scene = _setup(seed, rows, columns, fluid, mm_per_pixel)
    clip = _render(rng, geometry, scene, [(0.0, 1.0)], 40.0, color, seed)
    return UltrasoundPhantom(
        pixels=clip.frames[0],
        fluid_mask=clip.fluid_masks[0],
        fluid_area_mm2=clip.fluid_areas_mm2[0],
        nominal_area_mm2=_nominal_area(scene, geometry),
        geometry=geometry,
        seed=seed,
    )


def make_ultrasound_clip(
    seed: int,
    *,
    frames: int = 16,
    frame_time_ms: float = 40.0,
    rows: int = 480,
    columns: int = 640,
    fluid: bool | None = None,
    color: bool = True,
    mm_per_pixel: float | None = None,
) -> UltrasoundClip:
    """A clip of one scene: tissue and fluid move with breathing, speckle partly decorrelates."""
    rng, geometry, scene = _setup(seed, rows, columns, fluid, mm_per_pixel)
    motion = _draw_motion(rng, frames, frame_time_ms)
    return _render(rng, geometry, scene, motion, frame_time_ms, color, seed)


def _setup(
    seed: int, rows: int, columns: int, fluid: bool | None, mm_per_pixel: float | None
) -> tuple[np.random.Generator, SectorGeometry, _Scene]:
    if mm_per_pixel is not None and not 0.05 <= mm_per_pixel <= 2.0:
        raise ValueError(f"mm_per_pixel must be within 0.05..2.0, got {mm_per_pixel}")
    rng = np.random.default_rng(seed)
    geometry = _draw_geometry(rng, rows, columns)
    if mm_per_pixel is not None:
        geometry = replace(geometry, mm_per_pixel=mm_per_pixel)
    return rng, geometry, _draw_scene(rng, geometry, fluid)


def _render(
    rng: np.random.Generator,
    geometry: SectorGeometry,
    scene: _Scene,
    motion: list[tuple[float, float]],
    frame_time_ms: float,
    color: bool,
    seed: int,
) -> UltrasoundClip:
    overlay = _overlay(rng, geometry)
    sampler = _BeamSampler(geometry)
    speckle = sampler.fresh_speckle(rng)
    gain = (float(rng.uniform(-4.0, 4.0)), float(rng.uniform(40.0, 55.0)))
    pictures, masks = [], []
    for shift, scale in motion:
        speckle = 0.8 * speckle + 0.6 * sampler.fresh_speckle(rng)
        shown = sampler.render(scene, speckle, rng, gain, shift, scale)
        pictures.append(_compose(shown, overlay, color))
        masks.append(_fluid_mask(scene, geometry, shift, scale))
    mask_stack = np.stack(masks)
    area = geometry.mm_per_pixel**2
    return UltrasoundClip(
        frames=np.stack(pictures),
        fluid_masks=mask_stack,
        fluid_areas_mm2=tuple(float(m.sum()) * area for m in mask_stack),
        geometry=geometry,
        frame_time_ms=frame_time_ms,
        seed=seed,
    )


def _nominal_area(scene: _Scene, geometry: SectorGeometry) -> float | None:
    """The drawn shapes' area, when they lie wholly inside the fan and do not overlap."""
    if not scene.fluids:
        return 0.0
    masks = [
        _fluid_mask(replace(scene, fluids=(blob,)), geometry, 0.0, 1.0, clip=False)
        for blob in scene.fluids
    ]
    union = np.logical_or.reduce(masks)
    if (union & ~geometry.mask()).any() or int(union.sum()) != sum(int(m.sum()) for m in masks):
        return None
    return sum(blob.nominal_area_mm2 for blob in scene.fluids)


# --- geometry and scene ------------------------------------------------------------------


def _draw_geometry(rng: np.random.Generator, rows: int, columns: int) -> SectorGeometry:
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


def _draw_scene(rng: np.random.Generator, g: SectorGeometry, fluid: bool | None) -> _Scene:
    r0 = g.inner_radius * g.mm_per_pixel
    fat_end = r0 + float(rng.uniform(4.0, 16.0))
    muscle_end = fat_end + float(rng.uniform(6.0, 18.0))
    has_fluid = bool(rng.random() < 0.75) if fluid is None else fluid
    count = (1 if rng.random() < 0.7 else 2) if has_fluid else 0
    return _Scene(
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


def _fluid(rng: np.random.Generator, g: SectorGeometry, muscle_end: float) -> _Blob:
    if rng.random() < 0.45:  # a simple cyst: round, thin bright wall
        size = float(rng.uniform(8.0, 24.0))
        axes = (size, size * float(rng.uniform(0.7, 1.0)))
        x, z = _place(rng, g, muscle_end, max(axes) + 2)
        return _Blob(
            x, z, axes, float(rng.uniform(0, math.pi)), (), True, float(rng.uniform(0.001, 0.004))
        )
    axes = (float(rng.uniform(12.0, 40.0)), float(rng.uniform(4.0, 14.0)))
    lobes = tuple((float(rng.uniform(0.0, 0.15)), float(rng.uniform(0, 6.3))) for _ in range(3))
    x, z = _place(rng, g, muscle_end, 0.6 * axes[0])
    return _Blob(
        x, z, axes, float(rng.uniform(-0.6, 0.6)), lobes, False, float(rng.uniform(0.002, 0.01))
    )


def _vessel(rng: np.random.Generator, g: SectorGeometry, muscle_end: float) -> _Blob:
    radius = float(rng.uniform(1.5, 3.0))
    x, z = _place(rng, g, muscle_end, 6.0)
    stretch = float(rng.uniform(1.0, 1.8))
    return _Blob(x, z, (radius * stretch, radius), float(rng.uniform(0, math.pi)), (), True, 0.004)


def _kidney(rng: np.random.Generator, g: SectorGeometry, muscle_end: float) -> _Blob:
    axes = (float(rng.uniform(30.0, 50.0)), float(rng.uniform(15.0, 25.0)))
    x, z = _place(rng, g, muscle_end + 10, 0.5 * axes[0])
    return _Blob(x, z, axes, float(rng.uniform(-0.5, 0.5)), (), False, 0.3)


def _bone(rng: np.random.Generator, g: SectorGeometry, fat_end: float) -> _Blob:
    depth = fat_end + float(rng.uniform(3.0, 10.0))
    angle = float(rng.uniform(0.5, 0.85)) * g.half_angle * float(rng.choice([-1, 1]))
    axes = (float(rng.uniform(4.0, 8.0)), float(rng.uniform(1.5, 2.5)))
    return _Blob(depth * math.sin(angle), depth * math.cos(angle), axes, -angle, (), False, 6.0)


def _draw_motion(
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


# --- acoustics along the beam lines -------------------------------------------------------


class _BeamSampler:
    """The polar grid of samples along the beam lines, and scan conversion back to pixels."""

    def __init__(self, g: SectorGeometry) -> None:
        self.geometry = g
        self.samples = math.ceil(g.outer_radius - g.inner_radius) + 1
        self.lines = 256
        radius = np.linspace(g.inner_radius, g.outer_radius, self.samples, dtype=np.float32)
        angle = np.linspace(-g.half_angle, g.half_angle, self.lines, dtype=np.float32)
        r, a = np.meshgrid(radius, angle, indexing="ij")
        self.x_mm = np.asarray(r * np.sin(a) * np.float32(g.mm_per_pixel), dtype=np.float32)
        self.z_mm = np.asarray(r * np.cos(a) * np.float32(g.mm_per_pixel), dtype=np.float32)
        self.depth_mm = np.asarray(
            (r - np.float32(g.inner_radius)) * g.mm_per_pixel, dtype=np.float32
        )
        self.step_mm = float(radius[1] - radius[0]) * g.mm_per_pixel
        self.maps = self._scan_maps()

    def _scan_maps(self) -> tuple[FloatArray, FloatArray]:
        g = self.geometry
        y, x = np.mgrid[0 : g.rows, 0 : g.columns].astype(np.float32)
        radius, angle = g.polar(x, y)
        row = (radius - np.float32(g.inner_radius)) * np.float32(
            (self.samples - 1) / (g.outer_radius - g.inner_radius)
        )
        column = (angle + np.float32(g.half_angle)) * np.float32(
            (self.lines - 1) / (2 * g.half_angle)
        )
        outside = ~g.mask()
        row[outside], column[outside] = -10.0, -10.0
        return np.asarray(column, dtype=np.float32), np.asarray(row, dtype=np.float32)

    def fresh_speckle(self, rng: np.random.Generator) -> npt.NDArray[np.complex64]:
        """Complex Gaussian scatter, blurred into the pulse's cell (longer across the beam)."""
        shape = (self.samples, self.lines)
        parts = [
            cv2.GaussianBlur(
                rng.standard_normal(shape, dtype=np.float32), (0, 0), sigmaX=1.1, sigmaY=0.9
            )
            for _ in range(2)
        ]
        return np.asarray(parts[0] + 1j * parts[1], dtype=np.complex64)

    def render(
        self,
        scene: _Scene,
        speckle: npt.NDArray[np.complex64],
        rng: np.random.Generator,
        gain: tuple[float, float],
        shift: float,
        scale: float,
    ) -> npt.NDArray[np.uint8]:
        """One frame: echo x speckle x attenuation, log-compressed and scan-converted."""
        echo, attenuation = _acoustics(scene, self.x_mm, self.z_mm - np.float32(shift), scale)
        loss_db = np.cumsum(attenuation, axis=0) * np.float32(0.35 * self.step_mm)
        tgc_db = self.depth_mm * np.float32(0.35 * 0.93)
        envelope = np.abs(speckle) / np.float32(np.abs(speckle).mean())
        signal = echo * envelope * np.power(np.float32(10.0), (tgc_db - loss_db) / 20)
        floor = np.abs(self.fresh_speckle(rng)) * np.float32(0.006)
        level_db = 20 * np.log10(signal + floor + np.float32(1e-6))
        top, dynamic_range = _TOP_DB + gain[0], gain[1]
        shown = np.clip(1.0 + (level_db - np.float32(top)) / np.float32(dynamic_range), 0, 1)
        polar = np.rint(shown * 255).astype(np.uint8)
        columns, rows = self.maps
        converted = cv2.remap(
            polar, columns, rows, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        return np.asarray(converted, dtype=np.uint8)


def _acoustics(
    scene: _Scene, x: FloatArray, z: FloatArray, scale: float
) -> tuple[FloatArray, FloatArray]:
    """Echo strength and attenuation (relative to soft tissue) at points in mm."""
    depth = np.hypot(x, z)
    amplitude, wavelength, phase = scene.wave
    undulation = np.float32(amplitude) * np.sin(x / np.float32(wavelength) + np.float32(phase))
    level = depth - np.float32(scene.tilt) * x - undulation
    fat, muscle, organ = scene.echoes
    echo = np.where(level < scene.fat_end, fat, np.where(level < scene.muscle_end, muscle, organ))
    grain = np.clip(1.0 + 0.35 * _texture(scene, x, z), 0.3, None)
    echo = echo * grain + _interfaces(scene, level, x)
    attenuation = np.where(level < scene.fat_end, 0.8, 1.0).astype(np.float32)
    echo, attenuation = _structures(scene, x, z, echo, attenuation, scale)
    return np.asarray(echo, dtype=np.float32), attenuation


def _texture(scene: _Scene, x: FloatArray, z: FloatArray) -> FloatArray:
    size = scene.texture.shape[0]
    per_mm = np.float32((size - 1) / (2 * scene.texture_mm))
    columns = (x + np.float32(scene.texture_mm)) * per_mm
    rows = z * per_mm * np.float32(2.0)
    sampled = cv2.remap(
        scene.texture, columns, rows % (size - 1), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    return np.asarray(sampled, dtype=np.float32)


def _interfaces(scene: _Scene, level: FloatArray, x: FloatArray) -> FloatArray:
    """Bright specular lines: skin, fascia, organ capsule, a deep boundary, fat septa."""
    lines = np.zeros_like(level)
    for at, strength in ((scene.skin_mm, 2.0), (scene.fat_end, 1.2), (scene.muscle_end, 2.5)):
        lines += np.float32(strength) * np.exp(-(((level - np.float32(at)) / 0.7) ** 2))
    if scene.deep_line is not None:
        bent = level + np.float32(0.002) * x * x
        lines += np.float32(2.0) * np.exp(-(((bent - np.float32(scene.deep_line)) / 1.0) ** 2))
    in_muscle = (level > scene.fat_end) & (level < scene.muscle_end)
    striations = np.float32(0.4) * (np.cos(level * np.float32(2.2)) > 0.8) * in_muscle
    return np.asarray(lines + striations, dtype=np.float32)


def _structures(
    scene: _Scene,
    x: FloatArray,
    z: FloatArray,
    echo: FloatArray,
    attenuation: FloatArray,
    scale: float,
) -> tuple[FloatArray, FloatArray]:
    if scene.kidney is not None:
        kidney = scene.kidney
        cortex = kidney.inside(x, z)
        sinus = replace(kidney, axes=(kidney.axes[0] * 0.55, kidney.axes[1] * 0.4)).inside(x, z)
        echo = np.where(cortex, np.float32(0.3), echo)
        echo = np.where(sinus, np.float32(1.1), echo) + np.float32(1.5) * kidney.ring(x, z)
    if scene.bone is not None:
        bone = scene.bone.inside(x, z)
        echo = np.where(bone, np.float32(6.0), echo)
        attenuation = np.where(bone, np.float32(6.0), attenuation)  # a partial shadow
    grown = [(blob, 1.0) for blob in scene.vessels] + [(blob, scale) for blob in scene.fluids]
    for blob, grow in grown:
        inside = blob.inside(x, z, grow)
        if blob.wall:
            echo = echo + np.float32(1.2) * blob.ring(x, z, grow)
        echo = np.where(inside, np.float32(blob.echo), echo)
        attenuation = np.where(inside, np.float32(0.05), attenuation)
    return echo, attenuation


def _fluid_mask(
    scene: _Scene, g: SectorGeometry, shift: float, scale: float, *, clip: bool = True
) -> BoolArray:
    """Fluid on the output pixels (centres), clipped to the fan unless `clip` is False."""
    y, x = np.mgrid[0 : g.rows, 0 : g.columns].astype(np.float32)
    x_mm = (x - np.float32(g.apex_x)) * np.float32(g.mm_per_pixel)
    z_mm = (y - np.float32(g.apex_y)) * np.float32(g.mm_per_pixel)
    mask = np.zeros((g.rows, g.columns), dtype=np.bool_)
    for blob in scene.fluids:
        mask |= blob.inside(x_mm, z_mm - np.float32(shift), scale)
    return mask & g.mask() if clip else mask


# --- what the scanner burns in -----------------------------------------------------------


def _overlay(rng: np.random.Generator, g: SectorGeometry) -> npt.NDArray[np.uint8]:
    """Text, depth ruler and grey bar as RGB on black, kept outside the fan's bounding box."""
    canvas = np.zeros((g.rows, g.columns, 3), dtype=np.uint8)
    small = 0.38 * g.rows / 480
    white, green = (235, 235, 235), (120, 230, 120)
    probe = "P4-1" if g.inner_radius < 10 else "C5-2"
    line = max(10, round(g.rows * 0.032))
    _text(canvas, "SYNTHETIC DEMO  not for clinical use", (6, line), small, white)
    _text(canvas, f"{probe}  {rng.uniform(2.5, 5.0):.1f}MHz  ABD", (6, 2 * line), small, green)
    _text(canvas, f"D {g.depth_mm / 10:.1f}cm", (6, 4 * line), small, white)
    _text(canvas, f"G {int(rng.integers(35, 70))}%", (6, 5 * line), small, white)
    _text(canvas, "FR 25Hz", (6, 6 * line), small, white)
    _ruler(canvas, g, small)
    _grey_bar(canvas, g)
    x0, y0, x1, y1 = g.region
    canvas[y0 : y1 + 1, x0 : x1 + 1] = 0
    return canvas


def _text(
    canvas: npt.NDArray[np.uint8],
    text: str,
    origin: tuple[int, int],
    scale: float,
    colour: tuple[int, int, int],
) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _ruler(canvas: npt.NDArray[np.uint8], g: SectorGeometry, scale: float) -> None:
    """Depth ticks every centimetre along the centre line, labelled every 5 cm."""
    x = min(g.region[2] + 6, g.columns - 24)
    per_cm = 10.0 / g.mm_per_pixel
    start = g.apex_y + g.inner_radius
    for cm in range(int(g.depth_mm // 10) + 1):
        y = round(start + cm * per_cm)
        length = 8 if cm % 5 == 0 else 4
        cv2.line(canvas, (x, y), (x + length, y), (200, 200, 90), 1)
        if cm % 5 == 0 and cm:
            _text(canvas, str(cm), (x + 10, y + 4), scale, (200, 200, 90))


def _grey_bar(canvas: npt.NDArray[np.uint8], g: SectorGeometry) -> None:
    """The grey-scale bar scanners show beside the image, at the bottom left."""
    top, bottom = round(g.rows * 0.55), round(g.rows * 0.9)
    ramp = np.linspace(255, 0, bottom - top).astype(np.uint8)
    canvas[top:bottom, 8:16] = ramp[:, None, None]


def _compose(
    shown: npt.NDArray[np.uint8], overlay: npt.NDArray[np.uint8], color: bool
) -> npt.NDArray[np.uint8]:
    rgb = np.repeat(shown[:, :, None], 3, axis=2)
    written = overlay.any(axis=2)
    rgb[written] = overlay[written]
    if color:
        return rgb
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.asarray(gray, dtype=np.uint8)


# --- DICOM -------------------------------------------------------------------------------


def ultrasound_dataset(
    image: UltrasoundPhantom | UltrasoundClip,
    *,
    patient_id: str = "SYNUS0001",
    patient_name: str = "SYNTHETIC^ULTRASOUND",
    study_key: str = "us-study-1",
) -> Dataset:
    """US Image Storage (one frame) or US Multi-frame (a clip), with its ultrasound region."""
    clip = isinstance(image, UltrasoundClip)
    pixels = image.frames if isinstance(image, UltrasoundClip) else image.pixels[None]
    ds = Dataset()
    ds.SOPClassUID = US_MULTIFRAME if clip else US
    kind = "clip" if clip else "frame"
    ds.SOPInstanceUID = sample_uid("us", kind, image.seed, study_key, "instance")
    ds.StudyInstanceUID = sample_uid(study_key, "study")
    ds.SeriesInstanceUID = sample_uid(study_key, "us", "series")
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.AccessionNumber = f"US{image.seed:06d}"[:16]
    ds.StudyDate, ds.StudyTime = "20261101", "093000"
    ds.Modality, ds.BodyPartExamined = "US", "ABDOMEN"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.SequenceOfUltrasoundRegions = Sequence([_region_item(image.geometry)])
    _us_pixels(ds, pixels)
    if isinstance(image, UltrasoundClip):
        _cine(ds, len(pixels), image.frame_time_ms)
    ds.file_meta = file_meta_for(ds)
    return ds


def _region_item(g: SectorGeometry) -> Dataset:
    x0, y0, x1, y1 = g.region
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.ReferencePixelX0 = round(g.apex_x) - x0
    item.ReferencePixelY0 = round(g.apex_y) - y0
    item.PhysicalUnitsXDirection = UNITS_CM
    item.PhysicalUnitsYDirection = UNITS_CM
    item.ReferencePixelPhysicalValueX = 0.0
    item.ReferencePixelPhysicalValueY = 0.0
    item.PhysicalDeltaX = g.mm_per_pixel / 10.0
    item.PhysicalDeltaY = g.mm_per_pixel / 10.0
    return item


def _us_pixels(ds: Dataset, pixels: npt.NDArray[np.uint8]) -> None:
    color = pixels.ndim == 4
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = "RGB" if color else "MONOCHROME2"
    if color:
        ds.PlanarConfiguration = 0
    else:  # the identity window: a region crop must not be stretched by a min-max default
        ds.WindowCenter, ds.WindowWidth = 127.5, 256.0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _cine(ds: Dataset, frames: int, frame_time_ms: float) -> None:
    ds.NumberOfFrames = frames
    ds.FrameTime = f"{frame_time_ms:.1f}"
    ds.FrameIncrementPointer = Tag(0x0018, 0x1063)  # Frame Time
    ds.CineRate = round(1000.0 / frame_time_ms)
    ds.RecommendedDisplayFrameRate = round(1000.0 / frame_time_ms)
