"""Builders for the DICOM images the imaging tests generate: phantoms, not downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import SecondaryCaptureImageStorage, UltrasoundImageStorage


def bundled(name: str) -> str:
    """Path of one of pydicom's bundled test files (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with the installed pydicom"
    return str(path)


def read(name: str) -> Dataset:
    return dcmread(bundled(name))


def phantom(rows: int = 48, columns: int = 64, low: int = 0, high: int = 4095) -> np.ndarray:
    """A gradient with a bright disc: distinct values everywhere, both ends of the range used."""
    yy, xx = np.mgrid[0:rows, 0:columns]
    ramp = low + (high - low) * (xx + yy) / (rows + columns - 2) * 0.8
    disc = (yy - rows / 2) ** 2 + (xx - columns / 2) ** 2 < (min(rows, columns) / 4) ** 2
    image = np.where(disc, high, ramp)
    image[0, 0] = low
    return np.rint(image).astype(np.int32)


def rgb_phantom(rows: int = 48, columns: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:columns]
    planes = [
        xx * 255 // (columns - 1),
        yy * 255 // (rows - 1),
        (xx + yy) * 255 // (rows + columns),
    ]
    return np.stack(planes, axis=-1).astype(np.uint8)


def image_dataset(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 8,
    sop_class: str = SecondaryCaptureImageStorage,
    **attributes: Any,
) -> Dataset:
    """A minimal valid image: pydicom fills the Image Pixel module from the array."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, photometric, bits_stored)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, folder: Path, name: str = "image.dcm") -> Path:
    """Write the dataset as a DICOM file so tests decode what a modality would send."""
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def ultrasound_region(
    x0: int, y0: int, x1: int, y1: int, delta_cm: float, spatial_format: int = 1, units: int = 3
) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = spatial_format
    item.RegionDataType = 1
    item.RegionFlags = 0
    item.RegionLocationMinX0 = x0
    item.RegionLocationMinY0 = y0
    item.RegionLocationMaxX1 = x1
    item.RegionLocationMaxY1 = y1
    item.PhysicalUnitsXDirection = units
    item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX = delta_cm
    item.PhysicalDeltaY = delta_cm
    return item


def ultrasound_dataset(regions: list[Dataset]) -> tuple[Dataset, np.ndarray]:
    """An 8-bit ultrasound frame: scan area inside the first region, burned-in text outside."""
    image = np.zeros((120, 160), dtype=np.uint8)
    image[10:110, 20:140] = phantom(100, 120, 10, 200).astype(np.uint8)
    image[2:7, 30:90] = 255  # burned-in annotation above the scan
    image[10:110, 150:154] = 255  # depth ruler to the right
    ds = image_dataset(image, "MONOCHROME2", 8, sop_class=UltrasoundImageStorage, Modality="US")
    ds.SequenceOfUltrasoundRegions = regions
    return ds, image
