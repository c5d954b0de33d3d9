"""The ultrasound builder for captured frames: every object written and read back with pydicom
validating strictly, read by our header reader and region geometry, and parsed by DCMTK's
dcmdump where it is installed; UIDs deterministic from the inputs; patient values checked."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.uid import UltrasoundImageStorage as US
from pydicom.uid import UltrasoundMultiFrameImageStorage as US_MULTIFRAME

from appliance.dicomout.common import DetailsError
from appliance.dicomout.ultrasound import build_ultrasound
from appliance.imaging.geometry import describe_geometry
from appliance.imaging.header import read_header
from appliance.imaging.image import SpacingSource

from conftest import dcmtk, has_dcmtk

WALL = 1_790_000_000.25  # a capture time


@pytest.fixture(autouse=True)
def strict() -> Iterator[None]:
    """pydicom raises on any value that breaks its VR, both ways."""
    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.RAISE
    config.settings.writing_validation_mode = config.RAISE
    yield
    config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved


def crops(count: int, rows: int = 61, columns: int = 83) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [rng.integers(0, 256, (rows, columns, 3), dtype=np.uint8) for _ in range(count)]


def build(frames: list[np.ndarray], **changes: Any) -> pydicom.Dataset:
    values: dict[str, Any] = {
        "patient_id": "P-17",
        "patient_name": "Doe, Jane",
        "study_uid": None,
        "accession": "A123",
        "device_name": "Room 2 grabber",
        "mm_per_pixel": 0.25,
        "frame_time_ms": 33.3333,
        "captured_wall": WALL,
    }
    return build_ultrasound(frames, **{**values, **changes})


def written(tmp_path: Path, ds: pydicom.Dataset) -> tuple[Path, pydicom.Dataset]:
    path = tmp_path / "us.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert read_header(path).sop_instance_uid == ds.SOPInstanceUID
    return path, pydicom.dcmread(path)


def test_one_frame_is_an_ultrasound_image_with_its_region(tmp_path: Path) -> None:
    frames = crops(1)
    _, ds = written(tmp_path, build(frames))
    assert ds.SOPClassUID == US and ds.file_meta.MediaStorageSOPClassUID == US
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "NumberOfFrames" not in ds and "FrameTime" not in ds
    assert ds.Modality == "US" and ds.PhotometricInterpretation == "RGB"
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (61, 83, 3)
    assert np.array_equal(ds.pixel_array, frames[0][:, :, ::-1])  # BGR in, RGB in the file
    (region,) = ds.SequenceOfUltrasoundRegions
    corners = (region.RegionLocationMinX0, region.RegionLocationMinY0)
    assert (*corners, region.RegionLocationMaxX1, region.RegionLocationMaxY1) == (0, 0, 82, 60)
    assert (region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection) == (3, 3)
    assert region.PhysicalDeltaX == region.PhysicalDeltaY == pytest.approx(0.025)  # cm
    assert ds.BurnedInAnnotation == "YES"
    assert ds.ManufacturerModelName == "Room 2 grabber" and ds.StationName == "Room 2 grabber"
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "P-17"
    assert ds.AccessionNumber == "A123" and ds.StudyDate == ds.ContentDate != ""


def test_several_frames_are_a_multiframe_clip_with_its_frame_time(tmp_path: Path) -> None:
    frames = crops(5)
    _, ds = written(tmp_path, build(frames, mm_per_pixel=None, burned_in=False))
    assert ds.SOPClassUID == US_MULTIFRAME
    assert ds.NumberOfFrames == 5 and float(ds.FrameTime) == pytest.approx(33.333)
    assert ds.FrameIncrementPointer == 0x00181063 and ds.CineRate == 30
    assert np.array_equal(ds.pixel_array, np.stack(frames)[..., ::-1])
    assert ds.SequenceOfUltrasoundRegions[0].PhysicalUnitsXDirection == 0  # not calibrated
    assert ds.BurnedInAnnotation == "NO"


@pytest.mark.parametrize(
    ("method", "flag", "named"),
    [(None, "00", None), ("ISO_10918_1", "01", "ISO_10918_1"), ("", "01", None)],
)
def test_lossy_compression_before_capture_is_recorded(
    tmp_path: Path, method: str | None, flag: str, named: str | None
) -> None:
    _, ds = written(tmp_path, build(crops(1), lossy_method=method))
    assert ds.LossyImageCompression == flag
    assert ds.get("LossyImageCompressionMethod") == named


def test_the_worker_measures_with_the_regions_spacing(tmp_path: Path) -> None:
    calibrated = build(crops(1), mm_per_pixel=0.4)
    geometry = describe_geometry(calibrated, 61, 83)
    assert geometry.spacing_source is SpacingSource.ULTRASOUND_REGION
    assert geometry.spacing_mm == pytest.approx((0.4, 0.4))
    unknown = describe_geometry(build(crops(1), mm_per_pixel=None), 61, 83)
    assert unknown.spacing_mm is None and unknown.region is not None


def test_uids_are_deterministic_from_the_inputs() -> None:
    first, again = build(crops(3)), build(crops(3))
    uids = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    assert [first[k].value for k in uids] == [again[k].value for k in uids]
    later = build(crops(3), captured_wall=WALL + 1)
    assert later.SOPInstanceUID != first.SOPInstanceUID
    assert later.StudyInstanceUID != first.StudyInstanceUID  # a new study each time
    one = build(crops(1))
    assert one.SOPInstanceUID != first.SOPInstanceUID  # a frame and a clip of the same moment
    for ds in (first, later, one):
        assert pydicom.uid.UID(ds.SOPInstanceUID).is_valid


def test_an_existing_study_is_joined_without_inventing_its_date() -> None:
    study = "1.2.826.0.1.3680043.8.498.77"
    ds = build(crops(1), study_uid=study)
    assert ds.StudyInstanceUID == study and ds.StudyDate == "" and ds.StudyTime == ""
    other = build(crops(2), study_uid=study, captured_wall=WALL + 60)
    assert other.SeriesInstanceUID == ds.SeriesInstanceUID  # one series per study and device
    assert other.SOPInstanceUID != ds.SOPInstanceUID


def test_a_device_name_with_dicom_separators_is_made_fit() -> None:
    ds = build(crops(1), device_name="Sono\\site\tM-Turbo " + "x" * 80)
    assert ds.ManufacturerModelName == ("Sono site M-Turbo " + "x" * 80)[:64]
    assert ds.StationName == "Sono site M-Turb"  # SH: 16 characters


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"patient_name": "Doe\\Jane"}, "patient_name"),
        ({"patient_id": "x" * 65}, "patient_id"),
        ({"accession": "A" * 17}, "accession"),
    ],
)
def test_patient_values_dicom_cannot_hold_name_the_field(
    changes: dict[str, str], field: str
) -> None:
    with pytest.raises(DetailsError) as caught:
        build(crops(1), **changes)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "no frames"),
        ([np.zeros((4, 4), np.uint8)], "H x W x 3 uint8"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], "frame 1 is"),
    ],
)
def test_frames_must_be_equal_sized_bgr(frames: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(frames)


def test_an_odd_number_of_pixel_bytes_is_padded(tmp_path: Path) -> None:
    frames = crops(1, rows=3, columns=5)
    _, ds = written(tmp_path, build(frames))
    assert len(ds.PixelData) == 3 * 5 * 3 + 1
    assert np.array_equal(ds.pixel_array, frames[0][:, :, ::-1])


@pytest.mark.skipif(not has_dcmtk(), reason="DCMTK is not installed (.ci/run does)")
@pytest.mark.parametrize("count", [1, 4])
def test_dcmdump_parses_it_without_a_warning(tmp_path: Path, count: int) -> None:
    path, _ = written(tmp_path, build(crops(count)))
    done = subprocess.run(
        [dcmtk("dcmdump"), "--log-level", "warn", "-E", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    expected = "=UltrasoundMultiframeImageStorage" if count > 1 else "=UltrasoundImageStorage"
    assert expected in done.stdout
    assert "(0018,6011) SQ" in done.stdout
