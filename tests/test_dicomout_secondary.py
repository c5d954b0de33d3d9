"""The Secondary Capture builder: every object written and read back, checked by our header
reader and by DCMTK's dcmdump where it is installed; details validated with errors that name
the field and quote the value; pictures refused before decoding when too large."""

from __future__ import annotations

import shutil
import struct
import subprocess
import warnings
import zlib
from datetime import date
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest

from appliance.dicomout.secondary import (
    DetailsError,
    Picture,
    PictureDetails,
    build_secondary_capture,
    decode_picture,
    import_uids,
    picture_kind,
    write_secondary_capture,
)
from appliance.dicomout.uids import UID_ROOT
from appliance.errors import RejectedInput
from appliance.imaging.header import read_header

DAY = date(2026, 3, 4)


def details(**changes: Any) -> PictureDetails:
    values: dict[str, Any] = {
        "patient_name": "Doe^Jane",
        "patient_id": "P1",
        "modality": "DX",
        "study_date": DAY,
        "body_part": "CHEST",
        "view": "PA",
        "study_description": "Chest",
    }
    return PictureDetails(**{**values, **changes})


def encode(extension: str, pixels: np.ndarray[Any, Any]) -> bytes:
    ok, data = cv2.imencode(extension, pixels)
    assert ok
    return data.tobytes()


def written(tmp_path: Path, data: bytes, info: PictureDetails | None = None) -> pydicom.Dataset:
    """Build, write and read back; the file must also pass our own header reader."""
    path = tmp_path / "sc.dcm"
    write_secondary_capture(build_secondary_capture(decode_picture(data), info or details()), path)
    header = read_header(path)
    assert header.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
    return pydicom.dcmread(path)


def test_a_gray_png_round_trips(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (33, 47), dtype=np.uint8)  # odd size
    ds = written(tmp_path, encode(".png", pixels))
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert (ds.ConversionType, ds.BurnedInAnnotation) == ("WSD", "YES")
    assert "LossyImageCompression" not in ds
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.StudyDate == "20260304"
    assert (ds.Modality, ds.BodyPartExamined, ds.ViewPosition) == ("DX", "CHEST", "PA")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert all(uid.startswith(UID_ROOT) and uid.is_valid for uid in uids)


def test_colour_stays_colour_and_gray_in_colour_becomes_gray(tmp_path: Path) -> None:
    bgr = np.zeros((20, 30, 3), dtype=np.uint8)
    bgr[:, :, 0] = 200  # blue, in OpenCV's order
    ds = written(tmp_path, encode(".png", bgr))
    assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
    assert tuple(ds.pixel_array[0, 0]) == (0, 0, 200)
    gray = np.dstack([np.arange(30, dtype=np.uint8)] * 3).repeat(20, axis=0)
    assert written(tmp_path, encode(".png", gray)).PhotometricInterpretation == "MONOCHROME2"


def test_a_16_bit_png_is_scaled_to_8_bits(tmp_path: Path) -> None:
    pixels = np.array([[0, 1024, 4095]], dtype=np.uint16).repeat(4, axis=0)  # 12 bits used
    ds = written(tmp_path, encode(".png", pixels))
    assert ds.pixel_array[0].tolist() == [0, 64, 255]


def test_a_jpeg_is_marked_as_lossy(tmp_path: Path) -> None:
    ds = written(tmp_path, encode(".jpg", np.full((16, 16), 128, dtype=np.uint8)))
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"


def test_the_same_inputs_give_the_same_object(tmp_path: Path) -> None:
    data = encode(".png", np.eye(8, dtype=np.uint8) * 255)
    first = build_secondary_capture(decode_picture(data), details())
    second = build_secondary_capture(decode_picture(data), details())
    other = build_secondary_capture(decode_picture(data), details(patient_id="P2"))
    paths = [tmp_path / f"{n}.dcm" for n in range(2)]
    for ds, path in zip((first, second), paths, strict=True):
        write_secondary_capture(ds, path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert other.StudyInstanceUID != first.StudyInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID


def test_names_in_any_script_survive(tmp_path: Path) -> None:
    data = encode(".png", np.zeros((4, 4), dtype=np.uint8))
    ds = written(tmp_path, data, details(patient_name="Müller, Jürgen", patient_id="Ж-7"))
    assert str(ds.PatientName) == "Müller^Jürgen" and ds.PatientID == "Ж-7"


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="DCMTK is not installed")
def test_dcmdump_parses_the_file(tmp_path: Path) -> None:
    written(tmp_path, encode(".png", np.zeros((5, 7, 3), dtype=np.uint8) + 9))
    result = subprocess.run(
        ["dcmdump", "-E", str(tmp_path / "sc.dcm")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "SecondaryCaptureImageStorage" in result.stdout
    assert "(0008,0064) CS [WSD]" in result.stdout


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"patient_name": "  "}, "patient_name", "patient_name: must not be empty"),
        ({"patient_name": "A=B"}, "patient_name", "'=' is not allowed in 'A=B'"),
        ({"patient_name": "a^b^c^d^e^f"}, "patient_name", "has more than 5 parts"),
        ({"patient_id": "X\\Y"}, "patient_id", "a backslash is not allowed in 'X\\\\Y'"),
        ({"patient_id": "X\x00Y"}, "patient_id", "control characters are not allowed"),
        ({"study_description": "x" * 65}, "study_description", "longer than 64 characters"),
        ({"modality": "CT"}, "modality", "'CT' is not one of CR, DX, US, OT"),
        ({"body_part": "CHEST!"}, "body_part", "'CHEST!' is not 0-16 letters"),
        ({"view": "A" * 17}, "view", "is not 0-16 letters"),
    ],
)
def test_details_that_cannot_go_into_dicom(
    changes: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(DetailsError) as caught:
        details(**changes)
    assert caught.value.field == field
    assert message in str(caught.value)


def test_details_are_normalised() -> None:
    info = details(patient_name=" Doe ,  Jane ", modality="us", body_part="abdomen", view=" pa ")
    assert (info.patient_name, info.modality, info.body_part, info.view) == (
        "Doe^Jane",
        "US",
        "ABDOMEN",
        "PA",
    )


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def test_huge_or_damaged_pictures_are_refused_before_decoding() -> None:
    with pytest.raises(RejectedInput, match=r"too large \(100000 x 100000 pixels\)"):
        decode_picture(png_header(100_000, 100_000))
    with pytest.raises(RejectedInput, match="cannot be decoded"):
        decode_picture(png_header(10, 10))  # a header and no pixels
    jpeg = encode(".jpg", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(RejectedInput, match="cannot be decoded"):
        decode_picture(jpeg[: len(jpeg) // 3])
    with pytest.raises(RejectedInput, match="no frame header"):
        decode_picture(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    with pytest.raises(RejectedInput, match="not a PNG or JPEG"):
        decode_picture(b"GIF89a....")
    assert picture_kind(b"\x89PNG\r\n\x1a\n") == "png"
    assert picture_kind(b"\xff\xd8\xff\xdb") == "jpeg"
    assert picture_kind(b"BM") is None


def test_the_uids_of_an_import_stay_what_they_were() -> None:
    """Pinned: a changed UID would make a repeated import a second copy of the picture."""
    picture = Picture(np.zeros((2, 2), dtype=np.uint8), "MONOCHROME2", False, "ab" * 32)
    uids = import_uids(picture, details())
    assert uids.study == "1.2.826.0.1.3680043.8.498.85109219754813913125383630235390067773"
    assert uids.series == "1.2.826.0.1.3680043.8.498.12777680287859358058431172511451221963"
    assert uids.instance == "1.2.826.0.1.3680043.8.498.94155071628691282105851055951495412479"


def test_what_highdicom_says_otherwise_is_as_the_import_says(tmp_path: Path) -> None:
    data = encode(".png", np.full((6, 9), 77, dtype=np.uint8))
    ds = written(tmp_path, data, details(modality="CR", body_part="", view=""))
    assert (ds.Modality, ds.ConversionType, list(ds.ImageType)) == (
        "CR",
        "WSD",
        ["DERIVED", "SECONDARY"],
    )
    assert "BodyPartExamined" not in ds and "ViewPosition" not in ds
    assert "Laterality" in ds and ds.Laterality == ""  # no part named: side unknown
    for keyword in ("SeriesNumber", "InstanceNumber", "PatientOrientation", "StudyTime"):
        assert keyword in ds and ds[keyword].value in (None, ""), keyword
    assert ds.file_meta.ImplementationClassUID == pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    assert "Laterality" not in written(tmp_path, data, details(body_part="HAND"))


def test_no_clock_time_is_written(tmp_path: Path) -> None:
    ds = written(tmp_path, encode(".png", np.zeros((3, 3), dtype=np.uint8)))
    clock = ("InstanceCreationDate", "ContentDate", "ContentTime", "DateOfSecondaryCapture")
    assert [keyword for keyword in clock if keyword in ds] == []
    assert all("ContributionDateTime" not in item for item in ds.ContributingEquipmentSequence)


def test_a_name_of_one_part_is_kept_as_typed(tmp_path: Path) -> None:
    data = encode(".png", np.zeros((4, 4), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # highdicom warns about one-part names
        ds = written(tmp_path, data, details(patient_name="Berg"))
    assert str(ds.PatientName) == "Berg"
