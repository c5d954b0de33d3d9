"""The explain capability room: heatmaps that show where a model looked, and overlays.

Builds on the runtime (a `Model` and its `ModelResult`): a CAM output is mapped back to image
coordinates, or occlusion saliency is measured through the same backend in batches.
`overlay_png` and `mask_overlay_png` render results over the display image as PNG.
"""

from appliance.explain.explainer import Which, explain
from appliance.explain.heatmaps import (
    Heatmap,
    cam_heatmaps,
    occlusion_heatmaps,
    occlusion_maps,
    patch_positions,
)
from appliance.explain.overlay import encode_png, mask_overlay_png, overlay_png, to_bgr

__all__ = [
    "Heatmap",
    "Which",
    "cam_heatmaps",
    "encode_png",
    "explain",
    "mask_overlay_png",
    "occlusion_heatmaps",
    "occlusion_maps",
    "overlay_png",
    "patch_positions",
    "to_bgr",
]
