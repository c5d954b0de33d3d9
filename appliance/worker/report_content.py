"""The store's rows of an analysed image -> the plain report content the builders take.

Findings are kept in the store as the JSON the runtime wrote (`ModelResult.to_dict`, or the
model's provenance alone when it was held back or failed); this reads that form back into
`ModelReport`s, tolerating the older or shorter forms a held-back outcome has.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue

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
from appliance.store.report_data import ReportRows


def report_content(
    rows: ReportRows,
    site_name: str,
    made_at: str,
    revision: int,
    replaces: Mapping[str, str],
) -> ReportContent:
    """Everything reported of one image at one revision."""
    analysis = rows.analysis
    return ReportContent(
        site_name=site_name,
        state=AnalysisState(analysis["state"]),
        reason=analysis["reason"],
        summary=analysis["summary"],
        priority=analysis["priority"],
        models=tuple(model_report(row) for row in rows.findings),
        feedback=tuple(_remark(row) for row in rows.feedback),
        impression=None if rows.impression is None else _impression(rows.impression),
        made_at=made_at,
        revision=revision,
        replaces=dict(replaces),
    )


def model_report(row: sqlite3.Row) -> ModelReport:
    """One findings row (with its result JSON) as the report shows it."""
    result = json.loads(row["result"]) if isinstance(row["result"], str) else row["result"]
    return ModelReport(
        name=row["model"],
        version=row["version"],
        title=str(result.get("title") or row["model"]),
        sha256=row["model_sha256"],
        backend=row["backend"],
        precision=row["precision"],
        state=AnalysisState(row["state"]),
        reason=row["reason"],
        summary=row["summary"],
        frame=int(result.get("frame", row["key_frame"])),
        not_for_clinical_use=bool(result.get("not_for_clinical_use", False)),
        caution=str(result.get("caution", "")),
        labels=tuple(_label(item) for item in result.get("labels", ())),
        masks=tuple(_mask(item) for item in result.get("masks", ())),
    )


def _code(value: Mapping[str, Any] | None) -> CodedTerm | None:
    if not value:
        return None
    return CodedTerm(str(value["scheme"]), str(value["value"]), str(value["meaning"]))


def _label(item: Mapping[str, Any]) -> LabelResult:
    return LabelResult(
        label=item["label"],
        display=item.get("display") or item["label"],
        code=_code(item.get("code")),
        score=float(item["score"]),
        threshold=float(item["threshold"]),
        positive=bool(item["positive"]),
        priority=str(item.get("priority", "routine")),
    )


def _mask(item: Mapping[str, Any]) -> MaskResult:
    area = item.get("area_mm2")
    return MaskResult(
        label=item["label"],
        display=item.get("display") or item["label"],
        code=_code(item.get("code")),
        area_px=int(item.get("area_px", 0)),
        area_mm2=None if area is None else float(area),
        outlines=tuple(_outline(points) for points in item.get("outlines", ())),
        notes=tuple(str(note) for note in item.get("notes", ())),
    )


def _outline(points: Sequence[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in points)


def _remark(row: sqlite3.Row) -> Remark:
    return Remark(
        label=row["label"],
        verdict=row["verdict"],
        comment=row["comment"],
        author=row["display_name"],
        role=row["role"],
        at=row["at"],
    )


def _impression(row: sqlite3.Row) -> Impression:
    return Impression(
        text=row["text"],
        author=row["display_name"],
        role=row["role"],
        at=row["at"],
        final=bool(row["final"]),
    )


def report_header(ds: Dataset, body_part: str = "") -> ReportHeader:
    """The printed report's header from the source image's header."""

    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        if value is None:
            return ""
        if isinstance(value, MultiValue):  # CHEST\PA: shown as "CHEST, PA"
            return ", ".join(str(item).strip() for item in value)
        return str(value).strip()

    return ReportHeader(
        patient_name=text("PatientName"),
        patient_id=text("PatientID"),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        accession_number=text("AccessionNumber"),
        study_description=text("StudyDescription"),
        modality=text("Modality"),
        body_part=body_part or text("BodyPartExamined"),
        sop_instance_uid=text("SOPInstanceUID"),
    )
