"""The heatmap overlay as a derived Secondary Capture: written, checked by dciodvfy, read back
strictly; its pixels, its reference to the source (and frame), its place in the source's study
in a series of its own, its derivation and caution, and its patient in any character set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from appliance.dicomout.heatmap import build_heatmap
from appliance.dicomout.uids import output_uids
from appliance.domain import ModelReport

from dicom_checks import dciodvfy, needs_dciodvfy, read_strict, save
from report_samples import (
    CAUTION,
    MADE_AT,
    bundled,
    chest_source,
    local_date_time,
    model,
    overlay,
    renamed,
)


def heatmap_of(
    source: Dataset,
    label: str = "pleural_effusion",
    *,
    frame: int = 0,
    reporter: ModelReport | None = None,
    made_at: str = "",
    pixels: np.ndarray | None = None,
) -> Dataset:
    uids = output_uids(
        "heatmap", source.StudyInstanceUID, source.SOPInstanceUID, "fingerprint-1", label=label
    )
    return build_heatmap(
        source,
        overlay() if pixels is None else pixels,
        label,
        "Pleural effusion",
        reporter or model(),
        uids,
        instance_number=101,
        frame=frame,
        institution="Klinik Süd",
        made_at=made_at,
    )


@needs_dciodvfy
def test_a_heatmap_passes_dciodvfy_and_keeps_its_pixels(tmp_path: Path) -> None:
    path = save(heatmap_of(chest_source()), tmp_path / "heatmap.dcm")
    errors, warnings = dciodvfy(path)
    print("dciodvfy warnings (heatmap SC):", *sorted(set(warnings)), sep="\n  ")
    assert errors == []
    back = read_strict(path)
    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert (back.PhotometricInterpretation, back.SamplesPerPixel) == ("RGB", 3)
    np.testing.assert_array_equal(back.pixel_array, overlay())
    assert list(back.ImageType) == ["DERIVED", "SECONDARY"]
    assert back.ConversionType == "WSD"
    assert "BurnedInAnnotation" not in back  # the phantom does not say: neither does its overlay
    assert "PixelSpacing" not in back  # a picture, possibly scaled: nothing to measure on
    assert back.SeriesDescription == "Heatmaps"


def test_it_references_its_source_in_the_same_study_and_a_series_of_its_own(
    tmp_path: Path,
) -> None:
    source = chest_source()
    back = read_strict(save(heatmap_of(source), tmp_path / "heatmap.dcm"))
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    (reference,) = back.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert "ReferencedFrameNumber" not in reference
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert (back.PatientName, back.PatientID) == (source.PatientName, source.PatientID)
    assert (back.AccessionNumber, back.StudyDate) == (source.AccessionNumber, source.StudyDate)
    assert list(back.PatientOrientation) == list(source.PatientOrientation)


def test_heatmaps_of_a_study_share_one_series(tmp_path: Path) -> None:
    source = chest_source()
    first, second = heatmap_of(source), heatmap_of(source, "lung_nodule")
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_a_multi_frame_source_is_referenced_with_its_frame(tmp_path: Path) -> None:
    source = bundled("examples_ybr_color.dcm")
    back = read_strict(save(heatmap_of(source, frame=11), tmp_path / "heatmap.dcm"))
    assert back.SourceImageSequence[0].ReferencedFrameNumber == 12


def test_it_says_what_made_it_and_warns_when_not_for_clinical_use(tmp_path: Path) -> None:
    back = read_strict(save(heatmap_of(chest_source()), tmp_path / "heatmap.dcm"))
    description = back.DerivationDescription
    assert "Pleural effusion" in description and "pleural_effusion" in description
    assert "chest-demo" in description and "1.4.2" in description
    assert back.ImageComments == CAUTION
    cleared = replace(model(), not_for_clinical_use=False, caution="")
    plain = read_strict(save(heatmap_of(chest_source(), reporter=cleared), tmp_path / "b.dcm"))
    assert "ImageComments" not in plain


@pytest.mark.parametrize(("said", "says"), [("YES", "YES"), ("NO", "NO"), ("", None), (None, None)])
def test_burned_in_annotation_is_what_the_source_says_or_unsaid(
    tmp_path: Path, said: str | None, says: str | None
) -> None:
    """An overlay keeps the source's pixels, text and all: a source that does not say whether
    its pixels hold a name (many an ultrasound image does) must not become a "NO"."""
    source = chest_source()
    if said is not None:
        source.BurnedInAnnotation = said
    back = read_strict(save(heatmap_of(source), tmp_path / "heatmap.dcm"))
    assert back.get("BurnedInAnnotation") == says


@pytest.mark.parametrize("name", ["chrX1.dcm", "chrGreek.dcm", "chrH31.dcm"])
def test_the_patient_is_copied_in_any_character_set(tmp_path: Path, name: str) -> None:
    source = bundled(name)
    back = read_strict(save(heatmap_of(source), tmp_path / "heatmap.dcm"))
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == str(source.PatientName)


def test_a_name_with_accents_round_trips(tmp_path: Path) -> None:
    source = renamed("CT_small.dcm", "Müller^Jürgen")
    back = read_strict(save(heatmap_of(source), tmp_path / "heatmap.dcm"))
    assert back.PatientName == "Müller^Jürgen"


def test_building_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    source = chest_source()
    first = save(heatmap_of(source), tmp_path / "a.dcm").read_bytes()
    second = save(heatmap_of(source), tmp_path / "b.dcm").read_bytes()
    assert first == second
    undated = read_strict(tmp_path / "a.dcm")
    assert "ContentDate" not in undated and "InstanceCreationDate" not in undated


def test_made_at_dates_the_picture(tmp_path: Path) -> None:
    back = read_strict(save(heatmap_of(chest_source(), made_at=MADE_AT), tmp_path / "h.dcm"))
    assert (back.ContentDate, back.ContentTime) == local_date_time(MADE_AT)
    assert back.DateOfSecondaryCapture == back.ContentDate
    assert "TimezoneOffsetFromUTC" not in back


def test_a_source_with_a_timezone_offset_sets_the_clock(tmp_path: Path) -> None:
    source = chest_source()
    source.TimezoneOffsetFromUTC = "+0530"
    back = read_strict(save(heatmap_of(source, made_at=MADE_AT), tmp_path / "h.dcm"))
    assert (back.ContentDate, back.ContentTime, back.TimezoneOffsetFromUTC) == (
        "20260304",
        "163500",
        "+0530",
    )


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.uint16)],
)
def test_pixels_that_are_not_rgb_are_refused(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="H x W x 3 uint8 RGB"):
        heatmap_of(chest_source(), pixels=pixels)
