"""Where the picture is and how big a pixel is: ultrasound regions and pixel spacing.

Ultrasound frames carry burned-in text, rulers and thumbnails around the scan; the Sequence of
Ultrasound Regions (0018,6011) says where the scan is and how many centimetres a pixel spans.
Other images give spacing in PixelSpacing, or ImagerPixelSpacing (at the detector, without the
magnification correction), and the source is recorded so a measurement can say which it used.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset

from appliance.imaging._attributes import as_floats, lookup, tag_text
from appliance.imaging.image import DecodedImage, DecodeError, Region, SpacingSource

_REGION_CORNERS = (
    "RegionLocationMinX0",
    "RegionLocationMinY0",
    "RegionLocationMaxX1",
    "RegionLocationMaxY1",
)
_SPATIAL_2D = 1  # Region Spatial Format: 2D (tissue or flow)

_SPACING_ATTRIBUTES = (
    (SpacingSource.PIXEL_SPACING, "PixelSpacing"),
    (SpacingSource.IMAGER_PIXEL_SPACING, "ImagerPixelSpacing"),
    (SpacingSource.NOMINAL_SCANNED_PIXEL_SPACING, "NominalScannedPixelSpacing"),
)


class Geometry(NamedTuple):
    spacing_mm: tuple[float, float] | None
    spacing_source: SpacingSource
    region: Region | None
    notes: tuple[str, ...]


def ultrasound_regions(ds: Dataset) -> tuple[Region, ...]:
    """Every item of the Sequence of Ultrasound Regions, in file order; empty when absent.

    Raises DecodeError naming the attribute when an item lacks a corner or has them reversed.
    """
    return tuple(
        _region(item, n) for n, item in enumerate(ds.get("SequenceOfUltrasoundRegions", []))
    )


def _region(item: Dataset, number: int) -> Region:
    missing = [k for k in _REGION_CORNERS if item.get(k) is None]
    if missing:
        raise DecodeError(
            f"ultrasound region {number} is missing required attribute {tag_text(missing[0])}"
        )
    try:
        x0, y0, x1, y1 = (int(item.get(k)) for k in _REGION_CORNERS)
        return Region(
            x0=x0,
            y0=y0,
            x1=x1,
            y1=y1,
            spatial_format=int(item.get("RegionSpatialFormat", 0)),
            data_type=int(item.get("RegionDataType", 0)),
            units_x=int(item.get("PhysicalUnitsXDirection", 0)),
            units_y=int(item.get("PhysicalUnitsYDirection", 0)),
            delta_x=float(item.get("PhysicalDeltaX", 0.0)),
            delta_y=float(item.get("PhysicalDeltaY", 0.0)),
        )
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"ultrasound region {number} is invalid: {exc}") from exc


def imaging_region(
    regions: tuple[Region, ...], rows: int, columns: int
) -> tuple[Region | None, tuple[str, ...]]:
    """The scan area: the largest 2D region of the Sequence of Ultrasound Regions.

    A corner one pixel past the edge (writers that count the end as exclusive) is clipped with
    a note. A region further outside describes some other image (e.g. before a resize), so it
    and its calibration are ignored with a note rather than trusted for measurements.
    """
    planar = [r for r in regions if r.spatial_format == _SPATIAL_2D]
    if not planar:
        return None, ()
    best = max(planar, key=lambda r: r.rows * r.columns)
    if best.x1 > columns or best.y1 > rows or best.x0 >= columns or best.y0 >= rows:
        return None, (
            f"ultrasound region {_corners(best)} does not fit the {columns}x{rows} image; "
            "region and its spacing ignored",
        )
    clipped = dataclasses.replace(best, x1=min(best.x1, columns - 1), y1=min(best.y1, rows - 1))
    if clipped == best:
        return best, ()
    return clipped, (f"ultrasound region {_corners(best)} clipped to the {columns}x{rows} image",)


def _corners(region: Region) -> str:
    return f"({region.x0},{region.y0})-({region.x1},{region.y1})"


def pixel_spacing(
    ds: Dataset, frame: int = 0
) -> tuple[tuple[float, float] | None, SpacingSource, tuple[str, ...]]:
    """(row, column) spacing in mm from the first attribute that holds a valid value.

    PixelSpacing (calibrated, at the patient) beats ImagerPixelSpacing (at the detector), which
    beats NominalScannedPixelSpacing (digitised film). Invalid values are skipped with a note.
    """
    notes: list[str] = []
    for source, keyword in _SPACING_ATTRIBUTES:
        value = lookup(ds, frame, "PixelMeasuresSequence", keyword)
        if value is None or value == "":
            continue
        numbers = as_floats(value)
        if numbers is None or len(numbers) != 2 or min(numbers) <= 0:
            notes.append(
                f"{tag_text(keyword)} value {value!r} is not two positive numbers; ignored"
            )
            continue
        return (numbers[0], numbers[1]), source, tuple(notes)
    return None, SpacingSource.NONE, tuple(notes)


def describe_geometry(ds: Dataset, rows: int, columns: int, frame: int = 0) -> Geometry:
    """Region and spacing for a decoded image: a calibrated ultrasound region comes first."""
    try:
        region, notes = imaging_region(ultrasound_regions(ds), rows, columns)
    except DecodeError as exc:
        region, notes = None, (f"{exc}; region ignored",)
    if region is not None and region.spacing_mm is not None:
        return Geometry(region.spacing_mm, SpacingSource.ULTRASOUND_REGION, region, notes)
    spacing, source, spacing_notes = pixel_spacing(ds, frame)
    return Geometry(spacing, source, region, notes + spacing_notes)


def crop_to_region(image: DecodedImage, region: Region | None = None) -> DecodedImage:
    """The image cut to `region` (default: its ultrasound imaging region), spacing unchanged.

    Raises ValueError when there is no region to crop to, or it does not fit the image:
    an image without a region is not silently returned whole.
    """
    target = region if region is not None else image.region
    if target is None:
        raise ValueError("the image has no ultrasound region to crop to")
    if target.x1 >= image.columns or target.y1 >= image.rows:
        raise ValueError(
            f"region {_corners(target)} does not fit the {image.columns}x{image.rows} image"
        )
    pixels = np.ascontiguousarray(
        image.pixels[:, target.y0 : target.y1 + 1, target.x0 : target.x1 + 1]
    )
    moved = dataclasses.replace(target, x0=0, y0=0, x1=target.columns - 1, y1=target.rows - 1)
    return dataclasses.replace(image, pixels=pixels, region=moved)
