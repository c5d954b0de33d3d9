"""What the DICOM builders share: checking the values a person types (each error names the
field and quotes the bad value), the attributes the box cannot know, and 8-bit pixel data.

Every builder validates its inputs while it builds, so a built dataset never holds an
unchecked value; the checks live here so that the import page and the live page apply the
same rules to a patient's name.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from appliance.errors import RejectedInput

UTF8 = "ISO_IR 192"  # Specific Character Set: names as typed, any script
LONG = 64  # DICOM LO and PN: at most 64 characters
Photometric = Literal["MONOCHROME2", "RGB"]

# Type 2 attributes of the patient and study modules that nothing the box is given can fill:
# present and empty says "unknown", which is better than a guess.
UNKNOWN_PATIENT_AND_STUDY = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID")


class DetailsError(RejectedInput):
    """A value entered for an image that cannot go into DICOM; `field` names the form field.

    The message is for logs and the command line; `key` and `values` let the UI say it from
    its strings catalogue (in the user's language, without DICOM's field names).
    """

    def __init__(self, field: str, message: str, key: str = "invalid", **values: object) -> None:
        super().__init__(message)
        self.field = field
        self.key = key
        self.values = values


def clean_text(field: str, value: str) -> str:
    """`value` stripped, refused if it holds characters DICOM text cannot carry."""
    text = value.strip()
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        raise DetailsError(
            field, f"{field}: control characters are not allowed in {text!r}", "invisible"
        )
    if "\\" in text:  # DICOM's value separator: it would split the value in two
        raise DetailsError(field, f"{field}: a backslash is not allowed in {text!r}", "backslash")
    return text


def long_string(field: str, value: str, required: bool = False, limit: int = LONG) -> str:
    """A DICOM LO (or SH with `limit` 16): clean text of at most `limit` characters."""
    text = clean_text(field, value)
    if required and not text:
        raise DetailsError(field, f"{field}: must not be empty", "required")
    if len(text) > limit:
        raise DetailsError(
            field, f"{field}: {text!r} is longer than {limit} characters", "too_long", n=limit
        )
    return text


def person_name(value: str) -> str:
    """DICOM PN: 'Family^Given'; 'Family, Given' as typed by most people becomes that."""
    text = long_string("patient_name", value, required=True)
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


def leave_unknown(ds: Dataset, keywords: tuple[str, ...] = UNKNOWN_PATIENT_AND_STUDY) -> None:
    """Set each of `keywords` present and empty (Type 2: known to be unknown)."""
    for keyword in keywords:
        setattr(ds, keyword, "")


def put_eight_bit_pixels(
    ds: Dataset, pixels: npt.NDArray[np.uint8], photometric: Photometric
) -> None:
    """The Image Pixel module for 8-bit samples: `pixels` is (F x) H x W for MONOCHROME2 and
    (F x) H x W x 3 for RGB, colour by pixel (planar configuration 0)."""
    rgb = photometric == "RGB"
    rows, columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.Rows, ds.Columns = int(rows), int(columns)
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric
    if rgb:
        ds.PlanarConfiguration = 0  # R, G, B of each pixel together
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    data = pixels.tobytes()
    if len(data) % 2:
        data += b"\x00"  # DICOM values have even length
    ds["PixelData"] = DataElement(0x7FE00010, "OB", data)
