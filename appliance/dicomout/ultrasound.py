"""Wrap frames captured from an ultrasound machine's video output as DICOM ultrasound images,
so that a saved frame or clip takes the one path into the store (`ingest`) like an image the
scanner sent, and goes to the PACS like one.

One frame becomes an Ultrasound Image (PS3.3 A.6), several an Ultrasound Multi-frame Image
(A.7) with the frame time of the capture. The frames are crops of the scan area, so the
Sequence of Ultrasound Regions has one region, the whole image, calibrated in centimetres when
the pixel size is known (the worker measures areas in mm² from it, as for any scanner's image).
The capture device is recorded as the equipment; burned-in annotation is YES by default, since
a scanner's screen shows the patient's name.

UIDs are deterministic from the inputs (device, capture time, patient, study, frame count and
size): building the same capture twice gives the same object, which the store recognises as a
duplicate.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import datetime

import cv2
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from appliance import __version__
from appliance.dicomout.common import (
    UTF8,
    leave_unknown,
    long_string,
    person_name,
    put_eight_bit_pixels,
)
from appliance.dicomout.meta import file_meta_for
from appliance.dicomout.uids import ObjectUids, deterministic_uid

UNITS_NONE, UNITS_CM = 0, 3  # Physical Units X/Y Direction (PS3.3 C.8.5.5.1.15)
_ACCESSION = 16  # DICOM SH: at most 16 characters
_REGION_2D, _REGION_TISSUE = 1, 1


def build_ultrasound(
    frames: Sequence[npt.NDArray[np.uint8]],
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str | None,
    accession: str = "",
    device_name: str,
    mm_per_pixel: float | None,
    frame_time_ms: float,
    captured_wall: float,
    burned_in: bool = True,
    lossy_method: str | None = None,
) -> Dataset:
    """An Ultrasound (Multi-frame) Image of `frames` (BGR crops of the scan area, H x W x 3).

    `study_uid` None starts a new study; `captured_wall` is the time.time() of the (first)
    frame. `lossy_method` says the frames were lossily compressed before they got here (a
    grabber's MJPEG: "ISO_10918_1"; "" for a method not known), None that they were not.

    Raises DetailsError naming the field for a patient value DICOM cannot hold, and ValueError
    for frames that are not equal-sized 8-bit BGR images.
    """
    pixels = _rgb_stack(frames)
    patient = (_patient_id(patient_id), _patient_name(patient_name), _accession(accession))
    device = _device(device_name)
    uids = _capture_uids(study_uid, device, patient, captured_wall, pixels.shape)
    count, rows, columns = pixels.shape[:3]
    ds = Dataset()
    ds.SpecificCharacterSet = UTF8
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if count > 1 else UltrasoundImageStorage
    ds.SOPInstanceUID = uids.instance
    taken = datetime.fromtimestamp(captured_wall).astimezone()
    _patient_and_study(ds, patient, uids.study, taken if study_uid is None else None)
    _series_and_equipment(ds, uids.series, device, taken)
    _image(ds, pixels, burned_in)
    _lossy(ds, lossy_method)
    ds.SequenceOfUltrasoundRegions = DicomSequence([_region(rows, columns, mm_per_pixel)])
    if count > 1:
        _cine(ds, count, frame_time_ms)
    ds.file_meta = file_meta_for(ds)
    return ds


def _capture_uids(
    study_uid: str | None,
    device: str,
    patient: tuple[str, str, str],
    captured_wall: float,
    shape: tuple[int, ...],
) -> ObjectUids:
    """A new study from the device, the patient and the time (or the study given), the series
    from the study and the device, the instance from the series, the patient, the time and the
    frames' count and size: the same capture, the same UIDs."""
    when = repr(captured_wall)
    study = study_uid or deterministic_uid("capture-study", device, *patient[:2], when)
    series = deterministic_uid("capture-series", study, device)
    count, rows, columns = shape[:3]
    instance = deterministic_uid("capture-instance", series, patient[0], when, count, rows, columns)
    return ObjectUids(UID(study), series, instance)


def _rgb_stack(frames: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.uint8]:
    """F x H x W x 3 RGB (DICOM's order) from BGR frames, checked to be one size."""
    if len(frames) == 0:
        raise ValueError("no frames to save")
    first = frames[0]
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8 or 0 in first.shape:
        raise ValueError(f"frames must be H x W x 3 uint8 BGR, got {first.shape} {first.dtype}")
    out = np.empty((len(frames), *first.shape), dtype=np.uint8)
    for n, frame in enumerate(frames):
        if frame.shape != first.shape or frame.dtype != np.uint8:
            raise ValueError(
                f"frame {n} is {frame.shape} {frame.dtype}, unlike frame 0 {first.shape} uint8"
            )
        cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGR2RGB, dst=out[n])
    return out


def patient_values(patient_id: str, patient_name: str) -> tuple[str, str]:
    """(patient ID, patient name) as a capture will hold them ('Family, Given' becomes
    'Family^Given'), or DetailsError naming the field: the live page checks a save's patient
    with the very rules the builder applies later."""
    return _patient_id(patient_id), _patient_name(patient_name)


def _patient_id(value: str) -> str:
    return long_string("patient_id", value)


def _patient_name(value: str) -> str:
    """DICOM PN, normalised as the import page does; empty is allowed (Type 2: unknown)."""
    return person_name(value) if value.strip() else ""


def _accession(value: str) -> str:
    return long_string("accession", value, limit=_ACCESSION)


def _device(value: str) -> str:
    """The configured device name made fit for a DICOM LO: it is the admin's free text, and a
    capture must not fail over a stray character in it."""
    kept = "".join(
        " " if c == "\\" or unicodedata.category(c) in ("Cc", "Cf") else c for c in value
    )
    return " ".join(kept.split())[:64] or "capture"


def _patient_and_study(
    ds: Dataset, patient: tuple[str, str, str], study_uid: str, started: datetime | None
) -> None:
    """Study date and time only for a study this capture starts; an existing study's are not
    known here, and an empty value (Type 2) is better than a wrong one."""
    ds.PatientID, ds.PatientName, ds.AccessionNumber = patient
    leave_unknown(ds)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = started.strftime("%Y%m%d") if started else ""
    ds.StudyTime = started.strftime("%H%M%S") if started else ""


def _series_and_equipment(ds: Dataset, series_uid: str, device: str, taken: datetime) -> None:
    """The scanner behind the grabber is unknown; the capture device is what can be named."""
    ds.Modality = "US"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = None
    ds.SeriesDescription = "Video capture"
    ds.Laterality = ""  # Type 2C: no body part is named, so present and empty
    ds.Manufacturer = ""
    ds.ManufacturerModelName = device
    ds.StationName = device[:16]
    ds.DeviceSerialNumber = ""
    ds.SoftwareVersions = f"appliance {__version__}"
    ds.InstanceNumber = None
    ds.ContentDate = taken.strftime("%Y%m%d")
    ds.ContentTime = taken.strftime("%H%M%S.%f")
    ds.AcquisitionDateTime = taken.strftime("%Y%m%d%H%M%S.%f%z")
    ds.TimezoneOffsetFromUTC = taken.strftime("%z")


def _image(ds: Dataset, pixels: npt.NDArray[np.uint8], burned_in: bool) -> None:
    ds.ImageType = ["DERIVED", "PRIMARY"]  # digitised from the scanner's video output
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    put_eight_bit_pixels(ds, pixels, "RGB")


def _lossy(ds: Dataset, method: str | None) -> None:
    """Lossy Image Compression (required in the US modules once an image was lossily
    compressed, PS3.3 C.8.5.6.1.1): a reader must not take JPEG artefacts for anatomy."""
    ds.LossyImageCompression = "00" if method is None else "01"
    if method:
        ds.LossyImageCompressionMethod = method


def _region(rows: int, columns: int, mm_per_pixel: float | None) -> Dataset:
    """The whole image as one 2D tissue region; PhysicalDelta in cm per pixel when the pixel
    size is known, else units 'none' (nothing may be measured on it)."""
    if mm_per_pixel is not None and not mm_per_pixel > 0:
        raise ValueError(f"mm_per_pixel must be positive, got {mm_per_pixel!r}")
    item = Dataset()
    item.RegionSpatialFormat = _REGION_2D
    item.RegionDataType = _REGION_TISSUE
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = 0, 0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = columns - 1, rows - 1
    units = UNITS_NONE if mm_per_pixel is None else UNITS_CM
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = units
    delta = 0.0 if mm_per_pixel is None else mm_per_pixel / 10.0
    item.PhysicalDeltaX = item.PhysicalDeltaY = delta
    return item


def _cine(ds: Dataset, frames: int, frame_time_ms: float) -> None:
    if not frame_time_ms > 0:
        raise ValueError(f"frame_time_ms must be positive for a clip, got {frame_time_ms!r}")
    ds.NumberOfFrames = frames
    ds.FrameTime = f"{frame_time_ms:.3f}"[:16]
    ds.FrameIncrementPointer = Tag(0x0018, 0x1063)  # Frame Time
    rate = max(1, round(1000.0 / frame_time_ms))
    ds.CineRate = rate
    ds.RecommendedDisplayFrameRate = rate
