"""Every kind of DICOM object the box writes passes dicom3tools' dciodvfy without errors: the
structured report, the heatmap image and the encapsulated PDF report it sends to the clinic's
record, and the Secondary Capture and ultrasound images it makes of imported pictures and
captured frames. Each is written as a Part 10 file and read back strictly; the warnings
dciodvfy gives are printed per kind (run with -s to see them)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from appliance.dicomout.heatmap import build_heatmap
from appliance.dicomout.pdf import encapsulate_pdf
from appliance.dicomout.secondary import PictureDetails, build_secondary_capture, decode_picture
from appliance.dicomout.sr import build_sr
from appliance.dicomout.uids import output_uids
from appliance.dicomout.ultrasound import build_ultrasound
from appliance.domain import ReportPictures
from appliance.report.pdf import render_report

from dicom_checks import dciodvfy, needs_dciodvfy, read_strict, save
from report_samples import MADE_AT, chest_source, content, header_of, held_back, overlay, png

pytestmark = needs_dciodvfy


def _uids(kind: str, source: Dataset, label: str = "") -> object:
    return output_uids(kind, source.StudyInstanceUID, source.SOPInstanceUID, "validity", label)


def structured_report() -> Dataset:
    source = chest_source()
    return build_sr(content(), source, _uids("sr", source), instance_number=1)  # type: ignore[arg-type]


def structured_report_held_back() -> Dataset:
    source = chest_source()
    return build_sr(held_back(), source, _uids("sr", source), instance_number=1)  # type: ignore[arg-type]


def heatmap() -> Dataset:
    source = chest_source()
    model = content().models[0]
    uids = _uids("heatmap", source, "pleural_effusion")
    return build_heatmap(
        source,
        overlay(),
        "pleural_effusion",
        "Pleural effusion",
        model,
        uids,  # type: ignore[arg-type]
        instance_number=2,
        frame=0,
        made_at=MADE_AT,
    )


def encapsulated_report() -> Dataset:
    source = chest_source()
    pdf = render_report(content(), header_of(source), ReportPictures(png(overlay())))
    uids = _uids("report", source)
    return encapsulate_pdf(source, pdf, "Findings report", uids, instance_number=3)  # type: ignore[arg-type]


def imported_picture() -> Dataset:
    details = PictureDetails("Müller^Jürgen", "P-1", "DX", date(2026, 3, 4), "CHEST", "PA", "Chest")
    return build_secondary_capture(decode_picture(png(overlay())), details)


def captured_frame(count: int) -> Dataset:
    rng = np.random.default_rng(count)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(count)]
    return build_ultrasound(
        frames,
        patient_id="P-2",
        patient_name="Doe, Jane",
        study_uid=None,
        device_name="Room 2 grabber",
        mm_per_pixel=0.2,
        frame_time_ms=40.0,
        captured_wall=1_790_000_000.5,
    )


KINDS: dict[str, Callable[[], Dataset]] = {
    "structured report (Comprehensive 3D SR)": structured_report,
    "structured report, held back": structured_report_held_back,
    "heatmap (Secondary Capture)": heatmap,
    "report (Encapsulated PDF)": encapsulated_report,
    "imported picture (Secondary Capture)": imported_picture,
    "captured frame (Ultrasound Image)": lambda: captured_frame(1),
    "captured clip (Ultrasound Multi-frame Image)": lambda: captured_frame(3),
}


# Builders that fail dciodvfy today, with the change that fixes each (their owners' files).
KNOWN_ERRORS: dict[str, str] = {}  # kind -> why it fails dciodvfy today (xfail, strict)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(kind, marks=pytest.mark.xfail(reason=KNOWN_ERRORS[kind], strict=True))
        if kind in KNOWN_ERRORS
        else kind
        for kind in KINDS
    ],
)
def test_every_kind_of_object_passes_dciodvfy(tmp_path: Path, kind: str) -> None:
    path = save(KINDS[kind](), tmp_path / "object.dcm")
    errors, warnings = dciodvfy(path)
    print(f"\ndciodvfy warnings, {kind}:", *sorted(set(warnings)) or ["(none)"], sep="\n  ")
    assert errors == [], f"{kind}: {errors}"
    back = read_strict(path)
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
