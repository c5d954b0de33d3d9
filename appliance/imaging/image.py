"""Plain data the imaging room hands out: a decoded image and what describes its pixels.

Validated while built (as highdicom does), so a `DecodedImage` that exists is self-consistent:
grayscale pixels are float32 modality values, colour pixels are uint8 RGB, one entry per frame.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from appliance.errors import ApplianceError

Photometric = Literal["MONOCHROME", "RGB"]
# What a model takes, by content: grey (modality values) or colour (RGB after conversion).
Colour = Literal["grey", "colour"]
GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")

WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

# Physical Units X/Y Direction (0018,6024/6026), PS3.3 C.8.5.5.1.15: 3 means centimetres.
UNITS_CM = 3


def colour_of(photometric: str) -> Colour | None:
    """Grey or colour, from the header's Photometric Interpretation; None when it is empty.

    Routing must compare what `decode` will hand the model, not the raw header value: every
    photometric other than MONOCHROME1/2 (PALETTE COLOR, YBR_*, RGB) is decoded to RGB, so a
    palette or JPEG 2000 ultrasound reaches the same models as its uncompressed RGB twin.
    """
    value = photometric.strip().upper()
    if not value:
        return None
    return "grey" if value in GREY_PHOTOMETRICS else "colour"


class DecodeError(ApplianceError):
    """A DICOM image whose pixels cannot be decoded; the message says why.

    Causes: a transfer syntax that is unknown or has no installed decoder (named), a required
    attribute that is missing (named), or a pixel stream that is corrupt or truncated.
    """


class SpacingSource(str, enum.Enum):
    """Which attribute gave the physical pixel spacing, so a finding can say how it measured."""

    ULTRASOUND_REGION = "SequenceOfUltrasoundRegions"
    PIXEL_SPACING = "PixelSpacing"
    IMAGER_PIXEL_SPACING = "ImagerPixelSpacing"
    NOMINAL_SCANNED_PIXEL_SPACING = "NominalScannedPixelSpacing"
    NONE = "none"


@dataclass(frozen=True)
class Window:
    """A VOI window (centre, width) on modality values, with its VOI LUT Function."""

    centre: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        function = str(self.function).strip().upper()
        object.__setattr__(self, "function", function)
        if function not in WINDOW_FUNCTIONS:
            raise ValueError(f"window function {self.function!r} is not one of {WINDOW_FUNCTIONS}")
        if not (math.isfinite(self.centre) and math.isfinite(self.width)):
            raise ValueError(f"window centre/width must be finite, got {self.centre}/{self.width}")
        # PS3.3 C.11.2.1.2: LINEAR needs width >= 1; LINEAR_EXACT and SIGMOID need width > 0.
        minimum_ok = self.width >= 1 if function == "LINEAR" else self.width > 0
        if not minimum_ok:
            raise ValueError(f"window width {self.width} is too small for {function}")


@dataclass(frozen=True, eq=False)
class VoiLut:
    """A VOI LUT from the file: modality value `first_mapped + i` displays as `table[i]`."""

    first_mapped: int
    bits: int
    table: npt.NDArray[np.uint16]

    def __post_init__(self) -> None:
        if self.table.ndim != 1 or self.table.size == 0:
            raise ValueError(f"VOI LUT table must be a non-empty 1-D array, got {self.table.shape}")
        if not 1 <= self.bits <= 16:
            raise ValueError(f"VOI LUT bits per entry must be 1..16, got {self.bits}")


@dataclass(frozen=True)
class Region:
    """One item of the Sequence of Ultrasound Regions, in pixel coordinates (inclusive corners).

    `delta_x`/`delta_y` are physical units per pixel in `units_x`/`units_y` (PS3.3 C.8.5.5.1).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int = 1
    data_type: int = 1
    units_x: int = 0
    units_y: int = 0
    delta_x: float = 0.0
    delta_y: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.x0 <= self.x1 and 0 <= self.y0 <= self.y1):
            raise ValueError(
                f"region corners ({self.x0},{self.y0})-({self.x1},{self.y1}) are not ordered"
            )

    @property
    def rows(self) -> int:
        return self.y1 - self.y0 + 1

    @property
    def columns(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """(row, column) spacing in mm, when both directions are calibrated in centimetres."""
        if self.units_x != UNITS_CM or self.units_y != UNITS_CM:
            return None
        if not (self.delta_x > 0 and self.delta_y > 0):
            return None
        return (abs(self.delta_y) * 10.0, abs(self.delta_x) * 10.0)


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """Pixels of the selected frames plus what a model or a measurement needs to use them.

    `pixels` is frames x rows x columns float32 modality values ("MONOCHROME"), or
    frames x rows x columns x 3 uint8 ("RGB"). `source_photometric` keeps the file's value:
    MONOCHROME1 images are *not* inverted here (the values keep their meaning); `to_display`
    inverts them.
    """

    pixels: npt.NDArray[Any]
    photometric: Photometric
    source_photometric: str
    transfer_syntax: str
    frame_count: int
    frame_indices: tuple[int, ...]
    bits_stored: int
    signed: bool
    spacing_mm: tuple[float, float] | None = None
    spacing_source: SpacingSource = SpacingSource.NONE
    window: Window | None = None
    voi_lut: VoiLut | None = None
    region: Region | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._check_pixels()
        if len(self.frame_indices) != self.pixels.shape[0]:
            raise ValueError(
                f"{len(self.frame_indices)} frame indices for {self.pixels.shape[0]} frames"
            )
        if any(not 0 <= i < self.frame_count for i in self.frame_indices):
            raise ValueError(f"frame indices {self.frame_indices} outside 0..{self.frame_count}")
        if (self.spacing_mm is None) != (self.spacing_source is SpacingSource.NONE):
            raise ValueError("spacing_mm and spacing_source must be given together")

    def _check_pixels(self) -> None:
        expected: tuple[int, type[np.generic]] = (
            (4, np.uint8) if self.photometric == "RGB" else (3, np.float32)
        )
        ndim, dtype = expected
        if self.pixels.ndim != ndim or self.pixels.dtype != dtype:
            raise ValueError(
                f"{self.photometric} pixels must be {ndim}-D {np.dtype(dtype).name}, "
                f"got {self.pixels.ndim}-D {self.pixels.dtype}"
            )
        if self.photometric == "RGB" and self.pixels.shape[-1] != 3:
            raise ValueError(f"RGB pixels need 3 samples, got shape {self.pixels.shape}")

    @property
    def colour(self) -> Colour:
        """What routing compared: the decoded kind, grey or colour."""
        return "colour" if self.photometric == "RGB" else "grey"

    @property
    def inverted(self) -> bool:
        """True for MONOCHROME1: the lowest value is displayed white."""
        return self.source_photometric == "MONOCHROME1"

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[2])
