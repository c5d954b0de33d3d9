"""Synthetic DICOM objects for tests, benchmarks and demonstrations.

They carry no patient data: names and IDs are made up, pixels are noise and simple shapes. UIDs
are deterministic from the seed so that two runs make the same files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

# UUID-derived UIDs (PS3.5 B.2): unique without a registered organisation root.
SAMPLE_UID_ROOT = "2.25."

CR = UID("1.2.840.10008.5.1.4.1.1.1")
DX_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
US = UID("1.2.840.10008.5.1.4.1.1.6.1")
US_MULTIFRAME = UID("1.2.840.10008.5.1.4.1.1.3.1")
SC = UID("1.2.840.10008.5.1.4.1.1.7")
SC_MULTIFRAME_GRAY = UID("1.2.840.10008.5.1.4.1.1.7.3")
SC_MULTIFRAME_RGB = UID("1.2.840.10008.5.1.4.1.1.7.4")
CT = UID("1.2.840.10008.5.1.4.1.1.2")


def sample_uid(*parts: object) -> UID:
    """A 2.25 UID whose 128-bit number is a hash of `parts`: the same inputs, the same UID."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    number = int.from_bytes(digest[:16], "big")
    return UID(SAMPLE_UID_ROOT + str(number))


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


def file_meta_for(ds: Dataset) -> FileMetaDataset:
    """File meta for `ds` in Explicit VR Little Endian (the samples' and phantoms' encoding)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta
