"""What the report builders' tests build from: real source headers (pydicom's bundled files,
its character set files, the box's chest phantom) and report content with every kind of
finding (a coded positive label, an uncoded negative one, a measured mask, a mask of two
regions on an image without spacing, a negative mask), feedback and a signed impression."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import datetime
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset

from appliance.domain import (
    AnalysisState,
    CodedTerm,
    Impression,
    LabelResult,
    MaskResult,
    ModelReport,
    Remark,
    ReportContent,
    ReportHeader,
)
from appliance.phantoms.chest import chest_dataset, make_chest
from appliance.worker.report_content import report_header

MADE_AT = "2026-03-04T11:05:00.123456+00:00"
SIGNED_AT = "2026-03-04T11:00:00+00:00"
SHA = "3f5a9c0e" * 8
CAUTION = "Demo model trained on synthetic images: not for clinical use."

EFFUSION = LabelResult(
    "pleural_effusion",
    "Pleural effusion",
    CodedTerm("SCT", "60046008", "Pleural effusion"),
    0.91,
    0.5,
    True,
    "urgent",
)
NODULE = LabelResult("lung_nodule", "Lung nodule", None, 0.12, 0.45, False, "review")
PNEUMOTHORAX = MaskResult(
    "pneumothorax",
    "Pneumothorax",
    CodedTerm("SCT", "36118008", "Pneumothorax"),
    120,
    33.5,
    (((10.0, 12.0), (20.0, 12.0), (20.0, 22.0), (10.0, 22.0)),),
)
CONSOLIDATION = MaskResult(
    "consolidation",
    "Consolidation",
    None,
    60,
    None,
    (((30.0, 30.0), (36.0, 30.0), (33.0, 36.0)), ((50.0, 8.0),)),
)
FLUID = MaskResult("free_fluid", "Free fluid", None, 0, None, ())


def local_date_time(iso: str) -> tuple[str, str]:
    """(DA, TM) of an ISO time in this machine's local zone: what an object about a source
    without a Timezone Offset From UTC says, as the source's own times do."""
    when = datetime.fromisoformat(iso).astimezone()
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S")


def bundled(name: str) -> Dataset:
    """The header of one of pydicom's bundled test files or character set files."""
    found = get_testdata_file(name, download=False) or get_charset_files(name)
    path = found[0] if isinstance(found, list) and found else found
    assert isinstance(path, str), f"{name} is not bundled with the installed pydicom"
    return pydicom.dcmread(path, stop_before_pixels=True)


def renamed(name: str, patient_name: str, charset: str | None = "ISO_IR 192") -> Dataset:
    """A bundled file's header with another patient's name, written and read back as a
    modality's file would be."""
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str), f"{name} is not bundled with the installed pydicom"
    ds = pydicom.dcmread(path)
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    ds.PatientName = patient_name
    buffer = io.BytesIO()
    ds.save_as(buffer)
    buffer.seek(0)
    return pydicom.dcmread(buffer, stop_before_pixels=True)


def chest_source() -> Dataset:
    """A DX chest radiograph from the box's phantom, with pixel spacing, as a file header."""
    ds = chest_dataset(make_chest(7, rows=256, findings={"pleural_effusion": True}))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer, stop_before_pixels=True)


def model(**changes: Any) -> ModelReport:
    values: dict[str, Any] = {
        "name": "chest-demo",
        "version": "1.4.2",
        "title": "Chest X-ray demo",
        "sha256": SHA,
        "backend": "onnxruntime",
        "precision": "int8",
        "state": AnalysisState.FINDINGS,
        "reason": "",
        "summary": "Pleural effusion 0.91",
        "frame": 0,
        "not_for_clinical_use": True,
        "caution": CAUTION,
        "labels": (EFFUSION, NODULE),
        "masks": (PNEUMOTHORAX, CONSOLIDATION, FLUID),
    }
    return ModelReport(**{**values, **changes})


def content(**changes: Any) -> ReportContent:
    values: dict[str, Any] = {
        "site_name": "Klinik Süd",
        "state": AnalysisState.FINDINGS,
        "reason": "",
        "summary": "Pleural effusion 0.91",
        "priority": "urgent",
        "models": (model(),),
        "feedback": (
            Remark(
                "pleural_effusion",
                "agree",
                "Clear meniscus on the right.",
                "Dr Ana Łukasik",
                "radiologist",
                "2026-03-04T10:40:00+00:00",
            ),
        ),
        "impression": Impression(
            "Right pleural effusion; no pneumothorax on review.",
            "Łukasik, Ana",
            "radiologist",
            SIGNED_AT,
            True,
        ),
        "made_at": MADE_AT,
    }
    return ReportContent(**{**values, **changes})


def held_back() -> ReportContent:
    """An image that failed its plausibility check: no findings, a reason, no impression."""
    reason = "the image looks like a lateral view; the model reads PA chest radiographs"
    return content(
        state=AnalysisState.HELD_BACK,
        reason=reason,
        summary="",
        priority="routine",
        models=(
            model(state=AnalysisState.HELD_BACK, reason=reason, summary="", labels=(), masks=()),
        ),
        feedback=(),
        impression=None,
    )


def clinical(report: ReportContent) -> ReportContent:
    """The same content from models that are cleared for clinical use (no caution)."""
    models = tuple(replace(m, not_for_clinical_use=False, caution="") for m in report.models)
    return replace(report, models=models)


def header_of(ds: Dataset) -> ReportHeader:
    """The report's header as the worker reads it from a source."""
    return report_header(ds)


def overlay(rows: int = 48, columns: int = 64) -> npt.NDArray[np.uint8]:
    """An RGB picture: a grey ramp with a red blob, distinct values everywhere."""
    yy, xx = np.mgrid[0:rows, 0:columns]
    grey = ((xx + yy) * 255 // (rows + columns)).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    blob = (yy - rows / 2) ** 2 + (xx - columns / 3) ** 2 < (rows / 5) ** 2
    rgb[blob] = (230, 40, 30)
    return rgb


def png(rgb: npt.NDArray[np.uint8]) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(data.tobytes())
