"""Synthetic DICOM objects for tests, benchmarks and demonstrations.

They carry no patient data: names and IDs are made up, pixels are noise and simple shapes. UIDs
are deterministic from the seed so that two runs make the same files; they are made as the
box's own objects' are (`dicomout.uids`), under the same root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import uid as sop
from pydicom.dataset import Dataset
from pydicom.uid import UID

from appliance.dicomout.meta import file_meta_for
from appliance.dicomout.uids import deterministic_uid

__all__ = [
    "CR",
    "CT",
    "DX_PRESENTATION",
    "DX_PROCESSING",
    "KINDS",
    "SC",
    "SC_MULTIFRAME_GRAY",
    "SC_MULTIFRAME_RGB",
    "US",
    "US_MULTIFRAME",
    "Kind",
    "file_meta_for",
    "make_dataset",
    "sample_uid",
    "write_sample",
]

# Short names for the storage classes the samples and phantoms are made as.
CR = sop.ComputedRadiographyImageStorage
DX_PRESENTATION = sop.DigitalXRayImageStorageForPresentation
DX_PROCESSING = sop.DigitalXRayImageStorageForProcessing
US = sop.UltrasoundImageStorage
US_MULTIFRAME = sop.UltrasoundMultiFrameImageStorage
SC = sop.SecondaryCaptureImageStorage
SC_MULTIFRAME_GRAY = sop.MultiFrameGrayscaleByteSecondaryCaptureImageStorage  # 8-bit samples
SC_MULTIFRAME_RGB = sop.MultiFrameTrueColorSecondaryCaptureImageStorage
CT = sop.CTImageStorage


def sample_uid(*parts: object) -> UID:
    """A demo object's UID: the same `parts`, the same UID (the production scheme, so a sample
    looks like what the box writes)."""
    return deterministic_uid("sample", *parts)


@dataclass(frozen=True)
class Kind:
    sop_class: UID
    modality: str
    photometric: str
    bits: int


KINDS: dict[str, Kind] = {
    "cr": Kind(CR, "CR", "MONOCHROME2", 12),
    "dx": Kind(DX_PRESENTATION, "DX", "MONOCHROME2", 12),
    "dx-processing": Kind(DX_PROCESSING, "DX", "MONOCHROME1", 14),
    "us": Kind(US, "US", "RGB", 8),
    "us-multiframe": Kind(US_MULTIFRAME, "US", "RGB", 8),
    "sc-gray": Kind(SC, "OT", "MONOCHROME2", 8),
    "sc-rgb": Kind(SC, "OT", "RGB", 8),
    "sc-multiframe-gray": Kind(SC_MULTIFRAME_GRAY, "OT", "MONOCHROME2", 8),
    "sc-multiframe-rgb": Kind(SC_MULTIFRAME_RGB, "OT", "RGB", 8),
    "ct": Kind(CT, "CT", "MONOCHROME2", 12),
}


def make_dataset(
    kind: str,
    *,
    seed: int = 0,
    rows: int = 256,
    columns: int = 256,
    frames: int = 1,
    patient_id: str = "SYN0001",
    patient_name: str = "SYNTHETIC^PATIENT",
    study_key: str = "study-1",
    body_part: str = "CHEST",
) -> Dataset:
    """A complete, valid dataset of `kind` (see KINDS) with noise pixels, in memory."""
    spec = KINDS[kind]
    ds = Dataset()
    ds.SOPClassUID = spec.sop_class
    ds.SOPInstanceUID = sample_uid(kind, seed, study_key, "instance")
    ds.StudyInstanceUID = sample_uid(study_key, "study")
    ds.SeriesInstanceUID = sample_uid(study_key, kind, "series")
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.AccessionNumber = f"ACC{seed:06d}"[:16]
    ds.StudyDate = "20261101"
    ds.StudyTime = "093000"
    ds.Modality = spec.modality
    ds.BodyPartExamined = body_part
    ds.SeriesNumber = 1
    ds.InstanceNumber = seed + 1
    if spec.modality in ("CR", "DX"):
        ds.ViewPosition = "PA"
    _add_pixels(ds, spec, np.random.default_rng(seed), rows, columns, frames)
    ds.file_meta = file_meta_for(ds)
    return ds


def write_sample(path: Path, kind: str, **options: object) -> Path:
    """Write `make_dataset(kind, **options)` as a DICOM file at `path`."""
    ds = make_dataset(kind, **options)  # type: ignore[arg-type]
    ds.save_as(path, enforce_file_format=True)
    return path


def _add_pixels(
    ds: Dataset, spec: Kind, rng: np.random.Generator, rows: int, columns: int, frames: int
) -> None:
    samples = 3 if spec.photometric == "RGB" else 1
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = spec.photometric
    ds.BitsAllocated = 8 if spec.bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = spec.bits, spec.bits - 1, 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    multiframe = spec.sop_class in (US_MULTIFRAME, SC_MULTIFRAME_GRAY, SC_MULTIFRAME_RGB)
    if multiframe:
        ds.NumberOfFrames = frames
    count = (frames if multiframe else 1) * rows * columns * samples
    dtype = np.uint8 if ds.BitsAllocated == 8 else np.uint16
    ds.PixelData = rng.integers(0, 2**spec.bits, count, dtype=dtype).tobytes()
