"""Synthetic medical images with known ground truth: chest radiographs and ultrasound.

The demo models are trained on these, and the tests use them to check models, explanations and
measurements against a truth that real images cannot give (exact lesion masks, exact fluid
areas in mm²). They are drawn from simple anatomy and physics, deterministically from a seed;
they carry no patient data. Only numpy, OpenCV, pydicom and `appliance.imaging` are used (never
a training framework), so the box itself can make them, e.g. for a self-test of a model package.

`preprocess` is the reference for turning a DICOM image into a demo model's input, as the
manifests describe it; the packages were trained and are tested with it.
"""

from appliance.phantoms.chest import (
    CHEST_FINDINGS,
    ChestPhantom,
    chest_dataset,
    make_chest,
)
from appliance.phantoms.preprocess import (
    Letterbox,
    chest_model_input,
    letterbox,
    ultrasound_model_input,
)
from appliance.phantoms.ultrasound import (
    UltrasoundClip,
    UltrasoundPhantom,
    make_ultrasound,
    make_ultrasound_clip,
    ultrasound_dataset,
)
from appliance.phantoms.ultrasound_geometry import SectorGeometry

__all__ = [
    "CHEST_FINDINGS",
    "ChestPhantom",
    "Letterbox",
    "SectorGeometry",
    "UltrasoundClip",
    "UltrasoundPhantom",
    "chest_dataset",
    "chest_model_input",
    "letterbox",
    "make_chest",
    "make_ultrasound",
    "make_ultrasound_clip",
    "ultrasound_dataset",
    "ultrasound_model_input",
]
