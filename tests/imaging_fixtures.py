"""Builders for the DICOM images the imaging tests generate: phantoms, not downloads."""

from __future__ import annotations

import subprocess
from copy import deepcopy
from dataclasses import dataclass
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


# --- one picture in every colour format ------------------------------------------------------

# A tinted grey ramp, as ultrasound scanners colour B-mode: a palette image with this table and
# the RGB picture it gives are the same picture, so every variant must decode to one RGB.
TINT = np.stack([np.arange(256), np.arange(256) * 7 // 8, np.arange(256) * 3 // 4], axis=-1).astype(
    np.uint8
)


def tinted(grey: np.ndarray) -> np.ndarray:
    """The RGB picture every colour variant of `grey` (uint8 indices) must decode to."""
    return np.asarray(TINT[grey], dtype=np.uint8)


def _with_pixels(ds: Dataset, pixels: np.ndarray, photometric: str) -> Dataset:
    copy = deepcopy(ds)
    if getattr(copy, "file_meta", None) is None:
        copy.file_meta = FileMetaDataset()
    copy.set_pixel_data(pixels, "RGB" if pixels.ndim == 3 else "MONOCHROME2", 8)
    if photometric != copy.PhotometricInterpretation:
        copy.PhotometricInterpretation = photometric
    return copy


def palette_variant(ds: Dataset, grey: np.ndarray, bits: int, layout: str = "words") -> Dataset:
    """PALETTE COLOR with TINT as its table: 16-bit entries, 8-bit entries packed two to a
    word (`layout="packed"`, as PS3.3 says) or one to a word (`"words"`, as many scanners
    write them), or a segmented 16-bit table (`"segmented"`)."""
    out = _with_pixels(ds, grey, "PALETTE COLOR")
    for channel, colour in enumerate(("Red", "Green", "Blue")):
        table = TINT[:, channel].astype(np.uint16)
        setattr(out, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, bits])
        if layout == "segmented":
            # one discrete segment of 256 entries: opcode 0, length, then the values
            words = np.concatenate([[0, 256], table * 257]).astype("<u2")
            setattr(out, f"Segmented{colour}PaletteColorLookupTableData", words.tobytes())
            continue
        if bits == 16:
            data = (table * 257).astype("<u2").tobytes()
        else:
            data = table.astype("u1" if layout == "packed" else "<u2").tobytes()
        setattr(out, f"{colour}PaletteColorLookupTableData", data)
    return out


def planar(ds: Dataset, pixels: np.ndarray, photometric: str) -> Dataset:
    """Native colour with Planar Configuration 1 (colour-by-plane)."""
    out = _with_pixels(ds, pixels, photometric)
    out.PlanarConfiguration = 1
    out.PixelData = np.ascontiguousarray(pixels.transpose(2, 0, 1)).tobytes()
    return out


def ybr_422(ds: Dataset, ybr: np.ndarray) -> Dataset:
    """Native YBR_FULL_422: Y Y Cb Cr for each pair of pixels (PS3.3 C.7.6.3.1.2)."""
    pairs = ybr.astype(np.int32).reshape(ybr.shape[0], -1, 2, 3)
    chroma = (pairs[:, :, 0, 1:] + pairs[:, :, 1, 1:]) // 2
    packed = np.concatenate([pairs[:, :, :, 0], chroma], axis=-1).astype(np.uint8)
    out = _with_pixels(ds, ybr, "YBR_FULL_422")
    out.PixelData = packed.tobytes()
    return out


Error = tuple[int, float]  # (largest, mean) absolute difference from the original
EXACT: Error = (0, 0.0)
YBR: Error = (2, 0.5)  # YBR_FULL <-> RGB rounding


def write_colour_variants(folder: Path, ds: Dataset, grey: np.ndarray) -> dict[str, Variant]:
    """`ds` (a one-frame image) with `tinted(grey)` in every colour photometric and transfer
    syntax the installed encoders make, each with its own SOP Instance UID, written to
    `folder`. JPEG baseline (YBR_FULL_422) and JPEG lossless come from DCMTK's dcmcjpeg:
    pydicom has no JPEG encoder."""
    from pydicom.pixels.processing import convert_color_space
    from pydicom.uid import (
        JPEG2000,
        ExplicitVRBigEndian,
        JPEG2000Lossless,
        JPEGLSLossless,
        JPEGLSNearLossless,
        RLELossless,
        generate_uid,
    )

    rgb = tinted(grey)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    made: dict[str, tuple[Dataset, Error]] = {
        "rgb": (_with_pixels(ds, rgb, "RGB"), EXACT),
        "rgb-planar1": (planar(ds, rgb, "RGB"), EXACT),
        "ybr_full": (_with_pixels(ds, ybr, "YBR_FULL"), YBR),
        "ybr_full-planar1": (planar(ds, ybr, "YBR_FULL"), YBR),
        "ybr_full_422": (ybr_422(ds, ybr), (32, 1.0)),  # chroma halved
        "palette8-packed": (palette_variant(ds, grey, 8, "packed"), EXACT),
        "palette8-words": (palette_variant(ds, grey, 8, "words"), EXACT),
        "palette16": (palette_variant(ds, grey, 16), EXACT),
        "palette16-segmented": (palette_variant(ds, grey, 16, "segmented"), EXACT),
    }
    compressed: dict[str, tuple[str, str, dict[str, Any], Error]] = {
        "rgb-rle": ("rgb", RLELossless, {}, EXACT),
        "ybr_full-rle": ("ybr_full", RLELossless, {}, YBR),
        "palette16-rle": ("palette16", RLELossless, {}, EXACT),
        "palette8-words-rle": ("palette8-words", RLELossless, {}, EXACT),
        "rgb-jpegls": ("rgb", JPEGLSLossless, {}, EXACT),
        "rgb-jpegls-near": ("rgb", JPEGLSNearLossless, {"jls_error": 2}, (2, 1.0)),
        "rgb-j2k": ("rgb", JPEG2000Lossless, {}, EXACT),
        "ybr_rct-j2k": ("rgb", JPEG2000Lossless, {}, EXACT),
        "ybr_ict-j2k": ("rgb", JPEG2000, {"j2k_psnr": [50]}, (16, 1.0)),
    }
    for name, (source, syntax, options, tolerance) in compressed.items():
        out = deepcopy(made[source][0])
        if name.startswith(("ybr_rct", "ybr_ict")):
            out.PhotometricInterpretation = name.split("-")[0].upper()  # encoder applies MCT
        out.compress(syntax, **options)
        made[name] = (out, tolerance)
    variants: dict[str, Variant] = {}
    for name, (variant, tolerance) in made.items():
        variant.SOPInstanceUID = generate_uid()
        variant.file_meta.MediaStorageSOPInstanceUID = variant.SOPInstanceUID
        variants[name] = Variant(save(variant, folder, f"{name}.dcm"), *tolerance)
    big = deepcopy(made["palette16"][0])
    big.SOPInstanceUID = generate_uid()
    big.file_meta.MediaStorageSOPInstanceUID = big.SOPInstanceUID
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    variants["palette16-big-endian"] = Variant(
        save(big, folder, "palette16-big-endian.dcm"), *EXACT
    )
    for name, option, error in (
        ("jpeg-baseline", "+eb", (64, 3.0)),
        ("jpeg-lossless", "+e1", EXACT),
    ):
        variants[name] = Variant(_dcmcjpeg(variants["rgb"].path, folder, name, option), *error)
    return variants


@dataclass(frozen=True)
class Variant:
    """One written file and how far (in 8-bit levels) its decoded RGB may be from the
    original, at most and on average: nothing for lossless coding, a little for YBR rounding
    and chroma subsampling, more for lossy coding."""

    path: Path
    max_error: int
    mean_error: float


def _dcmcjpeg(source: Path, folder: Path, name: str, option: str) -> Path:
    from appliance.bench.peers import dcmtk

    target = folder / f"{name}.dcm"
    subprocess.run([dcmtk("dcmcjpeg"), option, str(source), str(target)], check=True)
    ds = dcmread(target)
    from pydicom.uid import generate_uid

    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target
