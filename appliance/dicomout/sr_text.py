"""The words of a structured report's Qualitative Evaluations container: what a reader must know
beside the measurements, as TEXT items (concept, text), the caution first.

Kept apart from the tree building in `sr` so that the wording can be read and changed in one
place; the concepts are in `codes`.
"""

from __future__ import annotations

from collections.abc import Iterator

import highdicom as hd

from appliance.dicomout.codes import (
    AREA_NOTE,
    CAUTION,
    FEEDBACK,
    IMPRESSION,
    IMPRESSION_BY,
    MEASURE_NOTE,
    MODEL_OUTCOME,
    OUTCOME,
)
from appliance.domain import AnalysisState, LabelResult, MaskResult, ModelReport, ReportContent

TextItem = tuple[hd.sr.CodedConcept, str]


def text_items(content: ReportContent) -> list[TextItem]:
    """Caution, outcome, each model's outcome, area notes, feedback, impression, in that order."""
    items: list[TextItem] = []
    if content.caution:
        items.append((CAUTION, content.caution))
    items.append((OUTCOME, outcome_words(content)))
    items.extend((MODEL_OUTCOME, model_words(model)) for model in content.models)
    items.extend(_area_notes(content))
    items.extend((FEEDBACK, text) for text in _feedback(content))
    items.extend(_impression(content))
    return items


def outcome_words(content: ReportContent) -> str:
    """The outcome of the analysis in one sentence."""
    state, reason = content.state, content.reason.strip()
    if state is AnalysisState.NO_MODEL:
        return _with_reason("No installed model applies to this image", reason)
    if state is AnalysisState.HELD_BACK:
        return _with_reason("Held back: the image failed the plausibility check", reason)
    if state is AnalysisState.FAILED:
        return _with_reason("The analysis failed", reason)
    if any_positive(content):
        return f"Findings: {content.summary.strip() or 'see the measurements'}."
    return "No findings above the operating thresholds."


def any_positive(content: ReportContent) -> bool:
    return any(item.positive for model in content.models for item in _results(model))


def model_words(model: ModelReport) -> str:
    """One model's identity and outcome."""
    who = f"{model.title} ({model.name} {model.version}, SHA-256 {model.sha256})"
    reason = model.reason.strip()
    if model.state is AnalysisState.FINDINGS:
        return f"{who}: {model.summary.strip() or 'no findings above the thresholds'}"
    if model.state is AnalysisState.HELD_BACK:
        return _with_reason(f"{who}: held back", reason)
    if model.state is AnalysisState.NO_MODEL:
        return _with_reason(f"{who}: did not apply", reason)
    return _with_reason(f"{who}: failed", reason)


def _with_reason(text: str, reason: str) -> str:
    return f"{text}: {reason.rstrip('.')}." if reason else f"{text}."


def _area_notes(content: ReportContent) -> Iterator[TextItem]:
    for model in content.models:
        for mask in model.masks:
            if mask.positive and mask.area_mm2 is None:
                yield (
                    AREA_NOTE,
                    f"{mask.display}: area not measured in mm², the image has no calibrated "
                    f"pixel spacing ({mask.area_px} pixels).",
                )
            yield from ((MEASURE_NOTE, f"{mask.display}: {note}") for note in mask.notes)


def displays(content: ReportContent) -> dict[str, str]:
    """Label name -> display name, over all models."""
    return {item.label: item.display for model in content.models for item in _results(model)}


def _feedback(content: ReportContent) -> Iterator[str]:
    names = displays(content)
    for remark in content.feedback:
        comment = f": {remark.comment.strip()}" if remark.comment.strip() else ""
        yield (
            f"{names.get(remark.label, remark.label)}: {remark.verdict}{comment} "
            f"({remark.author}, {remark.role}, {remark.at})"
        )


def _impression(content: ReportContent) -> list[TextItem]:
    impression = content.impression
    if impression is None:
        return []
    status = "final" if impression.final else "draft, not signed"
    return [
        (IMPRESSION, impression.text.strip() or "(empty)"),
        (IMPRESSION_BY, f"{impression.author} ({impression.role}), {impression.at}, {status}"),
    ]


def _results(model: ModelReport) -> tuple[LabelResult | MaskResult, ...]:
    """A model's labels and masks, in that order."""
    return (*model.labels, *model.masks)
