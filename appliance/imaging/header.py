"""Read the attributes the store indexes from a DICOM file, without touching the pixel data.

Parsing stops at the pixel data, whose completeness is checked without reading it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from appliance.domain import InstanceHeader, is_valid_uid
from appliance.errors import RejectedInput
from appliance.imaging._attributes import plain_error

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
_UNDEFINED = 0xFFFFFFFF
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Called with the parsed dataset, the file positioned on its pixel element, the transfer syntax.
Inspect = Callable[[Dataset, BinaryIO, str], None]


def read_header(path: Path, inspect: Inspect | None = None) -> InstanceHeader:
    """Parse the header of the DICOM file at `path`, or raise RejectedInput saying why.

    Also checks that the pixel data is all there: a dataset cut off inside it parses fine
    but could never be shown or analysed. `inspect`, if given, is called once the header
    holds, with the parsed dataset, the open file (positioned on the pixel element; a deflated
    file is inflated first, by the caller) and the transfer syntax, so that further checks
    need not open and parse the file again.
    """
    try:
        with path.open("rb") as handle:
            ds = pydicom.dcmread(handle, stop_before_pixels=True)
            values = {name: _text(ds.get(name)) for name in _TAGS}
            transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
            if transfer_syntax != DeflatedExplicitVRLittleEndian:  # inflated elsewhere
                at_pixels = handle.tell()
                _check_pixel_data(handle, transfer_syntax, path.stat().st_size)
                handle.seek(at_pixels)
            _check_uids(values)
            if inspect is not None:
                inspect(ds, handle, transfer_syntax)
    except (RejectedInput, MemoryError):
        raise  # already says why; out of memory is ours, not the sender's
    except RecursionError as exc:
        raise RejectedInput("cannot parse the dataset: sequences nested too deeply") from exc
    except Exception as exc:
        # Hostile or broken input makes pydicom raise many kinds of error (OverflowError,
        # struct.error, zlib.error, BytesLengthException, ...): all mean the sender's dataset
        # cannot be read, and must be refused with a reason rather than crash the handler.
        raise RejectedInput(f"cannot parse the dataset: {plain_error(exc)}") from exc
    return _to_header(values, transfer_syntax)


def _check_uids(values: dict[str, str]) -> None:
    for name in _REQUIRED_UIDS:
        if not is_valid_uid(values[name]):
            problem = "missing" if not values[name] else f"not a valid UID: {values[name]!r}"
            raise RejectedInput(f"{name} is {problem}")


def _check_pixel_data(handle: BinaryIO, transfer_syntax: str, size: int) -> None:
    """Raise RejectedInput if the Pixel Data element at the handle's position is cut off."""
    head = handle.read(12)
    order = ">" if transfer_syntax == ExplicitVRBigEndian else "<"
    if len(head) < 12 or struct.unpack(f"{order}HH", head[:4]) != (0x7FE0, 0x0010):
        return  # no (integer) pixel data: nothing to check here
    if transfer_syntax == ImplicitVRLittleEndian:
        length, start = struct.unpack("<I", head[4:8])[0], handle.tell() - 4
    else:
        length, start = struct.unpack(f"{order}I", head[8:12])[0], handle.tell()
    if length != _UNDEFINED:
        if start + length > size:
            raise RejectedInput(f"pixel data is truncated: {size - start} of {length} bytes")
        return
    _check_fragments(handle, start, size)


def _check_fragments(handle: BinaryIO, position: int, size: int) -> None:
    """Walk encapsulated fragments to the sequence delimiter without reading their data."""
    while True:
        handle.seek(position)
        item = handle.read(8)
        if len(item) < 8:
            raise RejectedInput("pixel data is truncated: the fragment sequence has no end")
        group, element, length = struct.unpack("<HHI", item)
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        if (group, element) != (0xFFFE, 0xE000) or length == _UNDEFINED:
            raise RejectedInput(f"pixel data is corrupt: unexpected tag at byte {position}")
        position += 8 + length
        if position > size:
            raise RejectedInput("pixel data is truncated inside a fragment")


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
