"""Acoustics along the beam lines of a synthetic ultrasound frame: echo times speckle times
round-trip attenuation (which time-gain compensation only partly undoes), log compression, and
scan conversion back to the fan's pixels."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import numpy.typing as npt

from appliance.phantoms._draw import FloatArray
from appliance.phantoms.ultrasound_geometry import SectorGeometry
from appliance.phantoms.ultrasound_scene import Scene

TOP_DB = 14.0  # echo level (dB) shown white before the per-image gain


class BeamSampler:
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
        scene: Scene,
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
        top, dynamic_range = TOP_DB + gain[0], gain[1]
        shown = np.clip(1.0 + (level_db - np.float32(top)) / np.float32(dynamic_range), 0, 1)
        polar = np.rint(shown * 255).astype(np.uint8)
        columns, rows = self.maps
        converted = cv2.remap(
            polar, columns, rows, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        return np.asarray(converted, dtype=np.uint8)


def _acoustics(
    scene: Scene, x: FloatArray, z: FloatArray, scale: float
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


def _texture(scene: Scene, x: FloatArray, z: FloatArray) -> FloatArray:
    size = scene.texture.shape[0]
    per_mm = np.float32((size - 1) / (2 * scene.texture_mm))
    columns = (x + np.float32(scene.texture_mm)) * per_mm
    rows = z * per_mm * np.float32(2.0)
    sampled = cv2.remap(
        scene.texture, columns, rows % (size - 1), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    return np.asarray(sampled, dtype=np.float32)


def _interfaces(scene: Scene, level: FloatArray, x: FloatArray) -> FloatArray:
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
    scene: Scene,
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
