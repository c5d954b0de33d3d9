"""The findings of a synthetic chest radiograph, each drawn into the density layers from its own
random stream, with the mask of the pixels it changed: nodule, effusion, consolidation,
pneumothorax and cardiomegaly."""

from __future__ import annotations

import math

import cv2
import numpy as np

from appliance.phantoms._draw import (
    BoolArray,
    FloatArray,
    Grid,
    lobulated_radius,
    smooth_noise,
    soft_step,
)
from appliance.phantoms.chest_anatomy import Layers, Thorax, ellipse, lung_mask


def add_findings(
    streams: dict[str, np.random.Generator],
    grid: Grid,
    t: Thorax,
    layers: Layers,
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


def _open_lung(layers: Layers, side: int) -> FloatArray:
    return np.asarray(layers.aerated[side] * (1.0 - layers.heart), dtype=np.float32)


def _pick_point(rng: np.random.Generator, grid: Grid, allowed: BoolArray) -> tuple[float, float]:
    """A random pixel centre (mm) among `allowed`, which must not be empty."""
    candidates = np.flatnonzero(allowed)
    index = int(candidates[rng.integers(candidates.size)])
    return float(grid.x.flat[index]), float(grid.y.flat[index])


def _nodule(rng: np.random.Generator, grid: Grid, layers: Layers) -> None:
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


def _effusion(rng: np.random.Generator, grid: Grid, t: Thorax, layers: Layers) -> None:
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


def _consolidation(rng: np.random.Generator, grid: Grid, t: Thorax, layers: Layers) -> None:
    side = int(rng.choice([-1, 1]))
    lung = _open_lung(layers, side)
    x0, y0 = _pick_point(rng, grid, lung > 0.9)
    axes = (float(rng.uniform(28, 60)), float(rng.uniform(28, 60)))
    envelope = ellipse(grid, (x0, y0), axes, float(rng.uniform(0, math.pi)))
    patches = smooth_noise(rng, grid.shape, 6.0 / grid.mm_per_pixel)
    field = envelope * (0.7 + 0.3 * np.tanh(patches))
    opacity = np.clip((field - 0.35) / 0.3, 0.0, 1.0) * lung
    bronchi = np.exp(-((smooth_noise(rng, grid.shape, 1.5 / grid.mm_per_pixel) / 0.12) ** 2))
    strength = np.float32(rng.uniform(0.55, 0.85))
    layers.aerated[side] = layers.aerated[side] * (1.0 - strength * opacity)
    layers.extra -= np.float32(0.05) * bronchi * opacity
    layers.masks["consolidation"] = soft_step(opacity - 0.5, 0.02)


def _pneumothorax(rng: np.random.Generator, grid: Grid, t: Thorax, layers: Layers) -> None:
    side = int(rng.choice([-1, 1]))
    gap_mm = float(rng.uniform(16, 45))
    collapsed = lung_mask(grid, t, side, shrink=gap_mm)
    gap = np.clip(layers.lungs[side] - collapsed, 0.0, 1.0)
    sharp = lung_mask(grid, t, side, shrink=gap_mm - 0.3)
    near_gap = cv2.GaussianBlur(gap, (0, 0), sigmaX=3.0 / grid.mm_per_pixel) > 0.05
    pleural_line = np.float32(4.0) * sharp * (1.0 - sharp) * near_gap
    layers.markings = np.where(gap > 0.5, np.float32(0.0), layers.markings).astype(np.float32)
    layers.extra += np.float32(0.06) * pleural_line - np.float32(0.05) * gap
    layers.masks["pneumothorax"] = gap
