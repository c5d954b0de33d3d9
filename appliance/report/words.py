"""The printed report's words: DICOM values and findings said the way a clinician reads them
(names with commas, dates with dashes, a score above or below its threshold but never "found",
since a model's output is not a diagnosis, why an image was held back). Plain functions of the
content, kept apart from the layout so that each can be read alone.
"""

from __future__ import annotations

from datetime import datetime, timezone

from appliance.domain import AnalysisState, LabelResult, MaskResult, ModelReport, ReportContent

_SEX = {"M": "male", "F": "female", "O": "other"}
NOT_RECORDED = "not recorded"
NO_SPACING = "not measurable: no calibrated pixel spacing"


def person(name: str) -> str:
    """A DICOM person name made readable: 'Müller^Jürgen' -> 'Müller, Jürgen'; empty parts
    are left out; ideographic and phonetic forms follow after ' = '."""
    groups = []
    for group in name.split("="):
        parts = [part.strip() for part in group.split("^") if part.strip()]
        if parts:
            groups.append(", ".join(parts))
    return " = ".join(groups)


def date(value: str) -> str:
    """DICOM DA 'YYYYMMDD' as 'YYYY-MM-DD'; anything else as written."""
    text = value.strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def time(value: str) -> str:
    """DICOM TM 'HHMMSS.ffffff' as 'HH:MM'; anything else as written."""
    text = value.strip()
    if len(text) >= 4 and text[:4].isdigit():
        return f"{text[:2]}:{text[2:4]}"
    return text


def study_time(value: str) -> str:
    """The study's time as the modality wrote it, said to be in its clock: every other time on
    the report is UTC, and a study time in the clinic's local time must not pass for one."""
    shown = time(value)
    return f"{shown} (modality's clock)" if shown else ""


def sex(value: str) -> str:
    return _SEX.get(value.strip().upper(), value.strip() or NOT_RECORDED)


def or_not_recorded(value: str) -> str:
    return value.strip() or NOT_RECORDED


def moment(iso: str) -> str:
    """An ISO 8601 time from the store as 'YYYY-MM-DD HH:MM UTC'; unparsable text as is."""
    try:
        when = datetime.fromisoformat(iso.strip().replace("Z", "+00:00"))
    except ValueError:
        return iso.strip()
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def outcome(content: ReportContent) -> str:
    """What came of the analysis, in one or two sentences."""
    reason = content.reason.strip()
    if content.state is AnalysisState.NO_MODEL:
        return _because("No installed model applies to this image", reason)
    if content.state is AnalysisState.HELD_BACK:
        return _because(
            "The image was held back: it did not pass the plausibility check, so no model "
            "result is reported",
            reason,
        )
    if content.state is AnalysisState.FAILED:
        return _because("The analysis failed", reason)
    found = [item.display for item in positives(content)]
    if found:
        return "Findings above the operating thresholds: " + ", ".join(found) + "."
    return "No findings above the operating thresholds."


def positives(content: ReportContent) -> list[LabelResult | MaskResult]:
    return [
        item
        for model in content.models
        if model.state is AnalysisState.FINDINGS
        for item in _results(model)
        if item.positive
    ]


def model_state(model: ModelReport) -> str:
    """One model's outcome: its findings, or why it gave none."""
    reason = model.reason.strip()
    if model.state is AnalysisState.FINDINGS:
        return model.summary.strip() or "no findings above the thresholds"
    if model.state is AnalysisState.HELD_BACK:
        return _because("held back", reason)
    if model.state is AnalysisState.NO_MODEL:
        return _because("did not apply", reason)
    return _because("failed", reason)


def _because(text: str, reason: str) -> str:
    return f"{text}: {reason.rstrip('.')}." if reason else f"{text}."


def label_row(label: LabelResult) -> tuple[str, str, str, str]:
    """(finding, score, threshold, result) of a label, for the findings table. The result
    says what the model's score did, never "found": a model's output is not a diagnosis."""
    result = "above threshold" if label.positive else "below threshold"
    return (label.display, f"{label.score:.2f}", f"{label.threshold:.2f}", result)


def mask_row(mask: MaskResult) -> tuple[str, str, str, str]:
    """(finding, score, threshold, result) of a mask: what the model marked, with its area,
    or that it marked nothing."""
    if not mask.positive:
        return (mask.display, "", "", "nothing marked")
    regions = len(mask.outlines)
    where = f" in {regions} regions" if regions > 1 else ""
    if mask.area_mm2 is None:
        return (mask.display, "", "", f"marked{where}; area {NO_SPACING}")
    return (mask.display, "", "", f"marked{where}; area {mask.area_mm2:.1f} mm²")


def short_hash(sha256: str) -> str:
    return sha256[:12] if len(sha256) > 12 else sha256


def displays(content: ReportContent) -> dict[str, str]:
    """Label name -> display name, over all models."""
    return {item.label: item.display for model in content.models for item in _results(model)}


def _results(model: ModelReport) -> tuple[LabelResult | MaskResult, ...]:
    """A model's labels and masks, in that order."""
    return (*model.labels, *model.masks)
