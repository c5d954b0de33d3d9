"""Wrap a PNG or JPEG picture as a DICOM Secondary Capture image, so that it can take the one
path into the store (`ingest`) like any image a modality sends.

A picture carries no patient, study or body part, so a person enters them (`PictureDetails`);
they are validated while the object is built and every error names the field and quotes the
bad value. The result is deterministic: its UIDs are hashes of the inputs (the details and the
picture's bytes), and it holds no creation time, so importing the same picture with the same
details twice gives the same bytes, which the store recognises as a duplicate.
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from appliance.errors import RejectedInput
from appliance.samples import SC, file_meta_for, sample_uid

MODALITIES = ("CR", "DX", "US", "OT")  # what a picture may be declared as
MAX_PIXELS = 50_000_000  # refuse larger pictures before decoding them (decompression bombs)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
_CODE_STRING = re.compile(r"^[A-Z0-9 _]{0,16}\Z")  # DICOM CS
_LONG = 64  # DICOM LO and PN: at most 64 characters
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
Photometric = Literal["MONOCHROME2", "RGB"]


class DetailsError(RejectedInput):
    """A value entered for a picture that cannot go into DICOM; `field` names the form field.

    The message is for logs and the command line; `key` and `values` let the UI say it from
    its strings catalogue (in the user's language, without DICOM's field names).
    """

    def __init__(self, field: str, message: str, key: str = "invalid", **values: object) -> None:
        super().__init__(message)
        self.field = field
        self.key = key
        self.values = values


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
            "patient_name": _person_name(self.patient_name),
            "patient_id": _long_string("patient_id", self.patient_id, required=True),
            "modality": _modality(self.modality),
            "body_part": _code_string("body_part", self.body_part),
            "view": _code_string("view", self.view),
            "study_description": _long_string("study_description", self.study_description),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)


def _clean(field: str, value: str) -> str:
    text = value.strip()
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        raise DetailsError(
            field, f"{field}: control characters are not allowed in {text!r}", "invisible"
        )
    if "\\" in text:  # DICOM's value separator: it would split the value in two
        raise DetailsError(field, f"{field}: a backslash is not allowed in {text!r}", "backslash")
    return text


def _long_string(field: str, value: str, required: bool = False) -> str:
    text = _clean(field, value)
    if required and not text:
        raise DetailsError(field, f"{field}: must not be empty", "required")
    if len(text) > _LONG:
        raise DetailsError(
            field, f"{field}: {text!r} is longer than {_LONG} characters", "too_long", n=_LONG
        )
    return text


def _person_name(value: str) -> str:
    """DICOM PN: 'Family^Given'; 'Family, Given' as typed by most people becomes that."""
    text = _long_string("patient_name", value, required=True)
    if "=" in text:  # the separator of ideographic/phonetic groups, not meant here
        raise DetailsError(
            "patient_name", f"patient_name: '=' is not allowed in {text!r}", "name_equals"
        )
    if "^" not in text and "," in text:
        family, given = text.split(",", 1)
        text = f"{family.strip()}^{given.strip()}"
    if text.count("^") > 4:
        raise DetailsError(
            "patient_name", f"patient_name: {text!r} has more than 5 parts", "name_parts"
        )
    return text


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

    Conservative where nothing is known: burned-in annotation YES (a photo of a screen may
    show names), lossy compression '01' for JPEG sources, no pixel spacing (no measurements).
    """
    study_uid = sample_uid(
        "import-study",
        details.patient_id,
        details.patient_name,
        details.study_description,
        details.study_date.isoformat(),
    )
    series_uid = sample_uid(
        "import-series", study_uid, details.modality, details.body_part, details.view
    )
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names as typed, any script
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = sample_uid("import-instance", series_uid, picture.sha256)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    _patient_and_study(ds, details, study_uid)
    _series_and_equipment(ds, details, series_uid)
    _image(ds, picture)
    ds.file_meta = file_meta_for(ds)
    return ds


def _patient_and_study(ds: Dataset, details: PictureDetails, study_uid: str) -> None:
    ds.PatientName = details.patient_name
    ds.PatientID = details.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = details.study_date.strftime("%Y%m%d")
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.StudyDescription = details.study_description


def _series_and_equipment(ds: Dataset, details: PictureDetails, series_uid: str) -> None:
    ds.Modality = details.modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = None
    ds.SeriesDescription = "Imported picture"
    if details.body_part:
        ds.BodyPartExamined = details.body_part
    if details.view:
        ds.ViewPosition = details.view  # read by the worker's routing, as for CR/DX
    ds.Laterality = ""
    ds.Manufacturer = ""
    ds.ConversionType = "WSD"  # workstation: a picture brought in by a person


def _image(ds: Dataset, picture: Picture) -> None:
    pixels = picture.pixels
    ds.InstanceNumber = None
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "YES"
    if picture.lossy:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 3 if picture.photometric == "RGB" else 1
    ds.PhotometricInterpretation = picture.photometric
    if picture.photometric == "RGB":
        ds.PlanarConfiguration = 0  # R, G, B of each pixel together, as decoded
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    data = pixels.tobytes()
    if len(data) % 2:
        data += b"\x00"  # DICOM values have even length
    ds["PixelData"] = DataElement(0x7FE00010, "OB", data)


def write_secondary_capture(ds: Dataset, path: Path) -> None:
    """Write `ds` as a DICOM Part 10 file (preamble, file meta) at `path`."""
    ds.save_as(path, enforce_file_format=True)
