"""The imaging capability room: DICOM to correctly scaled pixels with their physical spacing.

`decode` gives modality values (grayscale) or uint8 RGB for the selected frames;
`to_display` is the separate VOI/inversion step; `crop_to_region` cuts an ultrasound image
to its scan area. Imports only the base rooms, numpy and pydicom.
"""

from appliance.imaging.display import apply_voi_lut, apply_window, full_range, to_display
from appliance.imaging.geometry import (
    crop_to_region,
    imaging_region,
    pixel_spacing,
    ultrasound_regions,
)
from appliance.imaging.image import (
    Colour,
    DecodedImage,
    DecodeError,
    Region,
    SpacingSource,
    VoiLut,
    Window,
    colour_of,
)
from appliance.imaging.pixels import (
    decode,
    frame_count,
    select_frames,
    supported_transfer_syntaxes,
)

__all__ = [
    "Colour",
    "DecodeError",
    "DecodedImage",
    "Region",
    "SpacingSource",
    "VoiLut",
    "Window",
    "apply_voi_lut",
    "apply_window",
    "colour_of",
    "crop_to_region",
    "decode",
    "frame_count",
    "full_range",
    "imaging_region",
    "pixel_spacing",
    "select_frames",
    "supported_transfer_syntaxes",
    "to_display",
    "ultrasound_regions",
]
