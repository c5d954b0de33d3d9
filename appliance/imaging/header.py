"""Read the attributes the store indexes from a DICOM file, without touching the pixel data.

Only the listed tags are parsed, so a large or hostile dataset costs a scan, not a full decode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from appliance.domain import InstanceHeader, is_valid_uid
from appliance.errors import RejectedInput

_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
]
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def read_header(path: Path) -> InstanceHeader:
    """Parse the header of the DICOM file at `path`, or raise RejectedInput saying why."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        values = {name: _text(ds.get(name)) for name in _TAGS}
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise RejectedInput(f"cannot parse the dataset: {exc}") from exc
    except RecursionError as exc:
        raise RejectedInput("cannot parse the dataset: sequences nested too deeply") from exc
    for name in _REQUIRED_UIDS:
        if not is_valid_uid(values[name]):
            problem = "missing" if not values[name] else f"not a valid UID: {values[name]!r}"
            raise RejectedInput(f"{name} is {problem}")
    return _to_header(values, transfer_syntax)


def _to_header(v: dict[str, str], transfer_syntax: str) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=v["SOPClassUID"],
        sop_instance_uid=v["SOPInstanceUID"],
        study_uid=v["StudyInstanceUID"],
        series_uid=v["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        patient_id=v["PatientID"],
        patient_name=v["PatientName"],
        patient_birth_date=v["PatientBirthDate"],
        patient_sex=v["PatientSex"],
        accession_number=v["AccessionNumber"],
        study_date=v["StudyDate"],
        study_time=v["StudyTime"],
        study_description=v["StudyDescription"],
        modality=v["Modality"].upper(),
        body_part=v["BodyPartExamined"].upper(),
        view_position=v["ViewPosition"].upper(),
        series_number=_int(v["SeriesNumber"]),
        series_description=v["SeriesDescription"],
        instance_number=_int(v["InstanceNumber"]),
        photometric=v["PhotometricInterpretation"].upper(),
        rows=_int(v["Rows"]),
        columns=_int(v["Columns"]),
        frames=_int(v["NumberOfFrames"]) or 1,
    )


def _text(value: Any) -> str:
    """An element's value as clean text: multi-values joined, NULs and padding removed."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = "\\".join(str(v) for v in value)
    return str(value).replace("\x00", "").strip()[:256]


def _int(text: str) -> int | None:
    try:
        return int(float(text.split("\\")[0])) if text else None
    except ValueError:
        return None
