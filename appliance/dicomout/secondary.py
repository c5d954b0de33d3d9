"""Wrap a PNG or JPEG picture as a DICOM Secondary Capture image, so that it can take the one
path into the store (`ingest`) like any image a modality sends.

A picture carries no patient, study or body part, so a person enters them (`PictureDetails`);
they are validated while the object is built and every error names the field and quotes the
bad value. The result is deterministic: its UIDs are hashes of the inputs (the details and the
picture's bytes), and it holds no creation time, so importing the same picture with the same
details twice gives the same bytes, which the store recognises as a duplicate.

highdicom's SCImage builds the object, as it builds the heatmaps: one frame, gray or RGB, which
is what a PNG or JPEG holds. What it cannot say (the declared modality, the body part and view
the worker routes on, conversion by a workstation, Type 2 values left empty, no clock times)
is set afterwards by hand, each with its reason.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import cv2
import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from appliance.dicomout.common import (
    UTF8,
    DetailsError,
    Photometric,
    long_string,
    person_name,
)
from appliance.dicomout.derived import date_contributions
from appliance.dicomout.meta import file_meta_for
from appliance.dicomout.uids import ObjectUids, deterministic_uid
from appliance.errors import RejectedInput

__all__ = [
    "MODALITIES",
    "DetailsError",
    "Picture",
    "PictureDetails",
    "build_secondary_capture",
    "decode_picture",
    "import_uids",
    "picture_kind",
    "picture_size",
    "write_secondary_capture",
]

MODALITIES = ("CR", "DX", "US", "OT")  # what a picture may be declared as
MAX_PIXELS = 50_000_000  # refuse larger pictures before decoding them (decompression bombs)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
_CODE_STRING = re.compile(r"^[A-Z0-9 _]{0,16}\Z")  # DICOM CS
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
SERIES_DESCRIPTION = "Imported picture"
# highdicom's SCImage wants a patient orientation and positive series and instance numbers;
# an imported picture has none of them, so these stand in and are replaced by empty values.
_PLACEHOLDER_ORIENTATION = ("L", "F")
_PLACEHOLDER_NUMBER = 1
_CLOCK_TIMES = (
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "DateOfSecondaryCapture",
    "TimeOfSecondaryCapture",
)


@dataclass(frozen=True)
class PictureDetails:
    """What a person says a picture shows. Values are normalised (stripped, upper-cased codes)
    and checked when the object is made, so a built dataset never holds an unchecked value."""

    patient_name: str
    patient_id: str
    modality: str
    study_date: date
    body_part: str = ""
    view: str = ""
    study_description: str = ""

    def __post_init__(self) -> None:
        normalised = {
            "patient_name": person_name(self.patient_name),
            "patient_id": long_string("patient_id", self.patient_id, required=True),
            "modality": _modality(self.modality),
            "body_part": _code_string("body_part", self.body_part),
            "view": _code_string("view", self.view),
            "study_description": long_string("study_description", self.study_description),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)


def _code_string(field: str, value: str) -> str:
    text = value.strip().upper()
    if not _CODE_STRING.match(text):
        raise DetailsError(
            field,
            f"{field}: {text!r} is not 0-16 letters, digits, spaces or underscores",
            "code_string",
        )
    return text


def _modality(value: str) -> str:
    text = value.strip().upper()
    if text not in MODALITIES:
        choices = ", ".join(MODALITIES)
        raise DetailsError(
            "modality", f"modality: {text!r} is not one of {choices}", "modality", choices=choices
        )
    return text


@dataclass(frozen=True)
class Picture:
    """A decoded picture: 8-bit gray (HxW) or RGB (HxWx3), and what it came from."""

    pixels: npt.NDArray[np.uint8]
    photometric: Photometric
    lossy: bool  # decoded from JPEG: it has been through lossy compression
    sha256: str  # of the file as uploaded


def picture_kind(head: bytes) -> Literal["png", "jpeg"] | None:
    """PNG or JPEG by the file's first bytes (never by its name), else None."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None


def decode_picture(data: bytes) -> Picture:
    """Decode PNG or JPEG bytes into 8-bit pixels, upright as EXIF says; RejectedInput if the
    bytes are not a picture we can take, or one too large to decode safely."""
    kind = picture_kind(data[:8])
    if kind is None:
        raise RejectedInput("not a PNG or JPEG file")
    width, height = picture_size(data, kind)
    if width * height > MAX_PIXELS or max(width, height) > 65535:
        raise RejectedInput(f"the picture is too large ({width} x {height} pixels)")
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR  # keeps 16-bit and gray; applies EXIF
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        decoded = None
    if decoded is None:
        raise RejectedInput(f"the {kind.upper()} file cannot be decoded (damaged or unsupported)")
    pixels, photometric = _eight_bit(decoded)
    return Picture(pixels, photometric, kind == "jpeg", hashlib.sha256(data).hexdigest())


def picture_size(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) from the header, read before any pixel is decoded."""
    if kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise RejectedInput("the PNG file has no image header")
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return _jpeg_size(data)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG markers to the frame header (SOFn), which holds the size."""
    position = 2
    while position + 9 <= len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return int(width), int(height)
        position += 2 + length
    raise RejectedInput("the JPEG file has no frame header (damaged or not a picture)")


def _eight_bit(decoded: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint8], Photometric]:
    """8-bit MONOCHROME2 or RGB. A colour picture whose channels are all equal is stored as
    gray: models for radiographs expect MONOCHROME2, and nothing is lost."""
    if decoded.dtype == np.uint16:
        # Scaled by the picture's own maximum: a 12-bit image in a 16-bit PNG stays visible.
        peak = max(int(decoded.max()), 1)
        decoded = (decoded.astype(np.float32) * (255.0 / peak) + 0.5).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        raise RejectedInput(f"pictures of {decoded.dtype} samples are not supported")
    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[:, :, 0]
    if decoded.ndim == 2:
        return np.ascontiguousarray(decoded), "MONOCHROME2"
    rgb = cv2.cvtColor(decoded[:, :, :3], cv2.COLOR_BGR2RGB)
    if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 1], rgb[:, :, 2]):
        return np.ascontiguousarray(rgb[:, :, 0]), "MONOCHROME2"
    return np.ascontiguousarray(rgb), "RGB"


def build_secondary_capture(picture: Picture, details: PictureDetails) -> Dataset:
    """A Secondary Capture Image (PS3.3 A.8.1) of `picture`, with the entered details.

    Conservative where nothing is known: burned-in annotation YES (a photo of a screen may show
    names), lossy compression '01' for JPEG sources, no pixel spacing (no measurements), no
    times (the picture's own are unknown, and the clock's would make every import of the same
    picture a different object).
    """
    uids = import_uids(picture, details)
    ds = hd.sc.SCImage(
        pixel_array=picture.pixels,
        photometric_interpretation=picture.photometric,
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        study_instance_uid=uids.study,
        series_instance_uid=uids.series,
        series_number=_PLACEHOLDER_NUMBER,
        sop_instance_uid=uids.instance,
        instance_number=_PLACEHOLDER_NUMBER,
        manufacturer="",  # Type 2: the box is assembled on site; no manufacturer to name
        patient_id=details.patient_id,
        study_date=details.study_date,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SERIES_DESCRIPTION,
        specific_character_set=UTF8,  # names as typed, any script
    )
    _patient_and_study(ds, details)
    _series(ds, details)
    _image(ds, picture)
    _no_times(ds)
    ds.file_meta = file_meta_for(ds)  # the box's own, as every object it writes
    return ds


def import_uids(picture: Picture, details: PictureDetails) -> ObjectUids:
    """The study from the details, the series from the study and what the picture is declared
    as, the instance from the series and the picture's bytes: the same import, the same UIDs."""
    study = deterministic_uid(
        "import-study",
        details.patient_id,
        details.patient_name,
        details.study_description,
        details.study_date.isoformat(),
    )
    series = deterministic_uid(
        "import-series", study, details.modality, details.body_part, details.view
    )
    return ObjectUids(study, series, deterministic_uid("import-instance", series, picture.sha256))


def _patient_and_study(ds: Dataset, details: PictureDetails) -> None:
    """What highdicom leaves to the caller. The name is set here rather than given to it: it
    warns about a name of one part ('Berg'), which DICOM allows and a person may type."""
    ds.PatientName = details.patient_name
    ds.StudyDescription = details.study_description


def _series(ds: Dataset, details: PictureDetails) -> None:
    """The series as the person declared it; highdicom's SCImage fixes the modality to OT and
    has no parameter for the body part or the view."""
    ds.Modality = details.modality
    # Type 2, empty: imported series have no numbering of their own, and one number for all
    # would give every import series of a study the same. highdicom insists on a positive one.
    ds.SeriesNumber = None
    if details.body_part:
        ds.BodyPartExamined = details.body_part
    if details.view:
        ds.ViewPosition = details.view  # read by the worker's routing, as for CR/DX
    if not details.body_part:
        # Type 2C: required (empty, unknown) only when no unpaired part is named; highdicom's
        # laterality takes only R or L, so it cannot say "unknown".
        ds.Laterality = ""
    # Workstation: a picture brought in by a person; highdicom's SCImage always says DI.
    ds.ConversionType = hd.sc.ConversionTypeValues.WSD.value


def _image(ds: Dataset, picture: Picture) -> None:
    """The General Image attributes highdicom sets otherwise, or not at all."""
    ds.ImageType = ["DERIVED", "SECONDARY"]  # as the heatmaps; highdicom adds OTHER, no news
    ds.InstanceNumber = None  # Type 2, empty: pictures of one series have no order
    ds.PatientOrientation = ""  # Type 2C, empty: a picture says nothing of its directions
    ds.BurnedInAnnotation = "YES"
    if picture.lossy:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"


def _no_times(ds: Dataset) -> None:
    """highdicom dates the instance, its content and the capture, and names itself as
    contributing equipment, with the clock's time; they are optional here and go, so that the
    same import gives the same bytes."""
    for keyword in _CLOCK_TIMES:
        if keyword in ds:
            delattr(ds, keyword)
    date_contributions(ds, "")


def write_secondary_capture(ds: Dataset, path: Path) -> None:
    """Write `ds` as a DICOM Part 10 file (preamble, file meta) at `path`."""
    ds.save_as(path, enforce_file_format=True)
