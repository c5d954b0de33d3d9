"""What the objects the box writes about an analysed image share: the patient and study copied
from the source image, the equipment, the series they go in, their times and their character
set.

Values copied from the source are copied as text, never as the source's encoded bytes: a source
may be in any character set (Latin-1, ISO 2022 with Japanese), and the object's own text (a
clinician's name, a site) may need characters that set lacks. Each object is written in the
default repertoire when all its text is ASCII and in UTF-8 (ISO_IR 192) otherwise, so that
"Müller^Jürgen", Greek or Cyrillic names round-trip whatever the source used.

Times come from the content (when it was made), never from the clock, so that building the same
object twice gives the same bytes. Dates and times (DA, TM) are written in the clock of the
source's own (see `set_times`); date-times (DT) in UTC with the offset said.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, timedelta, timezone

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from appliance import __version__
from appliance.dicomout.common import LONG, UTF8, leave_unknown

MODEL_NAME = "appliance"  # Manufacturer's Model Name: the box that made the object
SOFTWARE = f"appliance {__version__}"

# Series numbers of the box's own series, one per kind per study, far from a modality's 1, 2, 3.
SERIES_NUMBER = {"sr": 9901, "heatmap": 9902, "report": 9903}

# Patient and study attributes copied from the source; Type 2 ones are present even if empty.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_OPTIONAL = ("IssuerOfPatientID", "PatientAge", "StudyDescription")
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
# The control characters ST, LT and UT allow, less ESC: it only switches ISO 2022 sets.
_TEXT_CONTROLS = frozenset("\r\n\f")


def copy_patient_and_study(ds: Dataset, source: Dataset) -> None:
    """Set `ds`'s patient and study from `source`'s, as text (see the module's docstring)."""
    ds.StudyInstanceUID = source.StudyInstanceUID
    leave_unknown(ds, _TYPE_2)  # present and empty where the source does not know either
    for keyword in _TYPE_2 + _OPTIONAL:
        value = source.get(keyword)
        if value is not None:
            setattr(ds, keyword, _as_text(value))


def _as_text(value: object) -> str:
    if isinstance(value, MultiValue):  # a source's CHEST\PA: two values again, not a list's text
        return "\\".join(_as_text(item) for item in value)
    if isinstance(value, PersonName):
        return str(value)  # all groups (alphabetic=ideographic=phonetic), decoded
    return str(value).strip()


def source_reference(source: Dataset, frame: int | None = None) -> Dataset:
    """An item referencing the source image (SOP Instance Reference Macro), with the frame
    (0-based `frame`, written 1-based) only for a multi-frame source."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None and frame_count(source) > 1:
        item.ReferencedFrameNumber = frame + 1
    return item


def frame_count(source: Dataset) -> int:
    """Number of Frames, 1 when absent or not a number."""
    try:
        return max(1, int(source.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def equipment(ds: Dataset, institution: str) -> None:
    """The General Equipment module: the box, and the site when configured."""
    ds.Manufacturer = ""  # Type 2: the box is assembled on site; no manufacturer to name
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = SOFTWARE
    if institution.strip():
        ds.InstitutionName = plain(institution, LONG)


def moment(iso: str) -> datetime:
    """An ISO 8601 time from the store ('2026-03-04T10:20:30.5+00:00', 'Z'); naive is UTC."""
    when = datetime.fromisoformat(iso.strip().replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def utc_datetime(iso: str) -> str:
    """A DICOM DT in UTC with its offset said: unambiguous wherever it is read."""
    return moment(iso).astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def set_times(ds: Dataset, made_at: str, source: Dataset, *keywords: str) -> None:
    """Each `<keyword>Date`/`Time` pair set to `made_at`, in the clock the source's own dates
    are in, since the object copies the source's study date and time and one Timezone Offset
    From UTC covers all of them: the source's offset when it states one (which is then
    copied), else the box's local time, as a modality on the same site writes its own."""
    offset = _offset(source)
    when = moment(made_at).astimezone(offset)  # None: the box's local zone
    for keyword in keywords:
        setattr(ds, f"{keyword}Date", when.strftime("%Y%m%d"))
        setattr(ds, f"{keyword}Time", when.strftime("%H%M%S"))
    if offset is not None:
        ds.TimezoneOffsetFromUTC = source.TimezoneOffsetFromUTC


def _offset(source: Dataset) -> timezone | None:
    """The source's Timezone Offset From UTC ('+HHMM', '-HHMM'), None if absent or malformed."""
    text = str(source.get("TimezoneOffsetFromUTC") or "").strip()
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    minutes = int(text[1:3]) * 60 + int(text[3:])
    return timezone(timedelta(minutes=-minutes if text[0] == "-" else minutes))


def date_contributions(ds: Dataset, made_at: str) -> None:
    """highdicom names itself in the Contributing Equipment Sequence with the clock's time;
    the time becomes `made_at`'s, or goes (it is optional) when there is none."""
    for item in ds.get("ContributingEquipmentSequence", []):
        if made_at:
            item.ContributionDateTime = utc_datetime(made_at)
        elif "ContributionDateTime" in item:
            del item.ContributionDateTime


def plain(text: str, limit: int | None = None) -> str:
    """`text` fit for a DICOM string: control characters and backslashes (the value separator)
    become spaces, runs of spaces one, and it is cut to `limit` (see `fit`)."""
    kept = "".join(
        " " if c == "\\" or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text
    )
    result = " ".join(kept.split())
    return fit(result, limit) if limit else result


def fit(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes in UTF-8 (so also `limit` characters), never inside
    a character. The standard counts a value's length in characters, but dciodvfy and many
    receivers' databases count bytes: "Klinik Süd" in 64 characters may be 70 bytes."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore").rstrip()


def text_value(text: str) -> str:
    """`text` fit for a DICOM text value (ST, LT, UT): line breaks kept, tabs and other control
    characters (which these VRs do not allow, and which a pasted text may hold) as spaces."""
    return "".join(
        c if c in _TEXT_CONTROLS or unicodedata.category(c) not in ("Cc", "Zl", "Zp") else " "
        for c in text
    )


def person_name(text: str) -> str:
    """A person's name as the box knows it (free text: 'Dr Anna Berg', 'berg') as a DICOM PN:
    'Family, Given' becomes 'Family^Given'; anything else is kept whole as one component."""
    name = plain(text, LONG).replace("=", " ")
    if "^" not in name and "," in name:
        family, given = name.split(",", 1)
        name = f"{family.strip()}^{given.strip()}"
    return name


def set_character_set(ds: Dataset) -> None:
    """UTF-8 when any text in `ds` (its sequences included) is not ASCII, else none."""
    if any(_non_ascii(elem.value) for elem in ds.iterall() if elem.VR in _TEXT_VRS):
        ds.SpecificCharacterSet = UTF8
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet


def _non_ascii(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, (list, tuple, MultiValue)):
        return any(_non_ascii(v) for v in value)
    return not str(value).isascii()
